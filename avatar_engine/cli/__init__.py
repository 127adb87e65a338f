"""The ``avatar-engine`` command line (entry point :func:`main`; one module per command)."""
from avatar_engine.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
