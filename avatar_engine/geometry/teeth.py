"""Teeth in a mouth opening: which pixels are teeth, and how much teeth a driving frame shows.

The mouth layer (:mod:`.mouth`) draws teeth where the driver shows them, and the mouth bank
(:mod:`.mouth_bank`) prefers exemplars that show as much teeth as the driver. Landmarks ``(478, 2|3)``
in the image's pixels; see :mod:`.openings`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.geometry.openings import MOUTH, opening_frame

__all__ = ["TeethCue", "teeth_cue", "is_teeth"]


def is_teeth(rgb: np.ndarray) -> np.ndarray:
    """Bright, low-saturation pixels of ``rgb (..., 3) uint8`` -> ``(...) bool``."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3)), cv2.COLOR_RGB2HSV).reshape(rgb.shape)
    return (hsv[..., 1] < 90) & (hsv[..., 2] > 120)


@dataclass(frozen=True)
class TeethCue:
    """How much teeth the *driver's* open mouth shows: the share of the inner-lip opening's height covered
    by teeth under the upper lip (``upper``) and over the lower lip (``lower``), each in ``[0, 0.5]``."""

    upper: float
    lower: float


_CUE_ROWS, _CUE_COLUMNS, _CUE_SPAN, _CUE_ROW_SHARE = 20, 12, 0.2, 0.35
_CUE_MIN_GAP_PX = 3.0


def teeth_cue(image: np.ndarray, points: np.ndarray) -> TeethCue | None:
    """The :class:`TeethCue` of a driving frame.

    The opening between the inner lips is sampled on a grid (``|u| <= 0.2`` mouth widths from the middle,
    20 rows from lip to lip); a row counts as teeth when at least 35 % of its samples are bright and of
    low saturation; ``upper`` / ``lower`` are the shares of the rows counted in the upper / lower half.

    Args:
        image: ``(H, W, 3) uint8`` RGB driving frame.
        points: ``(478, 2|3)`` its landmarks, in its pixels.
    Returns:
        The cue, or None when the mouth opens less than 3 px (nothing to see).
    """
    frame = opening_frame(points, MOUTH)
    if not np.isfinite(frame.origin).all() or frame.gap() * frame.width < _CUE_MIN_GAP_PX:
        return None
    u = np.linspace(-_CUE_SPAN, _CUE_SPAN, _CUE_COLUMNS)
    t = (np.arange(_CUE_ROWS) + 0.5) / _CUE_ROWS
    up, lo = frame.upper(u), frame.lower(u)
    xy = frame.to_pixels(u[None, :], up[None, :] + t[:, None] * (lo - up)[None, :]).astype(np.float32) - 0.5
    sample = cv2.remap(np.ascontiguousarray(image), xy[..., 0], xy[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    rows = is_teeth(sample).mean(axis=1) >= _CUE_ROW_SHARE
    half = _CUE_ROWS // 2
    return TeethCue(float(rows[:half].sum()) / _CUE_ROWS, float(rows[half:].sum()) / _CUE_ROWS)
