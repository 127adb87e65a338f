"""Dense optical flow between two frames (OpenCV Farneback): temporal losses and temporal metrics."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FlowConfig", "optical_flow", "consistent_flow"]


@dataclass(frozen=True)
class FlowConfig:
    """Optical flow and occlusion test of :func:`warp_error`.

    Attributes:
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma: OpenCV Farneback parameters.
        consistency_alpha, consistency_beta: a pixel is kept when
            ``|b + f(x + b)|^2 < alpha (|b|^2 + |f(x + b)|^2) + beta`` (Sundaram et al. 2010), with
            ``b`` the backward flow ``t -> t-1`` at ``x`` and ``f`` the forward flow ``t-1 -> t``.
    """

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    consistency_alpha: float = 0.01
    consistency_beta: float = 0.5


def optical_flow(prev_rgb: np.ndarray, next_rgb: np.ndarray, config: FlowConfig | None = None) -> np.ndarray:
    """Dense flow ``(H, W, 2) float32`` (dx, dy pixels) from ``prev_rgb`` to ``next_rgb`` (Farneback)."""
    c = config or FlowConfig()
    g0 = cv2.cvtColor(prev_rgb, cv2.COLOR_RGB2GRAY)
    g1 = cv2.cvtColor(next_rgb, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(g0, g1, None, c.pyr_scale, c.levels, c.winsize, c.iterations,
                                        c.poly_n, c.poly_sigma, 0)


def consistent_flow(cur_rgb: np.ndarray, prev_rgb: np.ndarray, config: FlowConfig | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow ``cur -> prev`` and where it can be trusted.

    ``cur_rgb``, ``prev_rgb``: ``(H, W, 3) uint8``. Returns ``(bwd (H, W, 2) float32, keep (H, W) bool)``:
    ``cur(x) ~ prev(x + bwd(x))``; ``keep`` holds the pixels that pass the forward-backward
    consistency test of :class:`FlowConfig` and sample inside ``prev`` (occlusions and flow failures
    fail it).
    """
    c = config or FlowConfig()
    h, w = cur_rgb.shape[:2]
    fwd = optical_flow(prev_rgb, cur_rgb, c)
    bwd = optical_flow(cur_rgb, prev_rgb, c)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = gx + bwd[..., 0], gy + bwd[..., 1]
    fwd_at = cv2.remap(fwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    loop = ((bwd + fwd_at) ** 2).sum(-1)
    bound = c.consistency_alpha * ((bwd ** 2).sum(-1) + (fwd_at ** 2).sum(-1)) + c.consistency_beta
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return bwd, (loop < bound) & inside
