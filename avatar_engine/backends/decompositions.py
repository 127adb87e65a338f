"""Rewrites applied to a graph before its ONNX export: same arithmetic, forms the runtimes run fast.

* ``hypot(a, b)`` -> ``sqrt(a * a + b * b)`` (ONNX has no Hypot; the rasterizer's distances use it).
* Bilinear and bicubic upsampling by an integer factor ``k`` (``align_corners=False``) -> one
  depthwise convolution giving the ``k * k`` output phases of every channel, then a pixel shuffle.
  Each phase's output is a fixed weighted sum of the 2 (bilinear) or 4 (bicubic, a = -0.75) nearest
  input pixels along each axis, with the border replicated, exactly as PyTorch samples; the convolution
  computes that sum. OpenVINO's Interpolate took 74 of the SR step's 170 ms on one core; this takes
  well under one. Other resizes keep PyTorch's own decomposition.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["EXPORT_DECOMPOSITIONS", "upsample_as_conv", "phase_taps"]

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _cubic(x: float) -> float:
    x = abs(x)
    if x <= 1.0:
        return ((_CUBIC_A + 2.0) * x - (_CUBIC_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((_CUBIC_A * x - 5.0 * _CUBIC_A) * x + 8.0 * _CUBIC_A) * x - 4.0 * _CUBIC_A
    return 0.0


def phase_taps(k: int, mode: str) -> torch.Tensor:
    """``(k, T)`` float64: output phase ``p``'s weights over input offsets ``-r .. r`` (``T = 2r + 1``,
    ``r`` = 1 bilinear, 2 bicubic) of upsampling by ``k`` with ``align_corners=False``."""
    r = 1 if mode == "bilinear" else 2
    taps = torch.zeros(k, 2 * r + 1, dtype=torch.float64)
    for p in range(k):
        pos = (p + 0.5) / k - 0.5  # source position of phase p, relative to input pixel i
        base = math.floor(pos)
        t = pos - base
        if mode == "bilinear":
            taps[p, base + r] += 1.0 - t
            taps[p, base + 1 + r] += t
        else:
            for j, w in zip(range(base - 1, base + 3), (_cubic(1 + t), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
                taps[p, j + r] += w
    return taps


def upsample_as_conv(x: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, kH, kW)``: ``F.interpolate(x, scale_factor=k, mode=mode,
    align_corners=False)`` computed as a depthwise convolution and a pixel shuffle (see module doc)."""
    c = x.shape[1]
    taps = phase_taps(k, mode)
    r = (taps.shape[1] - 1) // 2
    kernel = (taps[:, None, :, None] * taps[None, :, None, :]).reshape(k * k, 1, 2 * r + 1, 2 * r + 1)
    weight = kernel.repeat(c, 1, 1, 1).to(x.dtype)  # channel c's phases at c*k*k + py*k + px
    out = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), weight, groups=c)
    return F.pixel_shuffle(out, k)


def _integer_scale(x: torch.Tensor, output_size: Sequence[int] | None,
                   scale_factors: Sequence[float] | None) -> int | None:
    h, w = x.shape[-2:]
    if output_size is not None:
        oh, ow = output_size
    elif scale_factors is not None:
        oh, ow = math.floor(h * scale_factors[0]), math.floor(w * scale_factors[1])
    else:
        return None
    if oh % h or ow % w or oh // h != ow // w or oh // h < 2:
        return None
    return oh // h


def _upsample(mode: str, fallback: Callable) -> Callable:
    def decomposition(x, output_size, align_corners, scale_factors):
        k = _integer_scale(x, output_size, scale_factors)
        if k is None or align_corners or x.dim() != 4:
            return fallback(x, output_size, align_corners, scale_factors)
        return upsample_as_conv(x, k, mode)
    return decomposition


def _table() -> dict:
    from torch._decomp import decomposition_table

    aten = torch.ops.aten
    return {
        aten.hypot.default: lambda a, b: torch.sqrt(a * a + b * b),
        aten.upsample_bilinear2d.vec: _upsample("bilinear", decomposition_table[aten.upsample_bilinear2d.vec]),
        aten.upsample_bicubic2d.vec: _upsample("bicubic", decomposition_table[aten.upsample_bicubic2d.vec]),
    }


EXPORT_DECOMPOSITIONS = _table()
"""``torch.export`` decomposition table used by :func:`avatar_engine.backends.onnx_runners.export_onnx`."""
