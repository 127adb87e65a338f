"""Dense optical flow between two frames (OpenCV Farneback): temporal losses and temporal metrics."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FlowConfig", "optical_flow"]


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
