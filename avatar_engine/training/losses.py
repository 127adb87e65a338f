"""Training losses: L1, SSIM, eye/mouth-weighted L1 (boxes from landmarks), LSGAN and feature matching.

Images are ``(B, 3, H, W)`` float in ``[-1, 1]`` unless stated otherwise.
"""
from __future__ import annotations

import torch

from avatar_engine.face import topology

__all__ = ["ssim", "region_boxes", "region_weight_map", "weighted_l1", "lsgan_d_loss", "lsgan_g_loss",
           "feature_matching"]

_REGIONS = tuple(torch.from_numpy(idx.copy()) for idx in (topology.LIPS_IDX, topology.LEFT_EYE_IDX, topology.RIGHT_EYE_IDX))


def _gaussian(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Gaussian window, per channel, valid region) of two image batches in ``[-1, 1]`` -> scalar in ``[-1, 1]``.

    The separable blur is written as weighted sums of shifted slices rather than a depthwise
    convolution: the same numbers, and under ``torch.compile`` one fused loop (the depthwise 11-tap
    convolution ran at under 2 GFLOP/s on the CPU and was the largest single cost of the training step).
    """
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
    g = _gaussian(window, sigma, x.device, x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        w = t.shape[-1] - window + 1
        t = sum(g[k] * t[..., k:k + w] for k in range(window))
        h = t.shape[-2] - window + 1
        return sum(g[k] * t[..., k:k + h, :] for k in range(window))

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def region_boxes(points: torch.Tensor, margin: float = 0.25) -> torch.Tensor:
    """Mouth and eye boxes from landmarks: ``(B, 478, 2|3)`` px -> ``(B, 3, 4)`` ``(x0, y0, x1, y1)`` px.

    Each box (mouth, left eye, right eye) is its landmarks' bounding box grown by ``margin`` of its
    larger side on every side.
    """
    boxes = []
    for idx in _REGIONS:
        p = points[:, idx.to(points.device), :2]
        lo, hi = p.amin(dim=1), p.amax(dim=1)
        pad = (hi - lo).amax(dim=1, keepdim=True) * margin
        boxes.append(torch.cat([lo - pad, hi + pad], dim=1))
    return torch.stack(boxes, dim=1)


def region_weight_map(points: torch.Tensor, size: int, margin: float = 0.25) -> torch.Tensor:
    """``(B, 1, S, S)`` float mask, 1 inside the mouth / eye boxes (see :func:`region_boxes`), else 0."""
    boxes = region_boxes(points, margin)  # (B, 3, 4)
    c = torch.arange(size, device=points.device, dtype=points.dtype) + 0.5
    inx = (c.view(1, 1, 1, -1) >= boxes[..., 0, None, None]) & (c.view(1, 1, 1, -1) <= boxes[..., 2, None, None])
    iny = (c.view(1, 1, -1, 1) >= boxes[..., 1, None, None]) & (c.view(1, 1, -1, 1) <= boxes[..., 3, None, None])
    return (inx & iny).any(dim=1, keepdim=True).to(points.dtype)


def weighted_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 inside ``mask (B, 1, H, W)``, normalised by the mask area (0 when the mask is empty)."""
    diff = (a.float() - b.float()).abs() * mask
    return diff.sum() / (mask.sum() * a.shape[1]).clamp_min(1.0)


def lsgan_d_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss over scales: ``mean((D(real) - 1)^2) + mean(D(fake)^2)``."""
    return sum(((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean() for r, f in zip(real_logits, fake_logits))


def lsgan_g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss over scales: ``mean((D(fake) - 1)^2)``."""
    return sum(((f.float() - 1) ** 2).mean() for f in fake_logits)


def feature_matching(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between the discriminator features of real (detached) and fake images, over scales and layers."""
    total, n = 0.0, 0
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            total = total + (r.detach().float() - f.float()).abs().mean()
            n += 1
    return total / max(n, 1)
