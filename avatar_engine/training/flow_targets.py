"""Flow supervision of the warping network: where the mesh warp should have sampled, from optical flow.

The photometric losses alone barely move the warping network away from the mesh warp (its residual
flow gets gradients only through ``grid_sample``'s one-pixel footprint). Training pairs carry the
answer: the driving frame is known, so dense optical flow (OpenCV Farneback, :mod:`avatar_engine.geometry.flow`)
from the driving frame to the *mesh-warped* source says, for every output pixel, how far the mesh warp
is off. :func:`residual_flow_targets` turns that into the residual the network should predict, at
its own resolution, with a weight that is zero where the flow fails the forward-backward test
(occlusions, flow failures) or where even the flow-compensated image does not match the driving
frame (new content: the inside of a mouth that opens), and scaled by the image structure (flat
regions give Farneback nothing to measure).

For one pair (crop size S, network resolution R)::

    mesh  = grid_sample(source, mesh_grid)                      the mesh warp's output
    bwd, keep = consistent_flow(driving, mesh)                  driving(p) ~ mesh(p + bwd(p)), at 2R
    grid* = mesh_grid sampled at p + bwd(p)                     where the source should be sampled
    residual* = (grid* - mesh_grid) * S / 2                     crop pixels, as WarpNet predicts it
    target = area mean of residual* over the kept pixels, at R; weight = kept share, at R

The flow runs at ``2R`` (both images area-downscaled; 128 for the lite model's R = 64): the target
lives at R, and Farneback at 2R costs a quarter of the full-size flow (about 10 ms a pair on one core).

Built in the data-loader workers (:class:`~avatar_engine.training.batches.PairBatches`,
``BatchConfig.flow_targets``); scored by ``LossConfig.flow`` in :mod:`avatar_engine.training.step`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avatar_engine.geometry.flow import FlowConfig, consistent_flow
from avatar_engine.geometry.mesh_warp import identity_grid

__all__ = ["residual_flow_targets", "flow_loss"]


def residual_flow_targets(source: torch.Tensor, driving: torch.Tensor, mesh_grid: torch.Tensor, size: int,
                          config: FlowConfig | None = None, max_error: float = 0.08, edge_levels: float = 24.0,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-flow targets of a batch of pairs (see the module docstring).

    Args:
        source, driving: ``(B, 3, S, S) uint8`` crops.
        mesh_grid: ``(B, S, S, 2)`` the mesh warp's grid (normalised, align_corners=False).
        size: the network resolution R (S divisible by R).
        config: Farneback and consistency settings.
        max_error: a pixel also needs the flow-compensated mesh image within this mean absolute
            difference (in [0, 1]) of the driving frame.
        edge_levels: structure weight: the driving frame's grey-level gradient magnitude (Sobel, at 2R)
            over this many levels of 255, clipped to 1 (flat regions give no flow supervision).
    Returns:
        ``(target (B, 2, R, R) float32 crop px, weight (B, 1, R, R) float32 in [0, 1])``.
    """
    b, _, s, _ = source.shape
    if s % size:
        raise ValueError(f"crop size {s} is not a multiple of the flow size {size}")
    w = min(s, 2 * size)
    with torch.no_grad():
        mesh = F.grid_sample(source.float(), mesh_grid.float(), mode="bilinear", padding_mode="border",
                             align_corners=False)
        mesh_np = F.avg_pool2d(mesh, s // w).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        drv_np = F.avg_pool2d(driving.float(), s // w).round().byte().permute(0, 2, 3, 1).numpy()
        bwd, keep = zip(*(consistent_flow(np.ascontiguousarray(d), np.ascontiguousarray(m), config)
                          for d, m in zip(drv_np, mesh_np)))
        bwd_t = torch.from_numpy(np.stack(bwd))  # (B, w, w, 2) px at w
        keep_t = torch.from_numpy(np.stack(keep)).float()[:, None]  # (B, 1, w, w)
        where = identity_grid(w, w) + bwd_t * (2.0 / w)  # (B, w, w, 2) where the flow points
        # the flow must also explain the pixels: new content (teeth, a tongue, hair coming into view)
        # can pass the consistency test with a smooth, wrong flow
        matched = F.grid_sample(torch.from_numpy(mesh_np).permute(0, 3, 1, 2).float(), where, mode="bilinear",
                                padding_mode="border", align_corners=False)
        drv_small = torch.from_numpy(drv_np).permute(0, 3, 1, 2).float()
        keep_t = keep_t * ((matched - drv_small).abs().mean(1, keepdim=True) < max_error * 255).float()
        # and structure: in flat regions (skin, a plain wall) Farneback returns a smooth guess that passes
        # both tests, and there a wrong flow costs nothing anyway
        keep_t = keep_t * _structure(drv_np, edge_levels)
        planes = F.avg_pool2d(mesh_grid.float().permute(0, 3, 1, 2), s // w)  # (B, 2, w, w)
        target_grid = F.grid_sample(planes, where, mode="bilinear", padding_mode="border", align_corners=False)
        residual = (target_grid - planes) * (s / 2.0)  # (B, 2, w, w) crop px
        k = w // size
        weight = F.avg_pool2d(keep_t, k)
        target = F.avg_pool2d(residual * keep_t, k) / weight.clamp_min(1e-6)
    return target.contiguous(), weight.contiguous()


def _structure(images: np.ndarray, levels: float) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` -> ``(B, 1, H, W)`` float in [0, 1]: blurred Sobel gradient magnitude / ``levels``."""
    out = []
    for img in images:
        g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
        mag = np.sqrt(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) ** 2) / 8.0
        out.append(np.clip(cv2.GaussianBlur(mag, (5, 5), 1.0) / levels, 0.0, 1.0))
    return torch.from_numpy(np.stack(out))[:, None]


def flow_loss(residual: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean absolute error in crop pixels of ``residual`` against ``target`` (``(B, 2, R, R)``),
    weights ``(B, 1, R, R)``; 0 when every weight is 0."""
    diff = (residual.float() - target).abs() * weight
    return diff.sum() / (weight.sum() * 2).clamp_min(1.0)
