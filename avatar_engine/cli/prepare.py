"""``avatar-engine prepare``: cache aligned face crops, landmarks and identity codes of a corpus."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="cache aligned face crops, landmarks and identity codes of a corpus (training)",
                       description="Decode every clip of --data/clips.csv, detect the face in every frame, cut fixed "
                                   "per-segment face crops (the evaluation's framing) and store crops, landmarks and "
                                   "dlib identity codes under --cache. Incremental: cached clips are skipped. "
                                   "Reports the skipped frames and why.")
    p.add_argument("--data", required=True, type=Path, help="folder with clips.csv (as ../shared/data)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default: $AVATAR_CACHE/prepared or ~/.cache/avatar-engine/prepared)")
    p.add_argument("--split", nargs="+", default=["train", "val"], help="splits (default: train val)")
    p.add_argument("--size", nargs="+", type=int, default=[256], choices=(256, 512),
                   help="crop sides to store (default: 256)")
    p.add_argument("--segment-frames", type=int, default=50, help="frames per fixed-crop segment (default: %(default)s)")
    p.add_argument("--identity-every", type=int, default=10,
                   help="identity code on every N-th frame of a segment (default: %(default)s)")
    p.add_argument("--max-frames-per-clip", type=int, default=None, help="decode at most N frames per clip")
    p.add_argument("--clips", nargs="+", default=None, metavar="ID", help="only these clip ids")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avatar_engine.data.prepare import PrepareConfig, default_cache_dir, prepare_dataset

    report = prepare_dataset(PrepareConfig(
        data=args.data, cache=args.cache or default_cache_dir(), splits=tuple(args.split), sizes=tuple(args.size),
        segment_frames=args.segment_frames, identity_every=args.identity_every,
        max_frames_per_clip=args.max_frames_per_clip, clip_ids=None if args.clips is None else tuple(args.clips),
        progress=sys.stderr.isatty()))
    print("\n".join(report.lines()))
    return 0 if any(c.frames_kept for c in report.clips) else 1
