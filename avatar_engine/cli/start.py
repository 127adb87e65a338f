"""``avatar-engine start``: your webcam drives the avatar live; preview window + virtual camera."""
from __future__ import annotations

import argparse
from pathlib import Path

from avatar_engine.cli.args import (add_avatar, add_camera, add_expression, add_neutral, add_profile, add_source,
                                    reenact_from_args, renderer_options, size_arg)

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "start", help="live: your webcam drives the avatar; preview window + virtual camera",
        description="Animate --source live from a webcam (or a video played as one). The avatar goes to a virtual "
                    "camera (pick \"Avatar Cam\" / \"OBS Virtual Camera\" in Zoom, Teams or Meet), a preview "
                    "window and optionally a recording. Preview hotkeys: C take the neutral pose again, S stats, "
                    "P pause, T passthrough (your real camera), Q/Esc quit. Ctrl-C stops cleanly (exit status 0).",
        epilog="Set up the virtual camera first: avatar-engine doctor")
    add_source(p)
    add_camera(p.add_argument_group("camera"), default="0", realtime=True)
    g = p.add_argument_group("avatar")
    add_avatar(g)
    add_expression(g)
    add_neutral(g)
    add_profile(g)
    g = p.add_argument_group("outputs")
    g.add_argument("--no-preview", dest="preview", action="store_false", help="no preview window")
    g.add_argument("--virtual-camera", action=argparse.BooleanOptionalAction, default=True,
                   help="send the avatar to the virtual camera (default: on)")
    g.add_argument("--vcam-size", type=size_arg, default=(1280, 720), metavar="WxH",
                   help="virtual camera frame size (default: 1280x720)")
    g.add_argument("--vcam-device", default=None, help="virtual camera device (e.g. /dev/video10; default: any)")
    g.add_argument("--vcam-backend", default=None, help="pyvirtualcam backend (default: the first that works)")
    g.add_argument("--mirror", action="store_true", help="mirror the virtual camera image left-right")
    g.add_argument("--output-fps", type=float, default=30.0,
                   help="frame rate of the virtual camera and the recording (default: %(default)s)")
    g.add_argument("--output", type=Path, default=None, help="also record the session to this mp4")
    g.add_argument("--stats", action="store_true", help="start with the stats overlay shown (S toggles)")
    g = p.add_argument_group("run length (headless runs, tests, benchmarks)")
    g.add_argument("--max-frames", type=int, default=None, help="stop after N processed camera frames")
    g.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    g.add_argument("--no-pipelining", dest="pipelined", action="store_false",
                   help="process each frame in one thread (default: landmarks and rendering, or rendering and "
                        "super-resolution, of consecutive frames in two threads)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from runtime.capture import open_camera

    options = renderer_options(args)  # a bad profile is reported before the camera opens
    # the camera first, before the models load: a missing camera is reported at once
    camera = open_camera(args.camera, args.width, args.height, args.fps, args.loop, args.realtime)
    camera.open()

    from runtime.engine import LiveConfig, LiveEngine
    from runtime.vcam import VirtualCameraConfig

    vcam = VirtualCameraConfig(width=args.vcam_size[0], height=args.vcam_size[1], mirror=args.mirror,
                               backend=args.vcam_backend, device=args.vcam_device)
    config = LiveConfig(
        source=args.source, camera=camera, renderer=args.renderer, size=args.size,
        device=args.device, backend=args.backend, threads=args.threads, preview=args.preview,
        virtual_camera=args.virtual_camera, vcam=vcam, output=args.output, output_fps=args.output_fps,
        neutral_pose=args.neutral_pose, stats_overlay=args.stats, max_frames=args.max_frames, duration_s=args.duration,
        reenact=reenact_from_args(args), renderer_options=options, pipelined=args.pipelined)
    report = LiveEngine(config).run()
    print(report.summary())
    return 0
