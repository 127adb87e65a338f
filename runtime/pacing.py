"""When the live engine's output goes out: the output pacer and the recording's cadence.

With a real-time camera the output loop sends each new avatar frame as soon as it is ready (never
faster than the output rate on average, :class:`Pacer`), and repeats the last one when no new frame
came for 1.5 periods, then once per period while the stall lasts (camera reconnecting, paused, a
slow frame), so the virtual camera never stalls. A recording follows the wall clock at its frame
rate (:func:`frames_due`): it repeats or skips frames to keep up. With a file camera played as fast
as it is processed (tests, benchmarks) there is no pacing: every processed frame goes out once.
"""
from __future__ import annotations

import math

__all__ = ["Pacer", "frames_due"]


class Pacer:
    """When the output loop sends, with a real-time camera.

    New frames go out as soon as they are ready, within a token bucket of ``fps`` tokens per second
    (at most 2 saved up), so the output never runs faster than ``fps`` on average. When no new frame
    came for 1.5 periods, the last frame is repeated, and then once per period while the stall lasts.

    Args:
        fps: the output rate. now: ``time.monotonic()`` at start.
    """

    def __init__(self, fps: float, now: float):
        self.period = 1.0 / fps
        self.tokens = 1.0
        self._t = now
        self.last_send = -math.inf
        self._repeating = True

    def _refill(self, now: float) -> None:
        self.tokens = min(2.0, self.tokens + (now - self._t) / self.period)
        self._t = now

    @property
    def repeat_due(self) -> float:
        """When the last frame is to be sent again if nothing new comes (``time.monotonic()``)."""
        return self.last_send + (1.0 if self._repeating else 1.5) * self.period

    def wait_for_new(self, now: float) -> float:
        """Seconds a new frame must wait before it may go out (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) * self.period

    def sent(self, now: float, new: bool) -> None:
        """A frame went out at ``now`` (``new``: made from a new camera frame, else a repeat)."""
        self._refill(now)
        self.tokens -= 1.0
        self.last_send = now
        self._repeating = not new


def frames_due(t_output: float, t_start: float, fps: float, written: int) -> int:
    """How many copies of the frame sent at ``t_output`` a constant-rate recording appends.

    Args:
        t_output, t_start: ``time.monotonic()`` of this output and of the session's start.
        fps: the recording's frame rate. written: frames already in the recording.
    Returns:
        ``>= 0``: the count that brings the recording to the wall clock (0 when it is ahead).
    """
    return max(0, int((t_output - t_start) * fps) + 1 - written)
