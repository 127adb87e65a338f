"""``avatar-engine eval``: the quality report of renderers on a data split (json + md + png)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avatar_engine.cli.args import add_backend

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="quality report of renderers on a data split (json + md + png)",
                       description="Self-reenactment (each clip re-animates its first face frame, scored against "
                                   "the real frames) and cross-reenactment (photos of identities without clips, "
                                   "driven by other identities' clips), renderers side by side. Writes --output "
                                   "(.json) and, next to it, a .md table and a .png contact sheet; the .json "
                                   "is rewritten after every clip / pair (\"complete\": false) until the run ends.")
    p.add_argument("--data", required=True, type=Path, help="folder with clips.csv / images.csv (as ../shared/data)")
    p.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    p.add_argument("--renderer", nargs="+", default=["source", "mesh"], metavar="NAME",
                   help="renderer(s) to compare (default: source mesh)")
    p.add_argument("--output", required=True, type=Path, help="report .json (the .md and .png go next to it)")
    p.add_argument("--size", type=int, default=256, choices=(256, 512), help="face-crop resolution (default: %(default)s)")
    p.add_argument("--max-frames-per-clip", type=int, default=None, help="scored frames per clip (default: all)")
    p.add_argument("--identity-every", type=int, default=5, help="identity on every N-th frame (default: %(default)s)")
    p.add_argument("--cross-drivers", type=int, default=2, help="driving clips per photo (default: %(default)s)")
    p.add_argument("--cross-neutral", choices=("chosen", "first"), default="chosen",
                   help="the driver's neutral in cross-reenactment: chosen as render chooses it (default), or "
                        "its first face frame (the protocol before session 13)")
    p.add_argument("--no-cross", dest="cross", action="store_false", help="skip cross-reenactment")
    p.add_argument("--no-self", dest="self_reenactment", action="store_false", help="skip self-reenactment")
    p.add_argument("--no-face-layers", dest="face_layers", action="store_false",
                   help="plain renderers: no eye / mouth layers, additive lid retargeting (before / after comparisons)")
    p.add_argument("--keep-photo-mouth", dest="lip_zero", action="store_false",
                   help="retarget the mouth from the photo's opening, not from closed (before / after comparisons)")
    p.add_argument("--mouth-net", action="store_true",
                   help="with the shipped learned mouth stage (off by default, as in start / render)")
    p.add_argument("--clips", nargs="+", default=None, metavar="ID", help="only these clip ids")
    p.add_argument("--images", nargs="+", default=None, metavar="ID", help="only these cross-reenactment photo ids")
    p.add_argument("--device", default="cpu", help="torch device of the renderers")
    add_backend(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avatar_engine.eval import EvalConfig, run_evaluation, write_report
    from avatar_engine.eval.report import summary_lines

    result = run_evaluation(EvalConfig(
        data=args.data, split=args.split, renderers=tuple(args.renderer), size=args.size,
        max_frames_per_clip=args.max_frames_per_clip, identity_every=args.identity_every, cross=args.cross,
        self_reenactment=args.self_reenactment, face_layers=args.face_layers, mouth_net=args.mouth_net,
        cross_drivers=args.cross_drivers, clip_ids=None if args.clips is None else tuple(args.clips),
        image_ids=None if args.images is None else tuple(args.images), device=args.device, backend=args.backend,
        cross_neutral=args.cross_neutral, lip_zero=args.lip_zero,
        progress=sys.stderr.isatty()), on_item=lambda partial: write_report(partial, args.output, partial=True))
    paths = write_report(result, args.output)
    print("\n".join(summary_lines(result)))
    print(f"wrote {paths.json}, {paths.markdown}, {paths.sheet}")
    return 0 if result.self_reports or result.cross_reports else 1
