"""``avatar-engine render``: animate a photo with a driving video into an mp4 (with its audio)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avatar_engine.cli.args import (add_avatar, add_expression, add_profile, add_source, reenact_from_args,
                                    renderer_options, set_threads)

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="animate a photo with a driving video, write an mp4",
                       description="Animate the face in --source with the head, mouth, eye and brow motion of "
                                   "--driving; the driving clip's audio is muxed into --output.")
    add_source(p)
    p.add_argument("--driving", required=True, type=Path, help="driving video (mp4/mov/...)")
    p.add_argument("--output", required=True, type=Path, help="output mp4")
    add_avatar(p, what="write")
    add_expression(p)
    add_profile(p)
    p.add_argument("--no-audio", dest="audio", action="store_false", help="do not copy the driving clip's audio")
    p.add_argument("--max-frames", type=int, default=None, help="render at most N frames")
    p.add_argument("--neutral-frame", type=int, default=None, metavar="N",
                   help="driving frame (0-based) whose face is the neutral pose (default: the most frontal, "
                        "still frame of the first 3 s; the choice is logged)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avatar_engine.errors import AvatarError
    from avatar_engine.pipeline.render_job import RenderJobConfig, render_video

    if args.neutral_frame is not None and args.neutral_frame < 0:
        raise AvatarError(f"--neutral-frame must be >= 0, got {args.neutral_frame}")
    set_threads(args.threads)
    report = render_video(RenderJobConfig(
        source=args.source, driving=args.driving, output=args.output, renderer=args.renderer, size=args.size,
        device=args.device, backend=args.backend, audio=args.audio, max_frames=args.max_frames,
        progress=sys.stderr.isatty(), neutral_frame=args.neutral_frame, reenact=reenact_from_args(args),
        renderer_options=renderer_options(args)))
    audio = "with audio" if report.has_audio else "no audio"
    print(f"wrote {report.output}: {report.frames} frames, {report.width}x{report.height} @ {report.fps:.2f} fps, "
          f"{audio}, {report.frames / max(report.seconds, 1e-9):.1f} frames/s; neutral pose: driving frame {report.neutral.index}")
    return 0
