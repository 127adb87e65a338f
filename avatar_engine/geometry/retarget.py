"""Motion retargeting: driving landmarks -> target landmarks for the source face.

Relative motion in a pose-normalised frame (as LivePortrait and avatarify do it):

* ``A_t``: the 3-D similarity that carries the driver's neutral face onto the driver's face at frame
  ``t`` (fitted on rigid points: forehead, temples, nose bridge; never mouth, eyes or jaw).
* expression change, in the driver's neutral head frame: ``E_t = A_t^-1(X_d(t)) - X_d(neutral)``.
* ``B``: the similarity that carries the driver's neutral face onto the source face; it brings the
  expression change into the source's head frame and scale: ``Y = X_s + s_B R_B E_t``.
* head motion: the driver's motion since neutral, expressed around the source head:
  ``target = (B . A_t . B^-1)(Y)``.

Only *changes* of the driver are transferred, so the source keeps its own face shape (the driver's
identity does not leak). When the source is a crop of the driver's neutral frame (self-reenactment),
``B`` is exactly that crop transform and the target equals the driver's landmarks mapped into the
crop: the driver's geometry is reproduced.

All landmark arrays are ``(478, 3) float32``: x, y in pixels, z in the same pixel units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar_engine.face import topology
from avatar_engine.geometry.eyes import retarget_lids

__all__ = ["RetargetConfig", "Similarity", "fit_similarity", "rigid_indices", "MotionRetargeter"]


@dataclass
class RetargetConfig:
    """Retargeting options.

    Attributes:
        expression_scale: multiplies the transferred expression change (1 = as the driver).
        pose: transfer head rotation.
        translation: transfer head translation (and scale, i.e. moving towards the camera).
        max_rotation_deg: head rotations beyond this (relative to neutral) are clamped, so a driver
            turning away cannot fold the source face over itself.
        lid_ratio: eyelid openings as the source's times the driver's open ratio
            (:func:`avatar_engine.geometry.eyes.retarget_lids`) instead of additive.
    """

    expression_scale: float = 1.0
    pose: bool = True
    translation: bool = True
    max_rotation_deg: float = 35.0
    lid_ratio: bool = True


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * R @ x + t`` on row vectors: ``(N, 3) -> (N, 3)``."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return (self.scale * points @ self.rotation.T + self.translation).astype(np.float32)

    def inverse(self) -> "Similarity":
        r_inv = self.rotation.T
        return Similarity(1.0 / self.scale, r_inv, -(r_inv @ self.translation) / self.scale)

    def compose(self, other: "Similarity") -> "Similarity":
        """``self . other``: apply ``other`` first."""
        return Similarity(
            self.scale * other.scale,
            self.rotation @ other.rotation,
            self.scale * self.rotation @ other.translation + self.translation,
        )

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity (Umeyama 1991) with ``dst ~ s R src + t``.

    Args:
        src, dst: ``(N, 3)`` corresponding points, N >= 3.
    """
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    if var_s < 1e-12:
        return Similarity(1.0, np.eye(3), mu_d - mu_s)
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_s)
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def rigid_indices(points: np.ndarray) -> np.ndarray:
    """Indices of landmarks that move with the skull, not with expressions.

    Everything above the nose tip (forehead, temples, upper cheeks, nose bridge) except the
    eyes, irises and eyebrows. Measured in the face's own frame (roll removed) of ``points``.

    Args:
        points: ``(478, 3)`` a face in any pose (typically the source).
    Returns:
        sorted ``int64`` indices (about 100).
    """
    pts = np.asarray(points, np.float64)
    eye_axis = pts[263, :2] - pts[33, :2]  # outer eye corners, left - right in the image
    angle = np.arctan2(eye_axis[1], eye_axis[0])
    c, s = np.cos(-angle), np.sin(-angle)
    upright_y = s * pts[:, 0] + c * pts[:, 1]
    mobile = np.concatenate([
        topology.LIPS_IDX, topology.LEFT_EYE_IDX, topology.RIGHT_EYE_IDX, topology.LEFT_IRIS_IDX,
        topology.RIGHT_IRIS_IDX, topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX,
    ])
    keep = upright_y[: topology.NUM_LANDMARKS] <= upright_y[NOSE_TIP]
    keep[mobile] = False
    keep[EYE_CORNERS] = True
    return np.flatnonzero(keep).astype(np.int64)


NOSE_TIP = 1
EYE_CORNERS = np.array([33, 133, 362, 263], dtype=np.int64)


def _rotation_angle_deg(rotation: np.ndarray) -> float:
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def _clamp_rotation(rotation: np.ndarray, max_deg: float) -> np.ndarray:
    """Scale the rotation angle of ``rotation`` down to at most ``max_deg`` (axis kept)."""
    angle = _rotation_angle_deg(rotation)
    if angle <= max_deg or angle < 1e-6:
        return rotation
    # axis-angle via the skew part; Rodrigues back with the clamped angle
    w = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    norm = np.linalg.norm(w)
    if norm < 1e-9:
        return rotation
    k = w / norm
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(max_deg)
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


class MotionRetargeter:
    """Maps driving landmarks onto the source face (see module docstring).

    Args:
        source_points: ``(478, 3)`` source landmarks in source-crop pixels.
        config: options.

    Usage: ``set_neutral(driver_points)`` once (and again to re-take the neutral), then
    ``retargeter(driver_points) -> (478, 3)`` per frame. Before a neutral is set, the first call
    takes its input as the neutral.
    """

    def __init__(self, source_points: np.ndarray, config: RetargetConfig | None = None):
        self.config = config or RetargetConfig()
        self.source = np.asarray(source_points, np.float32)
        if self.source.shape != (topology.NUM_LANDMARKS, 3):
            raise ValueError(f"source_points must be (478, 3), got {self.source.shape}")
        self.rigid = rigid_indices(self.source)
        self._neutral: np.ndarray | None = None
        self._to_source: Similarity | None = None  # B

    @property
    def has_neutral(self) -> bool:
        return self._neutral is not None

    @property
    def neutral(self) -> np.ndarray | None:
        """``(478, 3)`` the driver's neutral landmarks, or None."""
        return self._neutral

    def set_neutral(self, driver_points: np.ndarray) -> None:
        """Take ``driver_points`` ``(478, 3)`` (driver image pixels) as the driver's neutral."""
        pts = np.asarray(driver_points, np.float32)
        self._neutral = pts
        self._to_source = fit_similarity(pts[self.rigid], self.source[self.rigid])

    def clear_neutral(self) -> None:
        """Forget the neutral: the next driving frame becomes the neutral."""
        self._neutral = None
        self._to_source = None

    def head_motion(self, driver_points: np.ndarray) -> Similarity:
        """``A_t``: the driver's rigid head motion since neutral (driver pixels)."""
        if self._neutral is None:
            raise RuntimeError("set_neutral() first")
        return fit_similarity(self._neutral[self.rigid], np.asarray(driver_points, np.float32)[self.rigid])

    def __call__(self, driver_points: np.ndarray) -> np.ndarray:
        """Target landmarks for the source face.

        Args:
            driver_points: ``(478, 3)`` driver landmarks (driver image pixels).
        Returns:
            ``(478, 3) float32`` target landmarks in source-crop pixels.
        """
        pts = np.asarray(driver_points, np.float32)
        if self._neutral is None:
            self.set_neutral(pts)
        assert self._neutral is not None and self._to_source is not None
        cfg = self.config
        motion = self.head_motion(pts)
        expression = motion.inverse().apply(pts) - self._neutral
        b = self._to_source
        y = self.source + (cfg.expression_scale * b.scale) * expression @ b.rotation.T
        if cfg.lid_ratio:
            y = retarget_lids(y, self.source, self._neutral, self._neutral + expression)
        rotation = _clamp_rotation(motion.rotation, cfg.max_rotation_deg) if cfg.pose else np.eye(3)
        if cfg.translation:
            head = Similarity(motion.scale, rotation, motion.translation)
        else:  # rotate about the neutral face's centroid, no translation or scale change
            centre = self._neutral[self.rigid].mean(0)
            head = Similarity(1.0, rotation, centre - rotation @ centre)
        in_source = b.compose(head).compose(b.inverse())
        return in_source.apply(y)
