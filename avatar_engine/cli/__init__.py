"""The ``avatar-engine`` command line (entry point :func:`main`)."""
from avatar_engine.cli.commands import build_parser, main

__all__ = ["main", "build_parser"]
