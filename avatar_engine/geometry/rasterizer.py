"""Connectivity images in torch: colour-coded anti-aliased landmark lines on black.

The connectivity image draws every edge of :data:`avatar_engine.face.topology.EDGES` as a thin line in
its own colour (:data:`avatar_engine.face.topology.EDGE_COLORS`). It is the network's view of the target
pose, so it is computed every frame of the live engine: the implementation is pure torch, batched,
with no Python loop over edges or images, identical on CPU and GPU, and deterministic.

Coordinates follow the project's landmark convention (mediapipe's, and ``grid_sample`` with
``align_corners=False``): x, y are measured from the image's top-left *corner*, so pixel
``(row i, col j)`` is centred at ``x = j + 0.5, y = i + 0.5``. The result agrees with ``cv2.line`` on
the same points shifted by -0.5 (see :func:`avatar_engine.face.topology.draw_edges_cv2`).

Algorithm (sparse, cost proportional to the drawn line length, not to ``E x H x W``):
1. each segment is walked along its major axis (x if ``|dx| >= |dy|``, else y), one step per
   integer major coordinate between its endpoints extended by the line radius and clipped to the
   image; the steps of all segments form one flat list (``torch.repeat_interleave`` over the
   per-segment step counts, no padding);
2. at each step the ``K`` pixels across the line that can lie within the line radius
   ``R = w/2 + 0.5`` of the segment are candidates (``K = floor(2 sqrt(2) R) + 1``, 3 for ``w = 1``);
3. each candidate's exact Euclidean distance ``d`` to its segment gives its coverage
   ``clamp(w/2 + 0.5 - d, 0, 1)`` (anti-aliased; with ``antialias=False``: 1 where ``d <= w/2``);
4. compositing: every pixel takes the colour of the edge that covers it most, times that coverage
   (a ``scatter_reduce('amax')`` of an integer key ``coverage << 16 | edge``; ties go to the later
   edge, as when drawing in order). Colours never mix, so each lit pixel names exactly one edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avatar_engine.face import topology

__all__ = ["RasterConfig", "ConnectivityRasterizer", "rasterize_connectivity"]

_KEY_EDGE_BITS = 16  # low bits of the compositing key: edge index (E < 65536)
_KEY_COVERAGE_LEVELS = (1 << 15) - 1  # high bits: coverage quantised so the key fits in int32
_COORD_LIMIT = 1.0e6  # points are clamped to +-this many pixels (keeps int conversions finite)
_MIN_LENGTH = 1.0e-4  # px: shorter segments are drawn as a point (no division by ~0)


@dataclass(frozen=True)
class RasterConfig:
    """How lines are drawn.

    line_width: line width in pixels at ``reference_size`` (default 1 px at 256, as MetaPortrait).
    reference_size: the image side (``min(H, W)``) at which ``line_width`` applies.
    scale_with_size: if True the width scales linearly with the image side,
        ``width_for_size(S) = line_width * S / reference_size`` (2 px at 512), so that the
        connectivity image of a 512 crop looks like an upsampled 256 one; if False the width is
        ``line_width`` at every size.
    antialias: True: coverage falls off linearly over the last pixel (``clamp(w/2 + 0.5 - d, 0, 1)``);
        False: binary lines (pixels with ``d <= w/2``; widths below 1 px are drawn 1 px wide so
        lines stay connected).
    """

    line_width: float = 1.0
    reference_size: int = 256
    scale_with_size: bool = True
    antialias: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.line_width) and self.line_width > 0):
            raise ValueError(f"line_width must be a positive number, got {self.line_width}")
        if self.reference_size <= 0:
            raise ValueError(f"reference_size must be positive, got {self.reference_size}")

    def width_for_size(self, size: int | tuple[int, int]) -> float:
        """Line width in pixels for an image of side ``size`` (``S`` or ``(H, W)``, uses ``min(H, W)``)."""
        height, width = _hw(size)
        if not self.scale_with_size:
            return float(self.line_width)
        return float(self.line_width) * min(height, width) / self.reference_size


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return height, width


def _zeros(numel: int, device: torch.device) -> torch.Tensor:
    """A zero ``float32`` vector. On CPU it is zeroed by numpy (one thread): ``torch.zeros`` of an
    image-sized buffer opens an intra-op parallel region, which stalls for milliseconds when the
    (2-core) machine is busy with other threads."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(numel, dtype=np.float32))
    return torch.zeros(numel, dtype=torch.float32, device=device)


def _edge_tensors(device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``EDGES (E, 2) int64`` and ``EDGE_COLORS (E, 3) float32`` as tensors on ``device``."""
    edges = torch.as_tensor(topology.EDGES.copy(), dtype=torch.int64, device=device)
    colors = torch.as_tensor(topology.EDGE_COLORS.copy(), dtype=torch.float32, device=device)
    return edges, colors


PIXEL_CENTER = 0.5
"""Landmark coordinate of the centre of pixel 0 (corner-origin convention)."""


@torch.no_grad()
def _rasterize(points: torch.Tensor, edges: torch.Tensor, colors: torch.Tensor,
               height: int, width: int, line_width: float, antialias: bool,
               fixed_shape: bool = False) -> torch.Tensor:
    """Core rasterizer (see module docstring).

    points: ``(B, N, 2|3)`` float pixel coordinates (z ignored), N >= 478; edges: ``(E, 2) int64``
    indices into N; colors: ``(E, 3) float32`` in [0, 1]. Returns ``(B, 3, H, W) float32`` in [0, 1].
    fixed_shape: every segment gets ``max(H, W)`` steps (the unused ones draw nothing) and no check
    reads tensor values, so every intermediate shape depends on the input shapes only: the form that
    graph exporters (ONNX, ``torch.export``) can trace. Same image; non-finite points are the caller's
    to reject.
    """
    if points.dim() != 3 or points.shape[-1] not in (2, 3) or not points.is_floating_point():
        raise ValueError(f"points must be a float tensor (B, N, 2|3), got {points.dtype} "
                         f"{tuple(points.shape)}")
    if points.shape[1] < topology.NUM_LANDMARKS:
        raise ValueError(f"points must have at least {topology.NUM_LANDMARKS} landmarks, "
                         f"got {points.shape[1]}")
    device = points.device
    batch, num_edges, pixels = points.shape[0], edges.shape[0], height * width
    out = torch.zeros(batch * 3 * pixels, device=device) if fixed_shape else _zeros(batch * 3 * pixels, device)
    if batch == 0 or num_edges == 0:
        return out.view(batch, 3, height, width)
    pts = points[..., :2].to(torch.float32) - PIXEL_CENTER  # corner origin -> pixel-centre origin
    if not fixed_shape and not bool(torch.isfinite(pts).all()):
        raise ValueError("points contain NaN or infinite coordinates")

    if antialias:
        half = line_width / 2.0
        radius = half + 0.5  # coverage is > 0 only within this distance of the segment
    else:
        half = max(line_width, 1.0) / 2.0
        radius = half
    reach = math.sqrt(2.0) * radius  # minor-axis half-extent of the band at slope <= 1
    across = int(math.floor(2.0 * reach)) + 1  # K candidate pixels per step

    # --- per segment (S = B * E): everything in a (major, minor) frame, x-major or y-major ----
    pts = pts.clamp(-_COORD_LIMIT, _COORD_LIMIT)
    p0 = pts[:, edges[:, 0]].reshape(-1, 2)  # (S, 2) x, y
    p1 = pts[:, edges[:, 1]].reshape(-1, 2)
    d = p1 - p0
    x_major = d[:, 0].abs() >= d[:, 1].abs()  # (S,)
    swap = x_major.unsqueeze(1)
    q0 = torch.where(swap, p0, p0.flip(1))  # (S, 2) major, minor
    dq = torch.where(swap, d, d.flip(1))
    q1 = q0 + dq
    lo = torch.ceil(torch.minimum(q0[:, 0], q1[:, 0]) - radius).clamp(min=0.0)
    major_size = torch.where(x_major, float(width), float(height))
    minor_size = torch.where(x_major, float(height), float(width))
    hi = torch.minimum(torch.floor(torch.maximum(q0[:, 0], q1[:, 0]) + radius), major_size - 1.0)
    steps = (hi - lo + 1.0).clamp(min=0.0).long()  # (S,)
    # A segment shorter than _MIN_LENGTH px (|da| >= |db|) is drawn as the point p0.
    proper = dq[:, 0].abs() >= _MIN_LENGTH
    inv_da = torch.where(proper, 1.0 / torch.where(proper, dq[:, 0], 1.0), 0.0)
    inv_len2 = torch.where(proper, 1.0 / (dq * dq).sum(1).clamp(min=_MIN_LENGTH ** 2), 0.0)
    slots = torch.full_like(steps, max(height, width)) if fixed_shape else steps  # list entries per segment
    first = torch.cumsum(slots, 0) - slots
    fparams = torch.stack([q0[:, 0], q0[:, 1], dq[:, 0], dq[:, 1], inv_da, inv_len2,
                           minor_size - 1.0], 1)  # (S, 7)
    seg_ids = torch.arange(steps.shape[0], device=device)
    image_of_seg = seg_ids // num_edges
    stride_major = torch.where(x_major, 1, width)
    iparams = torch.stack([lo.long() - first, seg_ids - image_of_seg * num_edges, stride_major,
                           width + 1 - stride_major, image_of_seg * pixels], 1)  # (S, 5)

    # --- per step (M): one flat list over all segments, no padding ---------------------------
    seg = seg_ids.repeat_interleave(max(height, width)) if fixed_shape else torch.repeat_interleave(seg_ids, steps)
    a0, b0, da, db, inv_da, inv_len2, minor_max = fparams[seg].unbind(1)
    major_offset, edge, stride_a, stride_b, image_offset = iparams[seg].unbind(1)
    major_i = torch.arange(seg.shape[0], device=device) + major_offset  # integer major coordinate
    used = (major_i - lo.long()[seg] < steps[seg]).unsqueeze(1) if fixed_shape else True
    ra = major_i.to(torch.float32) - a0  # (M,)
    centre = b0 + (ra * inv_da).clamp(0.0, 1.0) * db  # minor centre of the line (capped ends)
    offsets = torch.arange(across, device=device, dtype=torch.float32)
    minor = torch.ceil(centre - reach).unsqueeze(1) + offsets  # (M, K)

    # --- per candidate (M, K): exact distance to the segment -> coverage ---------------------
    ra, da, db = ra.unsqueeze(1), da.unsqueeze(1), db.unsqueeze(1)
    rb = minor - b0.unsqueeze(1)
    u = ((ra * da + rb * db) * inv_len2.unsqueeze(1)).clamp(0.0, 1.0)
    dist = torch.hypot(ra - u * da, rb - u * db)
    if antialias:
        coverage = (radius - dist).clamp(0.0, 1.0)
    else:
        coverage = (dist <= half).to(torch.float32)
    inside = (minor >= 0) & (minor <= minor_max.unsqueeze(1)) & used
    level = (coverage * _KEY_COVERAGE_LEVELS + 0.5).to(torch.int32) * inside  # 0 = no ink
    key = torch.where(level > 0, (level << _KEY_EDGE_BITS) | edge.to(torch.int32).unsqueeze(1), 0)
    pixel = (major_i * stride_a + image_offset).unsqueeze(1) + minor.long().clamp(min=0) * \
        stride_b.unsqueeze(1)
    pixel = pixel.clamp(0, batch * pixels - 1)  # out-of-image candidates have key 0 anyway

    # --- composite: per pixel, the edge with the highest coverage wins -----------------------
    # Only the candidates' pixels of the key buffer are ever read: zero just those.
    flat_pixel, flat_key = pixel.reshape(-1), key.reshape(-1)
    if fixed_shape:
        best = torch.zeros(batch * pixels, dtype=torch.int32, device=device)
    else:
        best = torch.empty(batch * pixels, dtype=torch.int32, device=device)
        best.index_fill_(0, flat_pixel, 0)
    best.scatter_reduce_(0, flat_pixel, flat_key, reduce="amax")
    won = torch.where(best[pixel] == key, level, 0).to(torch.float32) / _KEY_COVERAGE_LEVELS
    values = won.unsqueeze(2) * colors[edge].unsqueeze(1)  # (M, K, 3)
    channel = torch.arange(3, device=device) * pixels
    index = (pixel + 2 * image_offset.unsqueeze(1)).unsqueeze(2) + channel  # (M, K, 3)
    out.scatter_reduce_(0, index.reshape(-1), values.reshape(-1), reduce="amax")
    return out.view(batch, 3, height, width)


class ConnectivityRasterizer(torch.nn.Module):
    """Connectivity images of a fixed size, with the edge table held as buffers.

    size: ``S`` or ``(H, W)``; config: :class:`RasterConfig`; device: where the buffers live
    (inputs must be on the same device); fixed_shape: the exportable form (see ``_rasterize``).
    forward(points ``(B, N, 2|3)`` float pixel coordinates of the ``H x W`` image, N >= 478,
    z ignored) -> ``(B, 3, H, W) float32`` in [0, 1]: colour-coded lines on black.
    """

    edges: torch.Tensor
    colors: torch.Tensor

    def __init__(self, size: int | tuple[int, int], config: RasterConfig | None = None,
                 device: torch.device | str | None = None, fixed_shape: bool = False) -> None:
        super().__init__()
        self.config = config if config is not None else RasterConfig()
        self.fixed_shape = fixed_shape
        self.height, self.width = _hw(size)
        self.line_width = self.config.width_for_size((self.height, self.width))
        edges, colors = _edge_tensors(device)
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("colors", colors, persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return _rasterize(points, self.edges, self.colors, self.height, self.width,
                          self.line_width, self.config.antialias, self.fixed_shape)

    def extra_repr(self) -> str:
        return (f"size=({self.height}, {self.width}), line_width={self.line_width:g}, "
                f"antialias={self.config.antialias}")


def rasterize_connectivity(points: torch.Tensor, size: int | tuple[int, int],
                           config: RasterConfig | None = None) -> torch.Tensor:
    """Functional form of :class:`ConnectivityRasterizer`.

    points: ``(B, N, 2|3)`` float pixel coordinates (N >= 478, z ignored); size: ``S`` or ``(H, W)``.
    Returns ``(B, 3, H, W) float32`` in [0, 1] on ``points.device``.
    """
    config = config if config is not None else RasterConfig()
    height, width = _hw(size)
    edges, colors = _edge_tensors(points.device)
    return _rasterize(points, edges, colors, height, width,
                      config.width_for_size((height, width)), config.antialias)
