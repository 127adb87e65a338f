"""``avatar-engine`` console script: one module per command in this package.

Each command module has ``add(subparsers)`` (its options, from the shared groups in
:mod:`avatar_engine.cli.args`) and ``run(args) -> int``. Heavy modules are imported inside ``run`` so
``--help`` stays fast. User-caused problems (:class:`~avatar_engine.errors.AvatarError`) print one line
``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from avatar_engine.cli import doctor, enroll, evaluate, prepare, profiles, render, serve, start, train
from avatar_engine.cli.stderr_filter import filtered_stderr
from avatar_engine.errors import AvatarError

__all__ = ["main", "build_parser"]

_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    render.add, evaluate.add, start.add, doctor.add, prepare.add, train.add, train.add_sr, train.add_meta,
    train.add_mouth, serve.add, enroll.add, profiles.add)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-engine",
                                     description="Real-time avatar engine: one photo, driven by your webcam.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _join_compound(argv: list[str]) -> list[str]:
    """``train sr|meta|mouth ...`` are other spellings of ``train-sr|meta|mouth ...``."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            if word == "train" and argv[i + 1: i + 2] in (["sr"], ["meta"], ["mouth"]):
                return [*argv[:i], f"train-{argv[i + 1]}", *argv[i + 2:]]
            break
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the process exit status."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging: errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(_join_compound(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("avatar_engine").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with filtered_stderr():
            return int(args.run(args))
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

