"""Drop native library noise (mediapipe's start-up, OpenCV's decoders) from the process's standard error.

mediapipe (TFLite, absl) prints lines such as "INFO: Created TensorFlow Lite XNNPACK delegate for
CPU", "WARNING: All log messages before absl::InitializeLog() ..." and ``W0000 ...
inference_feedback_manager.cc ...`` straight to file descriptor 2, from its own threads, whatever
Python's logging says; OpenCV's image decoders do the same for a damaged file (``[ WARN:0@1.6]
global grfmt_png.cpp:678 read_from_io PNG input buffer is incomplete``, ``libpng error: ...``) just
before the tool's own one-line error about it. For the command-line tool, :func:`filtered_stderr`
routes fd 2 through a pipe read by a small thread that forwards every other line unchanged.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

__all__ = ["NOISE", "filtered_stderr"]

NOISE = re.compile(
    rb"^(INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\)"
    rb"|[IW]0000 [^\n]*\b(inference_feedback_manager|landmark_projection_calculator|gl_context)\.cc"
    rb"|\[ ?WARN:[0-9]+@[0-9.]+\] global grfmt_\w+\.cpp"
    rb"|libpng error: )"
)
"""Lines (bytes) that are dropped."""


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as src:
        pending = b""
        while chunk := src.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            if out:
                os.write(write_fd, out)
        if pending and not NOISE.match(pending):
            os.write(write_fd, pending)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Filter fd 2 for the duration of the block (a no-op when fd 2 cannot be duplicated)."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, real), name="stderr-filter", daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        os.dup2(real, 2)  # closes the pipe's last write end: the pump drains and stops
        pump.join(timeout=2.0)
        os.close(real)
