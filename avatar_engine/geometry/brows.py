"""The band between brow and upper lid: a raised brow carries the lower edge of its hair.

mediapipe's lower-brow landmarks run through the brow's hair, not along its lower edge: on a thick
brow the hair goes on for two to four pixels (at 256) below them, over the two mesh rings that lie
between the brow and the upper lid. When the driver raises a brow, those rings move less than the
brow (the skin under a brow stretches), so the mesh stretches the lower part of the hair over the
lid: a dark band from brow to eye ("goggles").

Here each point of those rings gets a weight from the source photo: how dark the band just above
it is, between the brow's hair and the lid skin below (0: skin, 1: as dark as the hair). When the brow rises more
than the point, the point rises with it by that fraction of the difference, so the hair moves with
the brow and the lid skin below stretches instead. Lowered brows and the source's own pose are left
as they are. Points are ``(478, 2|3)`` landmarks in crop pixels (x right, y down).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.geometry.openings import sample, smoothstep

__all__ = ["BROW_SIDES", "BrowSide", "BrowBand", "brow_band", "carry_under_brow"]

# Per side (right, left in the image's subject's frame, as mediapipe names them): the lower-brow
# landmarks (outer to inner), the two mesh rings below them (the upper one first) and the upper lid.
BROW_SIDES: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = (
    ((46, 53, 52, 65, 55), (225, 224, 223, 222, 221, 189, 30, 29, 27, 28, 56, 190), (246, 161, 160, 159, 158, 157, 173)),
    ((276, 283, 282, 295, 285), (445, 444, 443, 442, 441, 413, 260, 259, 257, 258, 286, 414),
     (466, 388, 387, 386, 385, 384, 398)),
)

MIN_CONTRAST = 20.0
"""Grey levels between the lid skin and the brow's hair below which a brow has no visible edge."""


@dataclass(frozen=True)
class BrowSide:
    """One brow's source-only data: its under-brow landmarks ``under (n,) int``, how far each follows a
    raised brow ``weights (n,)`` in ``[0, 1]``, the source's up direction ``up (2,)`` (perpendicular to the
    eye's corner line, towards the brow), and the positions along the brow (the corner line's direction)
    of its lower-brow landmarks ``brow_at (5,)`` (increasing, with ``brow`` their landmark indices in
    that order) and of the under-brow points ``under_at (n,)``."""

    under: np.ndarray
    weights: np.ndarray
    up: np.ndarray
    brow: np.ndarray
    brow_at: np.ndarray
    under_at: np.ndarray


@dataclass(frozen=True)
class BrowBand:
    """Per source: both brows' :class:`BrowSide` (right brow first)."""

    sides: tuple[BrowSide, ...]

    @property
    def under(self) -> np.ndarray:
        """``(n,) int`` every under-brow landmark, right brow first."""
        return np.concatenate([side.under for side in self.sides])

    @property
    def weights(self) -> np.ndarray:
        """``(n,)`` their weights, in the order of :attr:`under`."""
        return np.concatenate([side.weights for side in self.sides])


def _nearest(points: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each of ``points (n, 2)``, the nearest of ``candidates (m, 2)`` -> ``(n, 2)``."""
    return candidates[np.argmin(np.linalg.norm(points[:, None] - candidates[None], axis=2), axis=1)]


def brow_band(image: np.ndarray, landmarks: np.ndarray) -> BrowBand:
    """How dark (hair-like) each under-brow point of the source is.

    Args:
        image: ``(S, S, 3) uint8`` RGB source crop.
        landmarks: ``(478, 2|3)`` its landmarks in crop pixels.
    Returns:
        The :class:`BrowBand`: per point, ``smoothstep`` between 0.2 and 0.7 of the darkness ``(L_skin -
        L) / (L_skin - L_hair)`` of the band just above it (``L`` half-way to the nearest point of the
        row above: the lower brow for the upper ring, the upper ring for the lower one), with
        ``L_hair`` the median grey level on the lower-brow landmarks and ``L_skin`` the brightest grey
        level half-way between the lower ring and the lid; all 0 on a side where the two differ by
        less than :data:`MIN_CONTRAST`. A point carries as far as the band above it is hair.
    """
    gray = cv2.GaussianBlur(cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)
    pts = np.asarray(landmarks, np.float32)[:, :2]
    sides = []
    for brow, ring, lid in BROW_SIDES:
        ring_idx = np.asarray(ring, np.int64)
        brow_idx = np.asarray(brow, np.int64)
        lower_ring = pts[ring_idx[len(ring) // 2:]]
        lid_pts = pts[list(lid)]
        skin = float(sample(gray, 0.5 * (lower_ring + _nearest(lower_ring, lid_pts))).max())
        hair = float(np.median(sample(gray, pts[brow_idx])))
        contrast = skin - hair
        if contrast < MIN_CONTRAST:
            w = np.zeros(len(ring), np.float32)
        else:
            upper_ring = pts[ring_idx[:len(ring) // 2]]
            above = np.concatenate([_nearest(upper_ring, pts[brow_idx]), _nearest(lower_ring, upper_ring)])
            dark = (skin - sample(gray, 0.5 * (pts[ring_idx] + above))) / contrast
            w = smoothstep(dark, 0.2, 0.7).astype(np.float32)
        along = pts[lid[-1]] - pts[lid[0]]
        along /= max(float(np.linalg.norm(along)), 1e-6)
        up = np.array([along[1], -along[0]], np.float32)  # perpendicular to the eye's axis ...
        if float((pts[brow_idx].mean(0) - lid_pts.mean(0)) @ up) < 0:
            up = -up  # ... towards the brow
        at = pts[brow_idx] @ along
        order = np.argsort(at)
        sides.append(BrowSide(ring_idx, w, up, brow_idx[order], at[order], pts[ring_idx] @ along))
    return BrowBand(tuple(sides))


def carry_under_brow(points: np.ndarray, source: np.ndarray, band: BrowBand, weight: float = 1.0) -> np.ndarray:
    """Raise the under-brow points with a raised brow (see the module docstring).

    Args:
        points: ``(478, 2|3)`` landmarks in the source's head frame (the source plus the expression
            change; no head motion).
        source: ``(478, 2|3)`` the source's landmarks.
        band: the source's :func:`brow_band`.
        weight: multiplies ``band.weights`` (``RetargetConfig.carry_under_brow``).
    Returns:
        A ``float32`` copy of ``points`` where each under-brow point ``u`` rises by ``weight * w_u *
        max(0, rise_b - rise_u)`` along the source's up direction (perpendicular to the eye's corner line,
        towards the brow), with
        ``rise_b`` the lower brow's rise interpolated at ``u`` along the brow and ``rise_u`` ``u``'s own.
    """
    out = np.array(points, np.float32)
    src = np.asarray(source, np.float32)[:, :2]
    for side in band.sides:
        w = side.weights * weight
        if not w.any():
            continue
        rise_brow = (out[side.brow, :2] - src[side.brow]) @ side.up
        rise_at_u = np.interp(side.under_at, side.brow_at, rise_brow)
        rise_u = (out[side.under, :2] - src[side.under]) @ side.up
        lift = w * np.maximum(rise_at_u - rise_u, 0.0)
        out[side.under, :2] += lift[:, None] * side.up[None]
    return out
