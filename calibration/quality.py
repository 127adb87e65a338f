"""Per-frame quality checks of the enrollment capture, each with a plain hint for the user.

:func:`check_frame` looks at one camera frame and the faces found in it and returns the first problem
(in the order of :data:`HINTS`) or None. :func:`frame_pose` measures what the capture script and the
choice of the source photo need (head turn, mouth and eye opening, sharpness) from the landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face.crop import face_extent

__all__ = ["QualityConfig", "HINTS", "check_frame", "FramePose", "frame_pose", "sharpness"]

HINTS: dict[str, str] = {
    "no_face": "no face found: look at the camera",
    "several_faces": "several faces in view: only you should be in the picture",
    "too_dark": "too dark: turn on a light in front of you",
    "too_small": "face too small: move closer to the camera",
    "cut_off": "face cut off: move to the middle of the picture",
    "blurry": "blurry: hold still for a moment (or clean the lens)",
}
"""Problem name -> the hint shown to the user, in the order they are checked."""

_NOSE_TIP = 1
_IRIS = (468, 473)
_LIPS_INNER = (13, 14)
_LIDS = ((159, 145), (386, 374))


@dataclass
class QualityConfig:
    """Thresholds of :func:`check_frame`.

    Attributes:
        min_brightness: mean luma (0-255) of the face box below which a frame is too dark.
        min_face_fraction: face extent below this fraction of the frame's shorter side is too small.
        min_face_px: face extent below this many pixels is too small, whatever the frame size.
        min_inside: fraction of the landmarks that must lie inside the frame.
        min_sharpness: variance of the Laplacian of the face box (at 128 px) below which a frame is blurry.
    """

    min_brightness: float = 50.0
    min_face_fraction: float = 0.18
    min_face_px: float = 80.0
    min_inside: float = 0.98
    min_sharpness: float = 12.0


def _face_box(points: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x0, y0 = np.clip(points[:, :2].min(0), 0, [w - 1, h - 1]).astype(int)
    x1, y1 = np.clip(points[:, :2].max(0), 1, [w, h]).astype(int)
    return int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)


def sharpness(rgb: np.ndarray, points: np.ndarray) -> float:
    """Variance of the Laplacian of the face box, resized to 128x128 grey (higher = sharper)."""
    x0, y0, x1, y1 = _face_box(points, rgb.shape)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def check_frame(rgb: np.ndarray, faces: list[np.ndarray], config: QualityConfig | None = None) -> str | None:
    """The first problem of one frame (a key of :data:`HINTS`), or None when it is usable.

    Args:
        rgb: ``(H, W, 3) uint8`` frame.
        faces: the faces found in it, ``(478, 2|3)`` px each, largest first.
    """
    cfg = config or QualityConfig()
    if not faces:
        return "no_face"
    if len(faces) > 1:
        return "several_faces"
    pts = np.asarray(faces[0], np.float32)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _face_box(pts, rgb.shape)
    luma = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    if float(luma.mean()) < cfg.min_brightness:
        return "too_dark"
    extent = face_extent(pts)
    if extent < max(cfg.min_face_px, cfg.min_face_fraction * min(h, w)):
        return "too_small"
    inside = np.mean((pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h))
    if inside < cfg.min_inside:
        return "cut_off"
    if sharpness(rgb, pts) < cfg.min_sharpness:
        return "blurry"
    return None


@dataclass(frozen=True)
class FramePose:
    """What the landmarks say about one frame, in inter-ocular distances (iod).

    Attributes:
        yaw: horizontal offset of the nose tip from the eyes' midpoint (0 = frontal; sign = side).
        pitch: vertical distance nose tip - eye line (compare with the frontal value of the same person).
        mouth: inner-lip opening. eyes: mean lid opening.
    """

    yaw: float
    pitch: float
    mouth: float
    eyes: float


def frame_pose(points: np.ndarray) -> FramePose:
    """:class:`FramePose` of ``(478, 2|3)`` landmarks."""
    p = np.asarray(points, np.float64)[:, :2]
    le, re = p[_IRIS[0]], p[_IRIS[1]]
    iod = max(float(np.linalg.norm(le - re)), 1e-6)
    mid = (le + re) / 2
    axis = (re - le) / iod
    normal = np.array([-axis[1], axis[0]])
    nose = p[_NOSE_TIP] - mid
    mouth = float(np.linalg.norm(p[_LIPS_INNER[0]] - p[_LIPS_INNER[1]])) / iod
    eyes = float(np.mean([np.linalg.norm(p[a] - p[b]) for a, b in _LIDS])) / iod
    return FramePose(float(nose @ axis) / iod, float(abs(nose @ normal)) / iod, mouth, eyes)
