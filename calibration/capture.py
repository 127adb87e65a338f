"""Guided capture of the enrollment clip: a short script, quality checks, the accepted frames to a video.

The user follows :data:`SCRIPT` (look at the camera, turn left/right, up/down, read a sentence aloud,
smile with teeth, blink, raise the brows) while a progress ring runs; each frame is checked
(:func:`calibration.quality.check_frame`) and only usable frames are written to the capture video,
which is then prepared like the training data. The frames come from any object with ``read() ->
(H, W, 3) uint8 RGB or None`` and an ``fps`` property (a webcam, or a video file played headless, as the
``runtime.capture`` cameras); the preview, when given, is any object with ``show(rgb) -> key``
(``runtime.sinks.PreviewWindow``): both are the hardware boundary that tests replace.

The capture also picks the source photo (the sharpest frontal frame with the eyes open and the
mouth closed) and the neutral landmarks (that frame's).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from avatar_engine.errors import AvatarError
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import VideoWriter
from calibration.quality import HINTS, QualityConfig, check_frame, frame_pose, sharpness

__all__ = ["ScriptStep", "SCRIPT", "script_step", "CaptureConfig", "CaptureResult", "FrameSource", "Preview",
           "CaptureCancelled", "draw_capture_overlay", "run_capture"]

log = logging.getLogger("avatar_engine")


@dataclass(frozen=True)
class ScriptStep:
    """One instruction of the capture script and its share of the capture time."""

    name: str
    text: str
    share: float


SCRIPT: tuple[ScriptStep, ...] = (
    ScriptStep("look", "Look straight at the camera, face relaxed", 0.15),
    ScriptStep("turn", "Turn your head slowly left, then right", 0.15),
    ScriptStep("nod", "Tilt your head slowly up, then down", 0.12),
    ScriptStep("read", "Read aloud: \"The quick brown fox jumps over the lazy dog.\"", 0.22),
    ScriptStep("smile", "Smile showing your teeth", 0.12),
    ScriptStep("blink", "Blink a few times", 0.12),
    ScriptStep("brows", "Raise your eyebrows, then relax", 0.12),
)
"""The capture script; shares add up to 1."""


def script_step(fraction: float) -> tuple[int, ScriptStep]:
    """``(index, step)`` of the script at ``fraction`` (0..1) of the capture time."""
    acc = 0.0
    for i, s in enumerate(SCRIPT):
        acc += s.share
        if fraction < acc:
            return i, s
    return len(SCRIPT) - 1, SCRIPT[-1]


class FrameSource(Protocol):
    """A camera: ``read()`` gives the next RGB frame or None (a file ended), ``fps`` its rate;
    ``realtime`` False means frames are timed by their count (a file played as fast as processed)."""

    realtime: bool

    def read(self) -> np.ndarray | None: ...

    @property
    def fps(self) -> float: ...


class Preview(Protocol):
    """A window: ``show(rgb)`` displays a frame and returns the key pressed (-1: none)."""

    def show(self, rgb: np.ndarray) -> int: ...


class CaptureCancelled(AvatarError):
    """The user stopped the capture (Q / Esc in the preview)."""


@dataclass
class CaptureConfig:
    """Options of :func:`run_capture`.

    Attributes:
        seconds: capture length (camera time; a file's own timestamps).
        min_seconds: usable frames needed, in seconds of footage, to go on (at most half of ``seconds``).
        quality: thresholds of the per-frame checks.
        crf: quality of the capture video (libx264; low = close to lossless).
    """

    seconds: float = 30.0
    min_seconds: float = 4.0
    quality: QualityConfig = field(default_factory=QualityConfig)
    crf: int = 12

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.min_seconds < 0:
            raise ValueError("seconds must be > 0 and min_seconds >= 0")


@dataclass
class CaptureResult:
    """What :func:`run_capture` recorded.

    Attributes:
        video: the capture video (usable frames only). fps: its rate.
        frames_seen / frames_kept: frames read / written. rejected: problem name -> frames.
        seconds: capture time covered. steps_kept: script step name -> frames kept.
        source_frame: ``(H, W, 3) uint8`` the chosen source photo; source_landmarks: its ``(478, 3)`` px.
    """

    video: Path
    fps: float
    frames_seen: int
    frames_kept: int
    rejected: dict[str, int]
    seconds: float
    steps_kept: dict[str, int]
    source_frame: np.ndarray
    source_landmarks: np.ndarray


def _source_score(rgb: np.ndarray, points: np.ndarray) -> float:
    """Higher = better source photo: frontal, mouth closed, eyes open, sharp."""
    pose = frame_pose(points)
    return (-4.0 * abs(pose.yaw) - 6.0 * max(pose.mouth - 0.04, 0.0) - 4.0 * max(0.18 - pose.eyes, 0.0)
            + 0.3 * float(np.log1p(sharpness(rgb, points))))


_GREEN, _RED, _WHITE, _GREY = (60, 220, 90), (235, 70, 60), (255, 255, 255), (90, 90, 90)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, int(1.6 * scale)), cv2.LINE_AA)


def draw_capture_overlay(rgb: np.ndarray, fraction: float, step: ScriptStep, problem: str | None,
                         face: np.ndarray | None) -> np.ndarray:
    """The preview frame: the face box (green when usable, red otherwise), a progress ring with the
    seconds left, the current instruction and, when the frame is not usable, its hint."""
    img = np.ascontiguousarray(rgb).copy()
    h, w = img.shape[:2]
    s = max(min(h, w) / 480.0, 0.5)
    if face is not None:
        x0, y0 = face[:, :2].min(0).astype(int)
        x1, y1 = face[:, :2].max(0).astype(int)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), _RED if problem else _GREEN, max(1, int(2 * s)))
    r = int(28 * s)
    centre = (w - r - int(12 * s), r + int(12 * s))
    cv2.circle(img, centre, r, _GREY, max(2, int(5 * s)), cv2.LINE_AA)
    cv2.ellipse(img, centre, (r, r), -90, 0, 360 * min(max(fraction, 0.0), 1.0), _GREEN, max(2, int(5 * s)),
                cv2.LINE_AA)
    _text(img, f"{int(round(fraction * 100))}%", (centre[0] - int(17 * s), centre[1] + int(6 * s)), 0.5 * s, _WHITE)
    _text(img, step.text, (int(10 * s), h - int(16 * s)), 0.55 * s, _WHITE)
    if problem:
        _text(img, HINTS[problem], (int(10 * s), int(30 * s)), 0.6 * s, _RED)
    return img


def run_capture(camera: FrameSource, video: str | Path, config: CaptureConfig | None = None,
                preview: Preview | None = None, clock=time.monotonic) -> CaptureResult:
    """Record the enrollment capture (see the module docstring).

    Args:
        camera: the frames (opened). video: where the usable frames go (mp4).
        preview: shows the script and hints; Q or Esc cancels.
        clock: time source of a realtime camera (seconds).
    Raises:
        CaptureCancelled: the user pressed Q/Esc.
        AvatarError: too few usable frames (``min_seconds``) (the message gives the commonest hint).
    """
    cfg = config or CaptureConfig()
    fps = float(camera.fps or 25.0)
    realtime = bool(getattr(camera, "realtime", True))
    writer: VideoWriter | None = None
    seen = kept = 0
    rejected: Counter[str] = Counter()
    steps_kept: Counter[str] = Counter()
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    t = 0.0
    t0 = clock()
    det_cfg = LandmarkConfig(smoothing=False, max_tracked_faces=2)
    try:
        with LandmarkDetector(det_cfg, static=False) as det:
            while True:
                rgb = camera.read()
                if rgb is None:
                    break
                t = (clock() - t0) if realtime else seen / fps
                if t >= cfg.seconds:
                    break
                seen += 1
                faces = det.detect_all(rgb)
                problem = check_frame(rgb, faces, cfg.quality)
                _, step = script_step(t / cfg.seconds)
                if problem is None:
                    if writer is None:
                        writer = VideoWriter(video, fps, (rgb.shape[1], rgb.shape[0]), crf=cfg.crf)
                    writer.write(rgb)
                    kept += 1
                    steps_kept[step.name] += 1
                    score = _source_score(rgb, faces[0])
                    if best is None or score > best[0]:
                        best = (score, rgb.copy(), np.asarray(faces[0], np.float32).copy())
                else:
                    rejected[problem] += 1
                if preview is not None:
                    key = preview.show(draw_capture_overlay(rgb, t / cfg.seconds, step, problem,
                                                            faces[0] if faces else None))
                    if key in (ord("q"), ord("Q"), 27):
                        raise CaptureCancelled("enrollment cancelled; nothing was saved")
    finally:
        if writer is not None:
            writer.close()
    need = min(cfg.min_seconds, 0.5 * cfg.seconds)
    if best is None or kept < need * fps:
        common = rejected.most_common(1)
        hint = f" (most frames: {HINTS[common[0][0]]})" if common else ""
        raise AvatarError(f"only {kept} usable frames in {seen} ({kept / fps:.1f} s, need {need:.1f} s)"
                          f"{hint}")
    if kept < seen:
        log.info("capture: %d of %d frames usable; %s", kept, seen,
                 ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in rejected.most_common()))
    return CaptureResult(Path(video), fps, seen, kept, dict(rejected), min(t, cfg.seconds), dict(steps_kept),
                         best[1], best[2])
