"""Dense-landmark (mesh) warp: a piecewise-affine backward flow from target landmarks to the source crop.

This is the core of the ``mesh`` renderer and the geometric prior of the learned warping network.

Geometry
    The source crop is ``S x S`` pixels. Points are in crop pixels with the mediapipe convention:
    pixel ``(i, j)`` (row, column) covers ``[j, j + 1) x [i, i + 1)``, its centre is ``(j + 0.5, i + 0.5)``
    and the crop spans ``[0, S]`` on both axes.

Mesh (fixed topology, built once per source by :class:`MeshWarp`)
    * the face surface: mediapipe's dense tessellation of the 468 mesh points (:data:`topology.TRIANGLES`);
    * the openings: the mouth (inner lip loop) and both eyes (eyelid loops) filled by strips between their
      upper and lower contours (a closed mouth gives degenerate strips: an opening mouth then stretches the
      lip line over the gap; the mesh warp cannot invent teeth);
    * the irises: a fan of 4 triangles per eye over the iris centre and its 4 contour points pushed out
      by ``iris_scale`` (so the iris disc is covered and follows the gaze);
    * the exterior: rings around the face oval (the oval scaled about its centroid, clipped radially to
      stay inside the crop) and points along the crop border (the 4 corners included), joined oval ->
      ring -> ... -> border by angular "zipper" strips, so the whole crop is covered.
    Triangles follow the surface instead of the source's 2-D layout, so big head turns fold the mesh
    consistently. The exterior bands never fold (``WarpConfig.fold_free``): when a face moved or turned
    towards the crop border would push a ring over the next one or over the border, the rings' motion
    is cut or rebuilt between the face oval and the border (hair or background sampled mirrored would
    smear). Where the target mesh overlaps itself, layers decide (low to high): exterior bands
    (outermost lowest), opening fills, irises, face surface; among surface triangles the one nearest the
    camera wins (smallest mean target z; without target z a fixed order from the source z, or the index).

Rasterisation
    Every target triangle is scan-converted with the top-left fill rule (a pixel centre on an edge shared
    by two triangles belongs to exactly one of them: no gaps, no double cover), the owner of each pixel is
    the highest-priority triangle covering it, and the pixel samples the source at the same barycentric
    coordinates in the source triangle (clamped to its bounding box, so degenerate triangles stay finite).

Normalised grids
    :meth:`MeshWarp.grid` returns a ``torch.nn.functional.grid_sample`` grid with ``align_corners=False``:
    ``grid[b, i, j] = (u, v)`` with ``u = 2 * x / S - 1``, ``v = 2 * y / S - 1`` where ``(x, y)`` is the
    source-crop pixel position (same convention as above) sampled for output pixel ``(i, j)``.
    :func:`grid_to_flow` / :func:`flow_to_grid` convert to and from a *pixel* displacement field
    ``flow (B, 2, H, W)`` (channel 0 = x, 1 = y, in source-crop pixels): output pixel centre ``p``
    samples the source at ``p + flow(p)``. The neural warp predicts its residual flow in these pixel units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from avatar_engine.face import topology

N_FACE_POINTS = topology.NUM_LANDMARKS

# Points that move rigidly with the skull (upper face oval, nose bridge, eye corners): the head motion
# that the exterior points follow is fitted on them only, so an opening jaw does not drag the hair.
HEAD_FIT_POINTS = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 93, 234, 127, 162, 21, 54, 103, 67, 109,
                   168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263)

# Openings filled by strips: (loop, corner_a, corner_b); the loop is split at the corners into two chains.
_OPENINGS = ((topology.INNER_LIPS_LOOP, 78, 308), (topology.RIGHT_EYE_LOOP, 33, 133),
             (topology.LEFT_EYE_LOOP, 263, 362))
# Iris centres and their 4 contour points in cyclic order.
_IRISES = tuple((centre, tuple(a for a, _ in next(g for g in topology.EDGE_GROUPS if g.name == name).edges))
                for centre, name in ((topology.RIGHT_IRIS_CENTER, "right_iris"),
                                     (topology.LEFT_IRIS_CENTER, "left_iris")))

TensorLike = Union[torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class WarpConfig:
    """Tunables of the mesh warp.

    ring_scales: face-oval scale factors (about the oval centroid) of the exterior rings, inner first,
        increasing, each > 1. Ring points that would leave the crop are pulled in radially.
    ring_weights: fraction of the head motion (similarity / affine fit) each ring follows, in [0, 1]:
        1 = moves rigidly with the head. The crop border points never move.
    ring_local_weights: fraction of the non-rigid motion of the ring point's face-oval point (e.g. the jaw
        dropping) each ring also follows, in [0, 1].
    ring_stride: keep every ``ring_stride``-th face-oval point for the rings (>= 1).
    ring_margin: ring points stay at least ``ring_margin * S`` inside the crop border, in [0, 0.5).
    border_points_per_side: points per crop side (corners included once), >= 1.
    iris_scale: the iris fan reaches ``iris_scale`` times the iris contour points' distance from the
        centre (sqrt(2) ~ 1.41 covers the whole iris disc), > 0.
    head_motion: ``"similarity"`` or ``"affine"`` least-squares fit of the head motion on HEAD_FIT_POINTS.
    flow_size: compute the flow at this resolution and upsample it bilinearly to S (None: at S).
    max_outside: target coordinates are clamped to ``[-max_outside * S, (1 + max_outside) * S]``.
    use_depth: resolve folds with the target z when the target points have 3 columns.
    fold_free: keep the exterior bands from folding: when the rings' target positions would turn an
        exterior triangle over (a face moved or turned far towards the crop border), each ring's
        displacement is cut to the largest of ``fold_steps`` fractions that leaves none turned over, the
        inner ring preferred; if every cut folds, the inner ring(s) are rebuilt from the target face oval as
        the source's were (between the oval and the crop border), the others cut, with the crop border
        points fixed or slid along the border with the head. Motions that fold nothing are unchanged.
    fold_steps: the fractions tried, decreasing from 1 to 0.
    """

    ring_scales: Tuple[float, ...] = (1.25, 1.7)
    ring_weights: Tuple[float, ...] = (1.0, 0.5)
    ring_local_weights: Tuple[float, ...] = (0.6, 0.2)
    ring_stride: int = 2
    ring_margin: float = 0.02
    border_points_per_side: int = 8
    iris_scale: float = 1.45
    head_motion: str = "similarity"
    flow_size: Optional[int] = None
    max_outside: float = 1.0
    use_depth: bool = True
    fold_free: bool = True
    fold_steps: Tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)

    def __post_init__(self) -> None:
        n = len(self.ring_scales)
        if len(self.ring_weights) != n or len(self.ring_local_weights) != n:
            raise ValueError("ring_scales, ring_weights and ring_local_weights must have the same length")
        if any(s <= 1.0 for s in self.ring_scales) or list(self.ring_scales) != sorted(set(self.ring_scales)):
            raise ValueError("ring_scales must be increasing and all > 1")
        if any(not 0.0 <= w <= 1.0 for w in self.ring_weights + self.ring_local_weights):
            raise ValueError("ring weights must be in [0, 1]")
        if self.ring_stride < 1 or self.border_points_per_side < 1:
            raise ValueError("ring_stride and border_points_per_side must be >= 1")
        if not 0.0 <= self.ring_margin < 0.5:
            raise ValueError("ring_margin must be in [0, 0.5)")
        if self.iris_scale <= 0:
            raise ValueError("iris_scale must be > 0")
        if self.head_motion not in ("similarity", "affine"):
            raise ValueError(f"head_motion must be 'similarity' or 'affine', not {self.head_motion!r}")
        if self.flow_size is not None and self.flow_size < 2:
            raise ValueError("flow_size must be >= 2 or None")
        if self.max_outside < 0:
            raise ValueError("max_outside must be >= 0")
        if not self.fold_steps or self.fold_steps[0] != 1.0 or list(self.fold_steps) != sorted(self.fold_steps, reverse=True):
            raise ValueError("fold_steps must decrease from 1.0")


def pixels_to_grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixel coordinates ``(..., 2)`` -> grid_sample normalised coordinates (align_corners=False)."""
    return points * (2.0 / size) - 1.0


def grid_to_pixels(grid: torch.Tensor, size: int) -> torch.Tensor:
    """grid_sample normalised coordinates ``(..., 2)`` (align_corners=False) -> crop pixel coordinates."""
    return (grid + 1.0) * (size / 2.0)


def identity_grid(height: int, width: int, device: Union[str, torch.device] = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The grid that samples every pixel at its own centre: ``(1, H, W, 2)``, align_corners=False."""
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * (2.0 / width) - 1.0
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * (2.0 / height) - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


def grid_to_flow(grid: torch.Tensor) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` (normalised) -> backward flow ``(B, 2, H, W)`` in source pixels."""
    _, h, w, _ = grid.shape
    ident = identity_grid(h, w, grid.device, grid.dtype)
    scale = torch.tensor([w / 2.0, h / 2.0], device=grid.device, dtype=grid.dtype)
    return ((grid - ident) * scale).permute(0, 3, 1, 2)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Backward flow ``(B, 2, H, W)`` in source pixels -> sampling grid ``(B, H, W, 2)`` (normalised)."""
    _, _, h, w = flow.shape
    ident = identity_grid(h, w, flow.device, flow.dtype)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=flow.device, dtype=flow.dtype)
    return ident + flow.permute(0, 2, 3, 1) * scale


def warp_image(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``image (B, C, H, W)`` (any float range) at ``grid (B, H', W', 2)`` -> ``(B, C, H', W')``.

    Bilinear, border padding, align_corners=False (the convention of every grid in this module).
    """
    if grid.dtype != image.dtype:
        grid = grid.to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _signed_area(tri: torch.Tensor) -> torch.Tensor:
    """Signed areas of triangles ``(..., 3, 2)`` -> ``(...)``: the sign is the orientation of the vertex order."""
    e1 = tri[..., 1, :] - tri[..., 0, :]
    e2 = tri[..., 2, :] - tri[..., 0, :]
    return 0.5 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0])


def planes_to_grid(planes: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 2, R, R)`` grid planes (:meth:`MeshWarp.planes`) -> ``(B, S, S, 2)`` grid at ``size`` S:
    bilinear upsampling when R < S, as a channels-last view of planar memory (see :meth:`MeshWarp.grid`)."""
    if planes.shape[-1] != size:
        planes = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False)
    return planes.permute(0, 2, 3, 1)


def _split_loop(loop: Sequence[int], a: int, b: int) -> Tuple[List[int], List[int]]:
    """A closed loop through ``a`` and ``b`` -> its two chains, each running from ``a`` to ``b``."""
    loop = [int(v) for v in loop]
    i = loop.index(a)
    loop = loop[i:] + loop[:i]
    j = loop.index(b)
    return loop[: j + 1], [a] + loop[:j:-1] + [b]


def _strip(first: Sequence[int], second: Sequence[int], first_pos: np.ndarray,
           second_pos: np.ndarray) -> List[Tuple[int, int, int]]:
    """Triangulate the band between two chains by merging them along increasing positions.

    ``first_pos`` / ``second_pos`` are non-decreasing parameters of the chain vertices (arc fraction or
    unwrapped angle); triangles that repeat a vertex (chains sharing an end) are dropped.
    """
    i = j = 0
    tris = []
    n1, n2 = len(first) - 1, len(second) - 1
    while i < n1 or j < n2:
        if j == n2 or (i < n1 and first_pos[i + 1] <= second_pos[j + 1]):
            tri = (first[i], second[j], first[i + 1])
            i += 1
        else:
            tri = (first[i], second[j], second[j + 1])
            j += 1
        if len(set(tri)) == 3:
            tris.append(tri)
    return tris


def _angular_loop(ids: Sequence[int], xy: np.ndarray, centre: np.ndarray) -> Tuple[List[int], np.ndarray]:
    """A closed loop around ``centre`` -> (ids, unwrapped angles) turning positively, starting at the
    smallest wrapped angle, closed (first vertex repeated at the end with its angle + 2 pi)."""
    ids = [int(v) for v in ids]
    d = xy - centre
    ang = np.arctan2(d[:, 1], d[:, 0])
    if np.sum(np.angle(np.exp(1j * np.diff(np.append(ang, ang[0]))))) < 0:
        ids, ang = ids[::-1], ang[::-1]
    k = int(np.argmin(ang))
    ids, ang = ids[k:] + ids[:k], np.concatenate([ang[k:], ang[:k]])
    unwrapped = ang[0] + np.concatenate([[0.0], np.cumsum(np.angle(np.exp(1j * np.diff(ang))))])
    return ids + ids[:1], np.append(unwrapped, ang[0] + 2 * np.pi)


def _iris_fan_map(scale: float) -> np.ndarray:
    """``(8, 478)`` linear map landmarks -> iris-fan points ``centre + scale * (contour - centre)``."""
    iris_map = np.zeros((4 * len(_IRISES), N_FACE_POINTS))
    for e, (centre, contour) in enumerate(_IRISES):
        for k, idx in enumerate(contour):
            iris_map[4 * e + k, idx] += scale
            iris_map[4 * e + k, centre] += 1.0 - scale
    return iris_map


def _ring_points(face: np.ndarray, config: WarpConfig, size: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exterior rings: the face oval (every ``ring_stride``-th point) scaled about its centroid.

    A ring point that would come closer than ``ring_margin * S`` to the crop border is pulled in along its
    ray so that the rings stay ordered between the oval and the border. Returns ``(ring_xy (n_rings * n, 2),
    ring_oval (n,) landmark of each ray, centre (2,))``.
    """
    oval = [int(v) for v in topology.FACE_OVAL_LOOP]
    centre = face[oval].mean(axis=0)
    ring_oval = np.asarray(oval[:: config.ring_stride])
    d = face[ring_oval] - centre
    lo, hi = config.ring_margin * size, size - config.ring_margin * size
    with np.errstate(divide="ignore", invalid="ignore"):  # t_box: ray parameter where the margin box is hit
        t_box = np.where(d > 0, (hi - centre) / d, np.where(d < 0, (lo - centre) / d, np.inf)).min(axis=1)
    n_rings = len(config.ring_scales)
    ring_t = np.stack([np.minimum(scale, 1.0 + np.maximum(t_box - 1.0, 0.0) * (k + 1) / (n_rings + 1))
                       for k, scale in enumerate(config.ring_scales)])  # (n_rings, n)
    ring_t = np.maximum(ring_t, 1.0 + 1e-3 * np.arange(1, n_rings + 1)[:, None])
    return (centre + ring_t[..., None] * d).reshape(-1, 2), ring_oval, centre


def _border_points(n: int, size: float) -> np.ndarray:
    """``(4n, 2)`` points along the crop border, corners included, in positive angular order."""
    t = np.arange(n) * (size / n)
    zeros, full = np.zeros(n), np.full(n, size)
    return np.concatenate([np.stack([t, zeros], 1), np.stack([full, t], 1), np.stack([size - t, full], 1),
                           np.stack([zeros, size - t], 1)])


class MeshWarp:
    """Piecewise-affine warp of one source crop, driven by target landmarks.

    source_points: ``(478, 2|3)`` source landmarks in source-crop pixels (z, if given, in the same units).
    size: crop size S (e.g. 256 or 512). Everything that depends only on the source (mesh, exterior points,
    per-triangle source terms, head-fit matrices) is built here, once.

    Vertices: the 478 landmarks, 8 iris-fan points, then the K exterior points (rings, then border);
    ``triangles (T, 3)`` index them, ``is_face_triangle (T,)`` marks surface, opening and iris triangles.
    """

    def __init__(self, source_points: np.ndarray, size: int, config: WarpConfig = WarpConfig(),
                 device: Union[str, torch.device] = "cpu") -> None:
        src = np.asarray(source_points, dtype=np.float64)
        if src.ndim != 2 or src.shape[0] != N_FACE_POINTS or src.shape[1] not in (2, 3):
            raise ValueError(f"source_points must be ({N_FACE_POINTS}, 2|3), got {src.shape}")
        if not np.isfinite(src).all():
            raise ValueError("source_points contain non-finite values")
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.config = config
        self.size = int(size)
        self.device = torch.device(device)
        self.flow_size = int(config.flow_size) if config.flow_size is not None else self.size
        face = src[:, :2]
        s = float(size)
        dev = self.device

        iris_map = _iris_fan_map(config.iris_scale)
        ring_xy, ring_oval, centre = _ring_points(face, config, s)
        border = _border_points(config.border_points_per_side, s)
        self.num_exterior = len(ring_xy) + len(border)
        vertices = np.concatenate([face, iris_map @ face, ring_xy, border])
        tri, prio, n_exterior_tris, n_surface = self._build_mesh(vertices, len(ring_oval), centre,
                                                                 src[:, 2] if src.shape[1] == 3 else None)
        self.num_triangles = len(tri)
        self.triangles = torch.as_tensor(tri, device=dev)
        self.is_face_triangle = torch.arange(len(tri), device=dev) >= n_exterior_tris
        self._surface = torch.arange(len(tri) - n_surface, len(tri), device=dev)
        self._exterior_tris = self.triangles[:n_exterior_tris]
        self._exterior_sign = torch.sign(_signed_area(torch.as_tensor(vertices, dtype=torch.float32,
                                                                     device=dev)[self._exterior_tris]))
        self._fold_grid = self._fold_candidates(len(config.ring_scales), len(ring_oval), len(border))
        self._fixed_prio = torch.as_tensor(prio, device=dev)
        edges = np.stack([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], axis=1)  # (T, 3, 2)
        edges.sort(axis=2)  # canonical orientation: shared edges are evaluated bit-identically
        self._edge_a = torch.as_tensor(edges[:, :, 0], device=dev)
        self._edge_b = torch.as_tensor(edges[:, :, 1], device=dev)

        # Source triangles in normalised coordinates: first vertex, edge matrix [s1 - s0, s2 - s0] (columns)
        # and bounding box (the per-pixel result is clamped to it, so slivers cannot sample far away).
        st = torch.as_tensor(vertices * (2.0 / s) - 1.0, dtype=torch.float64, device=dev)[self.triangles]
        self._src_s0 = st[:, 0]  # (T, 2)
        self._src_edges = torch.stack([st[:, 1] - st[:, 0], st[:, 2] - st[:, 0]], dim=2)  # (T, 2, 2)
        self._src_box = torch.cat([st.amin(dim=1), st.amax(dim=1)], dim=1)  # (T, 4)
        self.source_vertices = torch.as_tensor(vertices, dtype=torch.float32, device=dev)  # (V, 2) px

        # Head fit (source side precomputed).
        fit = face[list(HEAD_FIT_POINTS)]
        self._fit_idx = torch.as_tensor(HEAD_FIT_POINTS, device=dev)
        self._fit_mean = torch.as_tensor(fit.mean(0), dtype=torch.float32, device=dev)
        centred = fit - fit.mean(0)
        self._fit_centred = torch.as_tensor(centred, dtype=torch.float32, device=dev)
        self._fit_denom = float(max((centred ** 2).sum(), 1e-12))
        self._fit_pinv = torch.as_tensor(np.linalg.pinv(np.concatenate([fit, np.ones((len(fit), 1))], 1)),
                                         dtype=torch.float32, device=dev)  # (3, n)
        self._iris_map = torch.as_tensor(iris_map, dtype=torch.float32, device=dev)  # (8, 478)
        self._ring_src = torch.as_tensor(ring_xy, dtype=torch.float32, device=dev)
        n_rings = len(config.ring_scales)
        self._ring_oval = torch.as_tensor(np.tile(ring_oval, n_rings), device=dev)
        self._ring_oval_src = torch.as_tensor(face[np.tile(ring_oval, n_rings)], dtype=torch.float32, device=dev)
        self._ring_w = torch.as_tensor(np.repeat(config.ring_weights, len(ring_oval))[:, None],
                                       dtype=torch.float32, device=dev)
        self._ring_lw = torch.as_tensor(np.repeat(config.ring_local_weights, len(ring_oval))[:, None],
                                        dtype=torch.float32, device=dev)
        self._border = torch.as_tensor(border, dtype=torch.float32, device=dev)
        on_x_edge = (border[:, 1] == 0) | (border[:, 1] == s)  # top / bottom: slides along x
        on_y_edge = (border[:, 0] == 0) | (border[:, 0] == s)
        tangent = np.stack([on_x_edge & ~on_y_edge, on_y_edge & ~on_x_edge], 1).astype(np.float32)  # corners: 0
        self._border_tangent = torch.as_tensor(tangent, device=dev)
        self._face_src = torch.as_tensor(face, dtype=torch.float32, device=dev)

        r = self.flow_size
        centres = torch.arange(r, device=dev, dtype=torch.float32) + 0.5
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self._pix_x = cx.reshape(-1)  # (R*R,) pixel centres at the flow resolution
        self._pix_y = cy.reshape(-1)

    def _build_mesh(self, vertices: np.ndarray, n_ring: int, centre: np.ndarray,
                    source_z: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, int, int]:
        """Triangles ``(T, 3)`` and fold priorities ``(T,)`` (>= 1, higher wins), layer by layer.

        Layers, low to high: exterior bands (oval -> ring 1 -> ... -> border, angular zipper strips; the
        outermost lowest), opening fills, iris fans, face surface (last, ranked by source depth when known).
        Returns ``(triangles, priorities, number of exterior triangles, number of surface triangles)``.
        """
        layers: List[Tuple[np.ndarray, np.ndarray]] = []
        first_ring = N_FACE_POINTS + 4 * len(_IRISES)
        n_rings = len(self.config.ring_scales)
        oval = [int(v) for v in topology.FACE_OVAL_LOOP]
        loops = [_angular_loop(oval, vertices[oval], centre)]
        for k in range(n_rings + 1):  # the rings, then the border
            start = first_ring + k * n_ring
            ids = list(range(start, start + n_ring if k < n_rings else len(vertices)))
            loops.append(_angular_loop(ids, vertices[ids], centre))
        n_bands = len(loops) - 1
        for band in range(n_bands):
            tris = _strip(loops[band][0], loops[band + 1][0], loops[band][1], loops[band + 1][1])
            layers.append((np.asarray(tris, np.int64).reshape(-1, 3), np.full(len(tris), n_bands - band)))
        fills = []
        for loop, a, b in _OPENINGS:
            first, second = _split_loop(loop, a, b)
            fills += _strip(first, second, np.linspace(0, 1, len(first)), np.linspace(0, 1, len(second)))
        layers.append((np.asarray(fills, np.int64), np.full(len(fills), n_bands + 1)))
        fans = [(centre_idx, N_FACE_POINTS + 4 * e + k, N_FACE_POINTS + 4 * e + (k + 1) % 4)
                for e, (centre_idx, _) in enumerate(_IRISES) for k in range(4)]
        layers.append((np.asarray(fans, np.int64), np.full(len(fans), n_bands + 2)))
        surface = np.asarray(topology.TRIANGLES, np.int64)
        order = (np.argsort(-source_z[surface].mean(axis=1), kind="stable") if source_z is not None
                 else np.arange(len(surface)))  # nearest (smallest z) last = highest
        rank = np.empty(len(surface), np.int64)
        rank[order] = np.arange(len(surface))
        self._surface_base = n_bands + 3
        layers.append((surface, self._surface_base + rank))
        tri = np.concatenate([t for t, _ in layers])
        prio = np.concatenate([p for _, p in layers]).astype(np.int64)
        return tri, prio, sum(len(t) for t, _ in layers[:n_bands]), len(surface)

    # ------------------------------------------------------------------ target side
    def _sanitize(self, target_points: TensorLike) -> torch.Tensor:
        """``(B, 478, 2|3)`` -> float32 on device; non-finite xy -> source xy, z -> 0; xy clamped."""
        tgt = torch.as_tensor(target_points, dtype=torch.float32, device=self.device)
        if tgt.ndim != 3 or tgt.shape[1] != N_FACE_POINTS or tgt.shape[2] not in (2, 3):
            raise ValueError(f"target points must be (B, {N_FACE_POINTS}, 2|3), got {tuple(tgt.shape)}")
        xy = torch.where(torch.isfinite(tgt[..., :2]), tgt[..., :2], self._face_src)
        lim = self.config.max_outside * self.size
        xy = xy.clamp(-lim, self.size + lim)
        if tgt.shape[2] == 3:
            z = torch.nan_to_num(tgt[..., 2:], nan=0.0, posinf=0.0, neginf=0.0)
            return torch.cat([xy, z], dim=-1)
        return xy

    def head_motion(self, target_points: TensorLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """Least-squares head motion source -> target on HEAD_FIT_POINTS.

        Returns ``(M (B, 2, 2), t (B, 2))`` with ``target ~= source @ M^T + t`` (pixels).
        """
        return self._head_motion(self._sanitize(target_points)[..., :2])

    def _head_motion(self, xy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q = xy[:, self._fit_idx]  # (B, n, 2)
        if self.config.head_motion == "affine":
            x = self._fit_pinv @ q  # (B, 3, 2): [x y 1] @ X
            return x[:, :2].transpose(1, 2), x[:, 2]
        q_mean = q.mean(dim=1)
        qc = q - q_mean[:, None]
        p = self._fit_centred
        a = (p[None] * qc).sum(dim=(1, 2)) / self._fit_denom
        b = (p[None, :, 0] * qc[..., 1] - p[None, :, 1] * qc[..., 0]).sum(dim=1) / self._fit_denom
        m = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=1)
        return m, q_mean - self._fit_mean @ m.transpose(1, 2)

    def exterior_points(self, target_points: TensorLike) -> torch.Tensor:
        """Target positions of the exterior points: ``(B, 478, 2|3)`` px -> ``(B, K, 2)`` px.

        Ring point ``r`` of level ``i`` (source position ``r0``, face-oval point ``o``):
        ``r0 + w_i * (H(r0) - r0) + lw_i * (o_target - H(o_source))`` with ``H`` the fitted head motion;
        the crop border points stay where they are.
        """
        return self._exterior(self._sanitize(target_points)[..., :2])

    def _exterior(self, tgt: torch.Tensor) -> torch.Tensor:
        m, t = self._head_motion(tgt)
        mt = m.transpose(1, 2)
        ring_head = self._ring_src @ mt + t[:, None]
        residual = tgt[:, self._ring_oval] - (self._ring_oval_src @ mt + t[:, None])
        ring = self._ring_src + self._ring_w * (ring_head - self._ring_src) + self._ring_lw * residual
        border = self._border.expand(tgt.shape[0], -1, -1)
        return torch.cat([ring, border], dim=1)

    def target_vertices(self, target_points: TensorLike) -> torch.Tensor:
        """All mesh vertices for a target pose: ``(B, 478, 2|3)`` px -> ``(B, V, 2)`` px (see class doc)."""
        return self._vertices(self._sanitize(target_points)[..., :2])

    def _vertices(self, xy: torch.Tensor) -> torch.Tensor:
        inner = torch.cat([xy, self._iris_map @ xy], dim=1)
        exterior = self._exterior(xy)
        if self.config.fold_free:
            exterior = self._unfold(inner, exterior)
        return torch.cat([inner, exterior], dim=1)

    def _slide_border(self, inner: torch.Tensor) -> torch.Tensor:
        """Border points ``(B, n_border, 2)`` moved along their crop edge with the head (fold fallback only).

        Each point slides by the outer ring's share of the head motion at it, projected on its edge, at most
        0.45 of the spacing of the border points (corners stay): the border keeps its order and covers the crop.
        """
        m, t = self._head_motion(inner[:, :N_FACE_POINTS])
        head = self._border @ m.transpose(1, 2) + t[:, None] - self._border  # (B, n, 2)
        move = (head * self._border_tangent).sum(-1, keepdim=True) * float(self.config.ring_weights[-1])
        limit = 0.45 * self.size / self.config.border_points_per_side
        return self._border + move.clamp(-limit, limit) * self._border_tangent

    def _fold_candidates(self, n_rings: int, n_ray: int, n_border: int) -> torch.Tensor:
        """``(C, K)`` per-exterior-point displacement fractions: every combination of ``fold_steps`` per ring
        (border points 0), ordered by preference (inner ring first, larger fractions first)."""
        steps = torch.as_tensor(self.config.fold_steps, dtype=torch.float32, device=self.device)
        combos = torch.cartesian_prod(*[steps] * n_rings) if n_rings > 1 else steps[:, None]  # (C, n_rings)
        per_point = combos.repeat_interleave(n_ray, dim=1)
        return torch.cat([per_point, per_point.new_zeros(len(combos), n_border)], dim=1)

    def _unfold(self, inner: torch.Tensor, exterior: torch.Tensor) -> torch.Tensor:
        """Exterior points ``(B, K, 2)`` with each ring's displacement cut until no exterior triangle flips.

        ``inner (B, 486, 2)``: landmarks and iris points. See ``WarpConfig.fold_free``.
        """
        src = self.source_vertices[N_FACE_POINTS + 4 * len(_IRISES):]  # (K, 2)
        move = exterior - src
        b_count, n_cand = inner.shape[0], len(self._fold_grid)
        cand = src + self._fold_grid[:, None, :, None] * move[None]  # (C, B, K, 2)
        verts = torch.cat([inner[None].expand(n_cand, -1, -1, -1), cand], dim=2)
        flips = ((_signed_area(verts[:, :, self._exterior_tris]) * self._exterior_sign) < -1e-3).sum(-1)  # (C, B)
        if not bool(flips[0].any()):
            return exterior
        rank = flips * n_cand + torch.arange(n_cand, device=self.device)[:, None]  # fewest flips, then preference
        best = rank.argmin(dim=0)  # (B,)
        out = cand[best, torch.arange(b_count, device=self.device)]
        for item in torch.nonzero(flips.amin(dim=0) > 0).flatten().tolist():
            # No cut helps (the face is near the border): rebuild the rings from the target face oval the way
            # the source's were built (between the oval and the crop border, so they cannot cross either).
            # Candidates: the first k rings rebuilt, the others cut as above.
            rings, _, _ = _ring_points(inner[item].double().cpu().numpy(), self.config, float(self.size))
            rings_t = torch.as_tensor(rings, dtype=out.dtype, device=self.device)
            n_ray = len(rings) // len(self.config.ring_scales)
            options = []
            for k in range(1, len(self.config.ring_scales) + 1):
                opt = cand[:, item].clone()  # (C, K, 2)
                opt[:, : k * n_ray] = rings_t[: k * n_ray]
                options.append(opt)
            slid = torch.cat(options).clone()  # the same with the border points slid along the border
            slid[:, len(rings):] = self._slide_border(inner[item : item + 1])[0]
            opts = torch.cat(options + [slid])
            verts = torch.cat([inner[item][None].expand(len(opts), -1, -1), opts], dim=1)[:, self._exterior_tris]
            opt_flips = ((_signed_area(verts) * self._exterior_sign) < -1e-3).sum(-1)
            k = int(opt_flips.argmin())
            if int(opt_flips[k]) < int(flips[best[item], item]):
                out[item] = opts[k]
        return out

    def grid(self, target_points: TensorLike) -> torch.Tensor:
        """Sampling grid for ``target_points (B, 478, 2|3)`` (target crop px) -> ``(B, S, S, 2)``.

        Normalised align_corners=False coordinates into the source crop (see module docstring), always
        finite: each pixel's value lies in the bounding box of its source triangle (uncovered pixels, possible
        only when extreme motion folds the exterior bands away from the border, sample themselves). Computed at
        ``config.flow_size`` and upsampled bilinearly when that is smaller than S. The result is a
        channels-last view of planar memory (what grid_sample reads fastest); ``.contiguous()`` if needed.
        """
        return planes_to_grid(self.planes(target_points), self.size)

    def planes(self, target_points: TensorLike) -> torch.Tensor:
        """The grid at the flow resolution R, before upsampling: ``(B, 478, 2|3)`` px -> ``(B, 2, R, R)``
        normalised (x, y planes); :func:`planes_to_grid` turns it into :meth:`grid`'s result (4x fewer
        values to store or send than the grid when R = S / 2)."""
        tgt = self._sanitize(target_points)
        verts = self._vertices(tgt[..., :2]) * (self.flow_size / self.size)  # (B, V, 2) px at R
        return self._sample(verts, self._owners(verts, self._depth(tgt)))

    def triangle_map(self, target_points: TensorLike) -> torch.Tensor:
        """Owning triangle of every pixel (at the flow resolution R): ``(B, R, R)`` int64, -1 if uncovered.

        ``is_face_triangle[map]`` (where ``map >= 0``) is the face mask of the warped image.
        """
        tgt = self._sanitize(target_points)
        verts = self._vertices(tgt[..., :2]) * (self.flow_size / self.size)
        owner = self._owners(verts, self._depth(tgt))
        n_bt = tgt.shape[0] * self.num_triangles
        tri = torch.where(owner == n_bt, torch.full_like(owner, -1), owner % self.num_triangles)
        return tri.view(tgt.shape[0], self.flow_size, self.flow_size)

    def flipped_triangles(self, target_points: TensorLike, min_area: float = 1e-3) -> torch.Tensor:
        """Which triangles the target turns over: ``(B, 478, 2|3)`` px -> ``(B, T)`` bool.

        A triangle is flipped when its signed 2-D area in the target has the opposite sign of its area in
        the source and more than ``min_area`` square pixels in size. Face-surface triangles turn over
        naturally on the far side of a turned head (the depth order hides them); a flipped *exterior*
        triangle (``~is_face_triangle``) is a fold of the background bands: hair or background sampled
        mirrored, the smear of an over-stretched mesh.
        """
        verts = self.target_vertices(target_points)[:, self.triangles]  # (B, T, 3, 2)
        src = self.source_vertices[self.triangles]  # (T, 3, 2)
        return (_signed_area(verts) * torch.sign(_signed_area(src)) < -min_area)

    def warp(self, image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``image (B, C, S, S)`` sampled with ``grid (B, S, S, 2)`` -> ``(B, C, S, S)`` (see warp_image)."""
        return warp_image(image, grid)

    def __call__(self, image: torch.Tensor, target_points: TensorLike) -> torch.Tensor:
        """Warp the source ``image (B, C, S, S)`` to ``target_points (B, 478, 2|3)``."""
        return warp_image(image, self.grid(target_points))

    # ------------------------------------------------------------------ rasteriser
    def _depth(self, tgt: torch.Tensor) -> Optional[torch.Tensor]:
        return tgt[..., 2] if (tgt.shape[2] == 3 and self.config.use_depth) else None

    def _priorities(self, depth: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Per (item, triangle) fold priority ``(B * T,)`` int64 >= 1, higher wins."""
        prio = self._fixed_prio.expand(batch, -1)
        if depth is None:
            return prio.reshape(-1)
        zmean = depth[:, self.triangles[self._surface]].mean(dim=2)  # (B, Ts)
        order = torch.argsort(zmean, dim=1, descending=True, stable=True)  # farthest first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=self.device)
                                                .expand_as(order).contiguous())
        prio = prio.clone()
        prio[:, self._surface] = self._surface_base + rank
        return prio.reshape(-1)

    def _owners(self, v: torch.Tensor, depth: Optional[torch.Tensor]) -> torch.Tensor:
        """Owning (item, triangle) of every pixel: ``v (B, V, 2)`` px at R -> ``(B*R*R,)`` int64 in [0, B*T].

        Scanline rasterisation of all (item, triangle) pairs at once: rows of pixel centres per triangle, then
        pixels per row (two flat ``repeat_interleave`` expansions, no padding, no loop over triangles);
        overlaps are resolved with one ``amax`` scatter of the packed int64 ``key << pix_bits | pixel`` with
        ``key = priority << bt_bits | (item * T + triangle)`` (all candidates of a pixel share the low bits,
        so the maximum is the highest-priority key). ``B*T`` (priority 0) marks uncovered pixels.
        """
        b_count = v.shape[0]
        r = self.flow_size
        n_bt = b_count * self.num_triangles
        dev = self.device

        # Per (item, triangle, edge): x(y) = xa + (y - ya) * k, active for ylo <= y < yhi. The edge endpoints
        # are in canonical (sorted vertex id) order, so triangles sharing an edge compute identical x.
        pa = v[:, self._edge_a]  # (B, T, 3, 2)
        pb = v[:, self._edge_b]
        dy = pb[..., 1] - pa[..., 1]
        flat_edge = dy == 0
        k = (pb[..., 0] - pa[..., 0]) / torch.where(flat_edge, torch.ones_like(dy), dy)
        k = k.masked_fill(flat_edge, 0.0)
        ylo = torch.minimum(pa[..., 1], pb[..., 1])
        yhi = torch.maximum(pa[..., 1], pb[..., 1])
        edge_tab = torch.cat([pa[..., 0], pa[..., 1], k, ylo, yhi], dim=-1).reshape(n_bt, 15)

        # Rows of pixel centres y = i + 0.5 with ymin <= y < ymax, clipped to the image.
        row0 = torch.ceil(ylo.amin(dim=-1).reshape(-1) - 0.5).clamp(0, r).long()
        row1 = torch.ceil(yhi.amax(dim=-1).reshape(-1) - 0.5).clamp(0, r).long()
        heights = (row1 - row0).clamp_min(0)
        n_rows = int(heights.sum())
        bt_bits = int(n_bt).bit_length()
        pix_bits = int(b_count * r * r).bit_length()
        prio = self._priorities(depth, b_count)
        if int(self._surface_base + len(self._surface)).bit_length() + bt_bits + pix_bits > 62:
            raise ValueError(f"batch of {b_count} at {r}x{r} is too large for one rasterisation; split it")
        owner = torch.full((b_count * r * r,), n_bt << pix_bits, dtype=torch.long, device=dev)
        if n_rows == 0:
            return owner >> pix_bits
        row_bt = torch.repeat_interleave(torch.arange(n_bt, device=dev), heights, output_size=n_rows)
        row_y = torch.arange(n_rows, device=dev) + (row0 - (torch.cumsum(heights, 0) - heights))[row_bt]
        e = edge_tab.index_select(0, row_bt)  # (n_rows, 15)
        y = row_y.float().add_(0.5).unsqueeze(1)
        active = (e[:, 9:12] <= y) & (y < e[:, 12:15])
        x = e[:, 0:3] + (y - e[:, 3:6]) * e[:, 6:9]
        lo = torch.where(active, x, torch.full_like(x, float(r + 1))).amin(dim=1)
        hi = torch.where(active, x, torch.full_like(x, -1.0)).amax(dim=1)
        col0 = torch.ceil(lo.clamp(-1, r + 1) - 0.5).clamp(0, r).long()
        col1 = torch.ceil(hi.clamp(-1, r + 1) - 0.5).clamp(0, r).long()
        widths = (col1 - col0).clamp_min(0).masked_fill(active.sum(dim=1) != 2, 0)
        n_pix = int(widths.sum())
        if n_pix == 0:
            return owner >> pix_bits
        # Per row: key << pix_bits plus (first pixel's flat index - first candidate's index); adding the
        # candidate index gives each candidate's packed value.
        item = torch.div(row_bt, self.num_triangles, rounding_mode="floor")
        key = ((prio << bt_bits) | torch.arange(n_bt, device=dev)).index_select(0, row_bt)
        packed = (key << pix_bits) + ((item * r + row_y) * r + col0 - (torch.cumsum(widths, 0) - widths))
        packed = torch.repeat_interleave(packed, widths, output_size=n_pix).add_(torch.arange(n_pix, device=dev))
        flat = packed & ((1 << pix_bits) - 1)
        owner.scatter_reduce_(0, flat, packed, reduce="amax", include_self=True)
        return (owner >> pix_bits).bitwise_and_((1 << bt_bits) - 1)

    def _sample(self, v: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Per pixel, the owner's affine map target -> source: ``(B, 2, R, R)`` normalised (x, y planes)."""
        b_count = v.shape[0]
        r = self.flow_size
        tab = self._affine_table(v).index_select(1, owner).view(10, b_count, r * r)
        out = torch.empty(b_count, 2, r * r, device=self.device)
        for c in range(2):  # x, y
            out[:, c].copy_(tab[c]).addcmul_(tab[2 + 2 * c], self._pix_x).addcmul_(tab[3 + 2 * c], self._pix_y)
            out[:, c].clamp_(min=tab[6 + c], max=tab[8 + c])
        return out.view(b_count, 2, r, r)

    def _affine_table(self, v: torch.Tensor) -> torch.Tensor:
        """Per (item, triangle) affine maps: ``v (B, V, 2)`` target px at R -> ``(10, B * T + 1)`` float32.

        Column = ``[c (2), A[0] (2), A[1] (2), box_min (2), box_max (2)]``: a pixel centre ``p`` in the
        triangle samples ``c + A p`` (normalised), clamped to the source triangle's bounding box, with
        ``A = [s1 - s0, s2 - s0] @ inv([t1 - t0, t2 - t0])`` and ``c = s0 - A t0`` in float64; a degenerate
        target triangle gets ``A = 0`` (maps to its first vertex). The last column maps pixels to themselves.
        """
        r = self.flow_size
        tv = v.double()[:, self.triangles]  # (B, T, 3, 2)
        t0 = tv[:, :, 0]
        e1 = tv[:, :, 1] - t0
        e2 = tv[:, :, 2] - t0
        det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
        ok = det.abs() > 1e-12
        inv_det = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
        # inv([e1 e2]) = [[e2y, -e2x], [-e1y, e1x]] / det
        inv = torch.stack([torch.stack([e2[..., 1], -e2[..., 0]], -1),
                           torch.stack([-e1[..., 1], e1[..., 0]], -1)], -2) * inv_det[..., None, None]
        a = self._src_edges @ inv  # (B, T, 2, 2)
        c = self._src_s0 - (a @ t0.unsqueeze(-1)).squeeze(-1)
        b_count, n_tri = t0.shape[:2]
        tab = torch.cat([c, a.flatten(-2), self._src_box.expand(b_count, -1, -1)], dim=-1)
        ident = torch.tensor([[-1.0, -1.0, 2.0 / r, 0.0, 0.0, 2.0 / r, -1.0, -1.0, 1.0, 1.0]],
                             dtype=torch.float64, device=self.device)
        return torch.cat([tab.reshape(b_count * n_tri, 10), ident]).t().float().contiguous()
