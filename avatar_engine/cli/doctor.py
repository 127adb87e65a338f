"""``avatar-engine doctor``: check this machine for live use; virtual camera setup steps."""
from __future__ import annotations

import argparse

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine for live use; virtual camera setup steps",
                       description="Report Python/torch/mediapipe/OpenCV versions, the display, cameras, GPU and "
                                   "whether a virtual camera opens, then print the virtual-camera setup steps "
                                   "for this OS, and which inference backends load with their ms per frame. "
                                   "Exit status 1 when a live session cannot run.")
    p.add_argument("--no-backends", dest="backends", action="store_false",
                   help="skip loading and timing the inference backends")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from runtime.doctor import format_report, run_checks

    checks = run_checks(backends=args.backends)
    print(format_report(checks))
    essential = {"python", "torch", "mediapipe"}
    return 1 if any(c.status == "fail" and c.name in essential for c in checks) else 0
