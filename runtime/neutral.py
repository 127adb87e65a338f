"""Taking the driver's neutral pose: the "look at the camera" step of a live session.

The avatar moves by how the driver's face differs from their neutral, so the neutral should be a
relaxed, centred, still, front-facing face. :func:`neutral_problem` says whether one frame's face is
acceptable as a neutral (inside the guide box, of a sensible size); :class:`NeutralPoseStep` feeds it
the tracked landmarks of every frame and collects about ``duration_s`` seconds of acceptable frames
in which the face is also still; the neutral is the per-point median of the quarter of those frames
with the mouth most closed (robust to a blink; a user who talks while it is taken still gets a closed
mouth as the rest pose, else the avatar's mouth would stay shut at that opening: on the quick-start
driver the median of all frames was 0.13 inter-ocular distances open, of the closed quarter 0.05).
If that does not happen within ``timeout_s`` of seeing a face (a user who sits off-centre, a
talking clip), the median of the last ``duration_s`` of face frames is taken, with a warning.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from avatar_engine.face.landmarks import face_bbox
from avatar_engine.geometry.head_pose import neutral_pose_problem
from avatar_engine.pipeline.neutral import mouth_opening

__all__ = ["NeutralConfig", "GUIDE_CENTRE", "guide_box", "neutral_problem", "NeutralGuide", "NeutralPoseStep"]

log = logging.getLogger("avatar_engine")


@dataclass
class NeutralConfig:
    """When a frame counts as neutral-worthy.

    Attributes:
        duration_s: seconds of good frames to collect.
        max_offset_x, max_offset_y: how far the face centre may be from the guide box centre, as a
            fraction of the frame width / height.
        min_height, max_height: face height as a fraction of the frame height.
        max_speed: fastest head motion that still counts as still, in face sizes per second (median
            landmark speed; speech with a still head is ~0.1-0.2).
        max_drift: the face may move this far (face sizes) from where the window started; further
            starts a new window.
        timeout_s: after this long with a face in view, settle for the recent face frames.
    """

    duration_s: float = 1.0
    max_offset_x: float = 0.2
    max_offset_y: float = 0.25
    min_height: float = 0.15
    max_height: float = 0.95
    max_speed: float = 0.3
    max_drift: float = 0.08
    timeout_s: float = 8.0


CLOSED_SHARE = 4
"""The neutral is the median of the 1 / CLOSED_SHARE of the collected frames with the mouth most closed."""

GUIDE_CENTRE = (0.5, 0.45)
"""Centre of the guide box as fractions of the frame (faces sit a little above the middle)."""


def guide_box(frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` pixels of the box the face should fill, for a ``(W, H)`` frame."""
    w, h = frame_size
    bw, bh = 0.36 * h, 0.48 * h
    cx, cy = GUIDE_CENTRE[0] * w, GUIDE_CENTRE[1] * h
    return int(cx - bw / 2), int(cy - bh / 2), int(cx + bw / 2), int(cy + bh / 2)


def neutral_problem(points: np.ndarray, frame_size: tuple[int, int], config: NeutralConfig) -> str | None:
    """Whether one frame's face is acceptable as a neutral pose, leaving motion aside.

    Args:
        points: ``(478, 3) float32`` landmarks in frame pixels.
        frame_size: ``(W, H)`` of the driving frame.
        config: the criteria.
    Returns:
        None when the face is acceptable, else the hint shown to the user (a frame with a problem
        restarts the collection).
    """
    x0, y0, x1, y1 = face_bbox(points)
    w, h = frame_size
    off_x = (x0 + x1) / 2 / w - GUIDE_CENTRE[0]
    off_y = (y0 + y1) / 2 / h - GUIDE_CENTRE[1]
    height = (y1 - y0) / h
    if abs(off_x) > config.max_offset_x or abs(off_y) > config.max_offset_y:
        return "move your face into the box"
    if height < config.min_height:
        return "come closer"
    if height > config.max_height:
        return "move back a little"
    return neutral_pose_problem(points)  # issue #13: a head turned more than ~15 deg is asked to face the camera


@dataclass(frozen=True)
class NeutralGuide:
    """What the preview draws while the neutral pose is being taken.

    Attributes:
        box: ``(x0, y0, x1, y1)`` guide box in driving-frame pixels. ok: the current frame counts.
        progress: fraction collected, ``[0, 1]``. hint: what the user should do.
    """

    box: tuple[int, int, int, int]
    ok: bool
    progress: float
    hint: str


class NeutralPoseStep:
    """Collects a neutral pose from a stream of driving landmarks.

    Usage: :meth:`start`, then :meth:`feed` every frame until it returns the neutral ``(478, 3)``.
    :attr:`hint` and :attr:`progress` drive the overlay (:meth:`guide` bundles them with the box).
    """

    def __init__(self, config: NeutralConfig | None = None):
        self.config = config or NeutralConfig()
        self.active = False
        self.hint = ""
        self.ok = False
        self._window: list[tuple[float, np.ndarray]] = []
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=256)
        self._prev: tuple[float, np.ndarray] | None = None
        self._first_face_t: float | None = None

    def start(self) -> None:
        """Begin (or restart) collecting."""
        self.active = True
        self.hint = "look at the camera"
        self.ok = False
        self._window.clear()
        self._recent.clear()
        self._prev = None
        self._first_face_t = None

    @property
    def progress(self) -> float:
        """Fraction of ``duration_s`` collected, in ``[0, 1]``."""
        if len(self._window) < 2:
            return 0.0
        return min(1.0, (self._window[-1][0] - self._window[0][0]) / self.config.duration_s)

    def guide(self, frame_size: tuple[int, int]) -> NeutralGuide:
        """The overlay's state now, for a ``(W, H)`` driving frame."""
        return NeutralGuide(guide_box(frame_size), self.ok, self.progress, self.hint)

    def feed(self, points: np.ndarray | None, frame_size: tuple[int, int], t: float) -> np.ndarray | None:
        """Take one frame's driving landmarks.

        Args:
            points: ``(478, 3) float32`` landmarks in frame pixels, or None (no face).
            frame_size: ``(W, H)`` of the driving frame.
            t: frame time, seconds (increasing).
        Returns:
            The neutral ``(478, 3) float32`` when collecting is done (then :attr:`active` is False),
            else None.
        """
        if not self.active:
            return None
        cfg = self.config
        self.ok = False
        if points is None:
            self.hint = "no face: look at the camera"
            self._window.clear()
            self._prev = None
            return None
        if self._first_face_t is None:
            self._first_face_t = t
        self._recent.append((t, points))
        x0, y0, x1, y1 = face_bbox(points)
        size = max(x1 - x0, y1 - y0, 1.0)
        speed = 0.0
        if self._prev is not None and t > self._prev[0]:
            step = np.median(np.linalg.norm(points[:, :2] - self._prev[1][:, :2], axis=1))
            speed = float(step) / size / (t - self._prev[0])
        self._prev = (t, points)

        problem = neutral_problem(points, frame_size, cfg)
        if problem is not None:
            self.hint = problem
            self._window.clear()
        elif speed > cfg.max_speed:
            self.hint = "hold still"
        else:
            if self._window:
                drift = np.abs(points[:, :2].mean(0) - self._window[0][1][:, :2].mean(0)).max() / size
                if drift > cfg.max_drift:
                    self._window.clear()
            self._window.append((t, points))
            self.ok = True
            self.hint = "hold still: taking your neutral pose"
            if self.progress >= 1.0:
                return self._finish(self._window, "")
        if t - self._first_face_t > cfg.timeout_s:
            recent = [(ti, p) for ti, p in self._recent if ti >= t - cfg.duration_s]
            return self._finish(recent, "could not get a centred, still face in %.0f s; "
                                        "took the neutral from the last %.1f s (press C to retake it)"
                                % (cfg.timeout_s, cfg.duration_s))
        return None

    def _finish(self, frames: list[tuple[float, np.ndarray]], warning: str) -> np.ndarray:
        points = np.stack([p for _, p in frames])
        closed = np.argsort([mouth_opening(p) for p in points], kind="stable")[:max(1, len(points) // CLOSED_SHARE)]
        neutral = np.median(points[np.sort(closed)], axis=0).astype(np.float32)
        if warning:
            log.warning("neutral pose: %s", warning)
        else:
            log.info("neutral pose taken from %d frames", len(frames))
        self.active = False
        self.hint = ""
        self._window.clear()
        self._recent.clear()
        return neutral
