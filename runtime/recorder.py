"""The recording output: an mp4 of the session at a constant frame rate.

H.264 through :class:`avatar_engine.io.video.VideoWriter`. With paced (real-time) output the file
follows the wall clock (:func:`runtime.pacing.frames_due`: frames repeated or skipped to keep up),
so it plays back at the speed the session ran; unpaced, every new frame is written once.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from avatar_engine.io.video import VideoWriter

from runtime.pacing import frames_due
from runtime.sinks import FrameSink, OutputInfo, fit_frame

__all__ = ["RecorderSink"]


class RecorderSink(FrameSink):
    """Records the output to a video file at a constant frame rate.

    Args:
        path: the mp4 (or .mov/.mkv) to write.
        fps: frame rate of the file.
        size: ``(W, H)`` of the file; frames of other sizes are fitted in.

    Attributes:
        frames_written: frames in the file so far.
    """

    label = "recording"

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self._writer: VideoWriter | None = None
        self.frames_written = 0

    def open(self) -> None:
        self._writer = VideoWriter(self.path, self.fps, self.size)

    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        """Append ``frame``: as often as the wall clock asks (paced output), or once if it is new."""
        if info.paced and math.isfinite(info.t_start):
            self.write(frame, frames_due(info.t_output, info.t_start, self.fps, self.frames_written))
        elif info.new:
            self.write(frame)

    def write(self, rgb: np.ndarray, repeat: int = 1) -> None:
        """Append ``rgb`` ``(H, W, 3) uint8`` ``repeat`` times."""
        if self._writer is None or repeat <= 0:
            return
        frame = fit_frame(rgb, self.size)
        for _ in range(repeat):
            self._writer.write(frame)
            self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def describe(self) -> str:
        return f"recording {self.path}"
