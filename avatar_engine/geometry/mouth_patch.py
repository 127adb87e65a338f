"""The mouth patch: a square, upright, scale-normalised window on the mouth of a face crop.

The learned mouth stage (:mod:`avatar_engine.models.mouth_net`) works in this frame, so it sees every
mouth at the same size and orientation whatever the head pose: the origin is the mean of the outer
lip corners (61, 291) and the outer lip's top and bottom middles (0, 17), the ``x`` axis runs along
the corner axis, and the patch side is ``span`` corner distances. Points are ``(478, 2|3)`` crop pixels
in the mediapipe convention (pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``); the same
convention holds in the patch.

* :func:`mouth_affine` -> ``(2, 3)`` crop pixel *indices* -> patch pixel indices (what
  ``cv2.warpAffine`` expects), :func:`to_patch` maps landmarks;
* :func:`cut_patch` samples the patch of an image; :func:`lip_masks` rasterises the target's inner
  and outer lip polygons in it; :func:`feather` is the blending weight of a patch;
* :func:`paste_delta` adds a patch-space correction back onto the crop, feathered.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face import topology

__all__ = ["MouthPatchConfig", "mouth_affine", "to_patch", "cut_patch", "lip_masks", "feather", "paste_delta",
           "LIP_LOOPS"]

_CORNERS = (61, 291)
_MIDDLES = (0, 17)
LIP_LOOPS = (tuple(int(i) for i in topology.INNER_LIPS_LOOP), tuple(int(i) for i in topology.OUTER_LIPS_LOOP))
"""The inner and outer lip loops (landmark indices), in that order."""


@dataclass(frozen=True)
class MouthPatchConfig:
    """Patch geometry.

    Attributes:
        size: patch side in pixels.
        span: patch side in mouth widths (outer corner distance).
        fade: the feather weight falls from 1 to 0 over this outer share of the patch radius.
    """

    size: int = 96
    span: float = 1.8
    fade: float = 0.3


def mouth_affine(points: np.ndarray, config: MouthPatchConfig = MouthPatchConfig()) -> np.ndarray:
    """``(2, 3)`` float64 affine from crop pixel indices to patch pixel indices for the mouth of ``points``."""
    p = np.asarray(points, np.float64)[:, :2]
    left, right = p[_CORNERS[0]], p[_CORNERS[1]]
    axis = right - left
    width = max(float(np.linalg.norm(axis)), 1e-3)
    e1 = axis / width
    e2 = np.array([-e1[1], e1[0]])
    origin = p[list(_CORNERS + _MIDDLES)].mean(axis=0)
    scale = config.size / (config.span * width)
    rot = np.stack([e1, e2]) * scale  # rows: patch x, patch y per crop unit
    # continuous coordinates: patch = rot @ (crop - origin) + size / 2; indices are continuous - 0.5
    shift = rot @ (np.array([0.5, 0.5]) - origin) + config.size / 2 - 0.5
    return np.concatenate([rot, shift[:, None]], axis=1)


def to_patch(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(N, 2|3)`` crop-pixel points (continuous) -> ``(N, 2)`` float32 patch points (continuous)."""
    p = np.asarray(points, np.float64)[:, :2]
    return ((p - 0.5) @ affine[:, :2].T + affine[:, 2] + 0.5).astype(np.float32)


def cut_patch(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The ``(size, size, C)`` patch of ``image (H, W, C)`` (bilinear, edges replicated)."""
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def lip_masks(patch_points: np.ndarray, size: int) -> np.ndarray:
    """``(2, size, size) float32`` inner-lip opening and outer-lip area (1 inside, anti-aliased edges)
    of landmarks already in patch coordinates (``(478, 2)``, :func:`to_patch`)."""
    shift = 4
    masks = np.zeros((2, size, size), np.uint8)
    for k, loop in enumerate(LIP_LOOPS):
        poly = np.round((patch_points[list(loop)] - 0.5) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(masks[k], [poly], 255, lineType=cv2.LINE_AA, shift=shift)
    return masks.astype(np.float32) / 255.0


def feather(config: MouthPatchConfig = MouthPatchConfig()) -> np.ndarray:
    """``(size, size) float32`` weight: 1 inside, falling to 0 at the inscribed circle's edge."""
    n = config.size
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    return np.clip((1.0 - r) / config.fade, 0.0, 1.0).astype(np.float32)


def paste_delta(image: np.ndarray, delta: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``image (H, W, 3) uint8`` plus ``delta (size, size, 3) float32`` (already feathered, pixel
    levels) mapped back from the patch -> a new ``(H, W, 3) uint8``."""
    h, w = image.shape[:2]
    back = cv2.warpAffine(delta, affine, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.clip(image.astype(np.float32) + back + 0.5, 0, 255).astype(np.uint8)
