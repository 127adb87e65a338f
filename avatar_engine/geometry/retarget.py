"""Motion retargeting: driving landmarks -> target landmarks for the source face.

Relative motion in a pose-normalised frame (as LivePortrait and avatarify do it):

* ``A_t``: the 3-D similarity that carries the driver's neutral face onto the driver's face at frame
  ``t`` (fitted on rigid points: forehead, temples, nose bridge; never mouth, eyes or jaw).
* expression change, in the driver's neutral head frame: ``E_t = A_t^-1(X_d(t)) - X_d(neutral)``.
* ``B``: the similarity that carries the driver's neutral face onto the source face; it brings the
  expression change into the source's head frame and scale: ``Y = X_s + s_B R_B E_t``.
* head motion: the driver's motion since neutral, expressed around the source head:
  ``target = (B . A_t . B^-1)(Y)``, i.e. ``target = c_s + d_t + s_t Q_t (Y - c_s)`` with ``c_s`` the
  source's head centre (the rigid points' centroid), ``d_t`` the driver's head-centre displacement
  since neutral (in source pixels), ``s_t`` its scale change and ``Q_t = R_B R_t R_B^T`` its rotation.

Limits (a driver can do anything; the source photo can only be warped so far). Rotation, head
displacement and scale change are each eased through a soft knee (:func:`soft_limit`: unchanged
below the knee, approaching the limit smoothly above it), taken about the head centre (so a clamped
rotation never moves the face). Displacement is measured in source face extents
(:func:`~avatar_engine.face.crop.face_extent`), so a small face moving across a large frame moves the
avatar by the same fraction of *its* face, at most ``max_translation``.

Pose-normalised neutral: when the driver's neutral is turned (yaw) or tilted (roll) by more than
``pose_tolerance_deg`` from frontal (:func:`~avatar_engine.geometry.head_pose.head_pose`; a driver who
starts in a three-quarter view), the excess ``E`` counts as motion: ``Q_t = R_B E R_t R_B^T``, as if the
neutral had been taken facing the camera. The avatar then turns as far as the driver is turned and
faces the camera when the driver does, instead of turning away by the neutral's angle. Within the
tolerance (and for pitch, which the landmarks give less reliably) this is the relative transfer above;
the source photo's own pose is never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from avatar_engine.face import topology
from avatar_engine.face.crop import face_extent
from avatar_engine.geometry.brows import brow_band, carry_under_brow
from avatar_engine.geometry.eyes import retarget_lids
from avatar_engine.geometry.mouth import retarget_lips
from avatar_engine.geometry.openings import smoothstep
from avatar_engine.geometry.head_pose import head_pose

__all__ = ["RetargetConfig", "Similarity", "fit_similarity", "rigid_indices", "soft_limit", "MotionRetargeter"]

_BROWS = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX]).astype(np.int64)
_BROW_SIDES = (np.asarray(topology.LEFT_BROW_IDX, np.int64), np.asarray(topology.RIGHT_BROW_IDX, np.int64))


@dataclass
class RetargetConfig:
    """Retargeting options.

    Attributes:
        expression_scale: multiplies the transferred expression change (1 = as the driver).
        pose: transfer head rotation.
        translation: transfer head translation (and scale, i.e. moving towards the camera).
        max_rotation_deg: the head rotation applied to the source approaches this (degrees) and never
            exceeds it, so a driver turning away cannot fold the source face over itself ...
        soft_rotation_deg: ... and rotations below this pass unchanged (the knee of :func:`soft_limit`).
        max_translation, soft_translation: the same for the head-centre displacement, in source face
            extents (the crop is 1.85 extents wide; 0.3 leaves the background rings room to the border).
        max_scale, soft_scale: the same for ``|log(scale change)|`` (0.25: x0.78 to x1.28).
        expression_fade_deg: the driver's expression change is measured from landmarks the far half of
            which mediapipe guesses once the head is turned far from the neutral; from ``[0]`` degrees of
            turn it fades smoothly to ``expression_fade_floor`` of its size at ``[1]`` degrees.
        expression_fade_floor: see ``expression_fade_deg``.
        crop_margin: with a ``crop_size``, the face oval is kept at least this fraction of the crop inside
            its border (the target is shifted back in, after the limits above); None = not kept.
        pose_tolerance_deg: a driver's neutral turned or tilted by up to this many degrees counts as
            frontal; the excess is transferred as motion (see the module docstring); None = always relative.
        lid_ratio: eyelid openings as the source's times the driver's open ratio
            (:func:`avatar_engine.geometry.eyes.retarget_lids`) instead of additive.
        lid_gain: with ``lid_ratio``, the open ratio's departure from 1 is amplified by this: a rendered
            lid moves less, as mediapipe reads it, than the landmarks it was drawn at (6 val clips, mesh,
            output / driver eye-opening amplitude: 0.82 / 0.74 left / right at 1.0, 0.88 / 0.84 at 1.3,
            0.92 / 0.91 at 1.5, 0.94 / 0.93 at 1.6; blink score 0.89 -> 1.00 from 1.5).
        brow_gain: the brow landmarks' expression change is multiplied by this (the warp moves the
            brows less than their landmarks, as mediapipe reads the output; 6 val clips, mesh: brow-height
            amplitude 0.87 at 1.0, 0.97 at 1.3, correlation 0.91 both).
        brow_limit: ``(knee, limit)``: each brow's mean displacement (after ``brow_gain``) is eased from
            ``knee`` towards ``limit`` inter-ocular distances of the neutral (:func:`soft_limit`); None =
            unlimited. A brow raised further than that stretches the mesh between brow and lid over the
            brow's own hair: on a val driver who raises his brows up to 0.15 IOD (C054) the avatar grew a
            dark band from brow to lid (``reports/quick_start/brow_limit_s12.jpg``).
        lip_ratio: a closing mouth closes as a ratio of the source's opening
            (:func:`avatar_engine.geometry.mouth.retarget_lips`): a photo that smiles with its teeth
            showing closes its lips when the driver closes theirs (additive: only by as much as the
            driver closed since the neutral).
        lip_zero: the mouth opens from closed, not from the photo's opening (``retarget_lips(zero=True)``,
            LivePortrait's "lip zero"): a photo that smiles with its teeth showing closes its lips
            whenever the driver's are closed, at rest too, and opens as wide as the driver's; photos
            with closed lips are unchanged. False keeps the photo's open mouth at the driver's neutral.
            An ``expression_scale`` below 1 removes that share of the photo's opening (0: none).
        carry_under_brow: with the source photo given, the mesh rings between brow and upper lid rise
            with a raised brow by this times their hair-likeness (:mod:`avatar_engine.geometry.brows`):
            the brow's hair moves with it and the lid skin stretches instead (0: off).
    """

    expression_scale: float = 1.0
    pose: bool = True
    translation: bool = True
    max_rotation_deg: float = 30.0
    soft_rotation_deg: float = 22.0
    max_translation: float = 0.3
    soft_translation: float = 0.2
    max_scale: float = 0.25
    soft_scale: float = 0.15
    pose_tolerance_deg: float | None = 12.0
    expression_fade_deg: tuple[float, float] = (25.0, 50.0)
    expression_fade_floor: float = 0.3
    crop_margin: float | None = 0.04
    lid_ratio: bool = True
    lid_gain: float = 1.5
    brow_gain: float = 1.3
    brow_limit: tuple[float, float] | None = (0.05, 0.08)
    lip_ratio: bool = True
    lip_zero: bool = True
    carry_under_brow: float = 1.0

    def __post_init__(self) -> None:
        for soft, hard in (("soft_rotation_deg", "max_rotation_deg"), ("soft_translation", "max_translation"),
                           ("soft_scale", "max_scale")):
            if not 0 <= getattr(self, soft) <= getattr(self, hard):
                raise ValueError(f"need 0 <= {soft} <= {hard}, got {getattr(self, soft)} and {getattr(self, hard)}")
        if self.pose_tolerance_deg is not None and self.pose_tolerance_deg < 0:
            raise ValueError(f"pose_tolerance_deg must be >= 0 or None, got {self.pose_tolerance_deg}")
        if not 0.0 <= self.carry_under_brow <= 1.0:
            raise ValueError(f"carry_under_brow must be in [0, 1], got {self.carry_under_brow}")


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
FACE_OVAL = np.asarray(topology.FACE_OVAL_LOOP)
EYE_CORNERS = np.array([33, 133, 362, 263], dtype=np.int64)


def soft_limit(value: float, knee: float, limit: float) -> float:
    """A magnitude eased into ``[0, limit)``: unchanged up to ``knee``, then bending smoothly (tanh, same
    slope at the knee) towards ``limit`` without reaching it. ``value``, ``knee``, ``limit`` >= 0."""
    if value <= knee or limit <= knee:
        return min(value, limit)
    span = limit - knee
    return knee + span * math.tanh((value - knee) / span)


def _shift_inside(points: np.ndarray, size: float, margin: float) -> np.ndarray:
    """The ``(2,)`` shift that brings the box of ``points (N, 2)`` inside ``[margin, size - margin]^2``
    (centred on an axis where the box is too large to fit)."""
    lo, hi = points.min(0), points.max(0)
    shift = np.zeros(2)
    for a in range(2):
        if hi[a] - lo[a] > size - 2 * margin:
            shift[a] = size / 2 - (lo[a] + hi[a]) / 2
        elif lo[a] < margin:
            shift[a] = margin - lo[a]
        elif hi[a] > size - margin:
            shift[a] = size - margin - hi[a]
    return shift


def _rotation_angle_deg(rotation: np.ndarray) -> float:
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def _with_angle(rotation: np.ndarray, angle_deg: float) -> np.ndarray:
    """The rotation about the axis of ``rotation`` by ``angle_deg`` degrees (``rotation`` itself if unchanged)."""
    angle = _rotation_angle_deg(rotation)
    if abs(angle - angle_deg) < 1e-9 or angle < 1e-6:
        return rotation
    if angle > 179.0:  # the axis of a half turn is not in the skew part: eigenvector of eigenvalue 1
        w = np.linalg.eigh(rotation + rotation.T)[1][:, -1]
    else:
        w = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    k = w / np.linalg.norm(w)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def _clamp_rotation(rotation: np.ndarray, max_deg: float) -> np.ndarray:
    """Scale the rotation angle of ``rotation`` down to at most ``max_deg`` (axis kept)."""
    return _with_angle(rotation, min(_rotation_angle_deg(rotation), max_deg))


class MotionRetargeter:
    """Maps driving landmarks onto the source face (see module docstring).

    Args:
        source_points: ``(478, 3)`` source landmarks in source-crop pixels.
        config: options.
        crop_size: side of the source crop in pixels; given, the face oval is kept inside it
            (``config.crop_margin``).
        source_image: ``(S, S, 3) uint8`` RGB source crop; given, a raised brow carries its hair
            (``config.carry_under_brow``).

    Usage: ``set_neutral(driver_points)`` once (and again to re-take the neutral), then
    ``retargeter(driver_points) -> (478, 3)`` per frame. Before a neutral is set, the first call
    takes its input as the neutral.
    """

    def __init__(self, source_points: np.ndarray, config: RetargetConfig | None = None,
                 crop_size: int | None = None, source_image: np.ndarray | None = None):
        self.config = config or RetargetConfig()
        self.crop_size = crop_size
        self.source = np.asarray(source_points, np.float32)
        if self.source.shape != (topology.NUM_LANDMARKS, 3):
            raise ValueError(f"source_points must be (478, 3), got {self.source.shape}")
        self.rigid = rigid_indices(self.source)
        self._source_extent = face_extent(self.source)
        self._neutral: np.ndarray | None = None
        self._to_source: Similarity | None = None  # B
        self._neutral_excess = np.eye(3)  # E: the neutral's turn beyond pose_tolerance_deg (camera frame)
        self._brow_band = None if source_image is None else brow_band(source_image, self.source)

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
        self._neutral_excess = np.eye(3)
        tol = self.config.pose_tolerance_deg
        if tol is not None:
            pose = head_pose(pts)
            yaw, roll = (math.copysign(max(abs(a) - tol, 0.0), a) for a in (pose.yaw, pose.roll))
            self._neutral_excess = Rotation.from_euler("zy", [roll, yaw], degrees=True).as_matrix()

    def clear_neutral(self) -> None:
        """Forget the neutral: the next driving frame becomes the neutral."""
        self._neutral = None
        self._to_source = None

    @property
    def neutral_pose_offset_deg(self) -> float:
        """How far (degrees) the source is turned relative to the driver's neutral (the rotation of ``B``)."""
        if self._to_source is None:
            raise RuntimeError("set_neutral() first")
        return _rotation_angle_deg(self._to_source.rotation)

    def head_motion(self, driver_points: np.ndarray) -> Similarity:
        """``A_t``: the driver's rigid head motion since neutral (driver pixels)."""
        if self._neutral is None:
            raise RuntimeError("set_neutral() first")
        return fit_similarity(self._neutral[self.rigid], np.asarray(driver_points, np.float32)[self.rigid])

    def _limit_brows(self, expression: np.ndarray, knee: float, limit: float) -> None:
        """Ease each brow's mean displacement in ``expression (478, 3)`` (in place) into ``limit``
        inter-ocular distances of the neutral (:func:`soft_limit` from ``knee``)."""
        iod = max(float(np.linalg.norm(self._neutral[263, :2] - self._neutral[33, :2])), 1e-6)
        for idx in _BROW_SIDES:
            size = float(np.linalg.norm(expression[idx, :2].mean(0))) / iod
            if size > knee:
                expression[idx] *= soft_limit(size, knee, limit) / size

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
        if cfg.brow_gain != 1.0:
            expression[_BROWS] *= cfg.brow_gain
        if cfg.brow_limit is not None:
            self._limit_brows(expression, *cfg.brow_limit)
        b = self._to_source
        fade_from, fade_to = cfg.expression_fade_deg
        turn = smoothstep(_rotation_angle_deg(motion.rotation), fade_from, fade_to)
        fade = 1.0 - (1.0 - cfg.expression_fade_floor) * float(turn)
        y = self.source + (cfg.expression_scale * fade * b.scale) * expression @ b.rotation.T
        if self._brow_band is not None and cfg.carry_under_brow > 0.0:
            y = carry_under_brow(y, self.source, self._brow_band, cfg.carry_under_brow)
        zero = cfg.lip_zero and cfg.expression_scale > 0  # a smaller expression scale closes the photo's lips less
        if cfg.lip_ratio or zero:
            y = retarget_lips(y, self.source, self._neutral, self._neutral + expression, ratio=cfg.lip_ratio,
                              zero=zero, zero_strength=min(cfg.expression_scale, 1.0))
        if cfg.lid_ratio:
            y = retarget_lids(y, self.source, self._neutral, self._neutral + expression, gain=cfg.lid_gain)
        centre_n = self._neutral[self.rigid].mean(0).astype(np.float64)
        centre_s = b.apply(centre_n[None])[0].astype(np.float64)
        excess = self._neutral_excess
        rotation = b.rotation @ excess @ (motion.rotation if cfg.pose else np.eye(3)) @ b.rotation.T
        rotation = _with_angle(rotation, soft_limit(_rotation_angle_deg(rotation), cfg.soft_rotation_deg,
                                                    cfg.max_rotation_deg))
        scale, shift = 1.0, np.zeros(3)
        if cfg.translation:
            log_scale = math.log(motion.scale)
            scale = math.exp(math.copysign(soft_limit(abs(log_scale), cfg.soft_scale, cfg.max_scale), log_scale))
            shift = b.scale * b.rotation @ (motion.apply(centre_n[None])[0] - centre_n)
            shift[2] = 0.0  # mediapipe z is relative to the face: its centre does not move in depth
            extent = self._source_extent
            length = float(np.linalg.norm(shift[:2]))
            if length > 1e-9:
                shift *= soft_limit(length / extent, cfg.soft_translation, cfg.max_translation) * extent / length
        target = centre_s + shift + scale * (y - centre_s) @ rotation.T
        if self.crop_size is not None and cfg.crop_margin is not None:
            target[:, :2] += _shift_inside(target[FACE_OVAL, :2], self.crop_size, cfg.crop_margin * self.crop_size)
        return target.astype(np.float32)
