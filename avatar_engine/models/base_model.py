"""The neural base model: mesh-prior warping network + ID-preserving refinement, its config, weights and cost.

:class:`NeuralAvatar` joins :class:`~avatar_engine.models.warp_net.WarpNet` and
:class:`~avatar_engine.models.refine_net.RefineNet`. One frame (crop size S, flow resolution R):

    mesh grid (B, S, S, 2)  --(its flow at R, target lines at R)--> WarpNet --> residual, occlusion
    grid = mesh grid + residual;  warped = grid_sample(source, grid)
    RefineNet(source features warped by grid, occlusion, target lines, warped, z_id) --> output

The mesh grid comes from :class:`avatar_engine.geometry.mesh_warp.MeshWarp` (geometry, not learned; see
:meth:`NeuralConfig.mesh_warp_config`). Everything that depends only on the source (the encoders of
both networks, the identity code) is computed once by :meth:`NeuralAvatar.encode_source`.

Configs (:class:`NeuralConfig`) are typed dataclasses, loadable from TOML (:func:`avatar_engine.config.load_config`);
``lite`` and ``full`` are two sizes of one code path (``configs/neural_lite.toml``,
``configs/neural_full.toml``). Weights are safetensors files holding the state dict and, in the
metadata, the config as JSON (:func:`save_weights`, :func:`load_model`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_engine.config import config_from_dict
from avatar_engine.models.weights import WEIGHTS_DIR, load_module, save_module
from avatar_engine.geometry.rasterizer import ConnectivityRasterizer, RasterConfig
from avatar_engine.models.refine_net import RefineNet, RefineNetConfig, RefineSourceCache, downsample_grid
from avatar_engine.geometry.mesh_warp import WarpConfig, grid_to_flow, warp_image
from avatar_engine.models.warp_net import WarpNet, WarpNetConfig, WarpSourceCache, apply_residual

__all__ = ["NeuralConfig", "NeuralAvatar", "NeuralSourceCache", "NeuralOutput",
           "save_weights", "load_model", "count_cost", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = WEIGHTS_DIR / "neural_lite.safetensors"
"""The shipped lite model."""


@dataclass
class NeuralConfig:
    """One size of the neural model.

    Attributes:
        name: size name (``lite``, ``full``).
        size: crop side S the model renders (256).
        flow_size: resolution R of the warping network (S / R a power of two, R divisible by 16).
        mesh_flow_size: resolution the mesh prior's grid is computed at before upsampling to S
            (None: at S). Coarser is faster; the residual flow corrects it.
        line_width: connectivity line width in pixels at R.
        warp: warping network sizes.
        refine: refinement network sizes.
    """

    name: str = "lite"
    size: int = 256
    flow_size: int = 64
    mesh_flow_size: int | None = 128
    line_width: float = 1.0
    warp: WarpNetConfig = field(default_factory=WarpNetConfig)
    refine: RefineNetConfig = field(default_factory=RefineNetConfig)

    def __post_init__(self) -> None:
        if self.size % 4 or self.flow_size % 16 or self.size % self.flow_size:
            raise ValueError(f"need size % 4 == 0, flow_size % 16 == 0 and size % flow_size == 0, "
                             f"got size={self.size}, flow_size={self.flow_size}")

    def connectivity_rasterizer(self) -> ConnectivityRasterizer:
        """The rasterizer of the networks' connectivity images (at ``flow_size``, ``line_width`` px there)."""
        return ConnectivityRasterizer(self.flow_size, RasterConfig(line_width=self.line_width, scale_with_size=False))

    def connectivity(self, points: torch.Tensor, rasterizer: ConnectivityRasterizer | None = None) -> torch.Tensor:
        """``(B, 478, 2|3)`` crop px -> ``(B, 3, R, R)`` connectivity image in ``[-1, 1]`` (the networks' input).

        ``rasterizer``: :meth:`connectivity_rasterizer` (built here when None)."""
        lines = rasterizer if rasterizer is not None else self.connectivity_rasterizer().to(points.device)
        return lines(points[..., :2].float() * (self.flow_size / self.size)) * 2.0 - 1.0

    def mesh_warp_config(self) -> WarpConfig:
        """The mesh warp of the geometric prior (the mesh renderer's, at ``mesh_flow_size``)."""
        return WarpConfig(flow_size=self.mesh_flow_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class NeuralSourceCache:
    """Source-only tensors: the source in ``[-1, 1]`` ``(B, 3, S, S)`` and both networks' caches."""

    image: torch.Tensor
    warp: WarpSourceCache
    refine: RefineSourceCache


@dataclass
class NeuralOutput:
    """One batch of rendered frames.

    Attributes:
        image: ``(B, 3, S, S)`` refined output in about ``[-1, 1]`` (clamp before display).
        warped: ``(B, 3, S, S)`` source warped by ``grid``, in ``[-1, 1]``.
        grid: ``(B, S, S, 2)`` final sampling grid (normalised, align_corners=False).
        residual: ``(B, 2, R, R)`` learned residual flow in crop pixels.
        occlusion: ``(B, 1, R, R)`` in (0, 1).
        masks: fusion masks of the refinement blocks, each ``(B, 1, h, w)`` in (0, 1).
    """

    image: torch.Tensor
    warped: torch.Tensor
    grid: torch.Tensor
    residual: torch.Tensor
    occlusion: torch.Tensor
    masks: list[torch.Tensor]


class NeuralAvatar(nn.Module):
    """Warping + refinement networks (see the module docstring)."""

    def __init__(self, config: NeuralConfig | None = None):
        super().__init__()
        self.config = cfg = config or NeuralConfig()
        self.warp_net = WarpNet(cfg.warp)
        self.refine_net = RefineNet(cfg.refine)
        self.lines = cfg.connectivity_rasterizer()

    def _lines(self, points: torch.Tensor, rasterizer: ConnectivityRasterizer | None = None) -> torch.Tensor:
        """``(B, 478, 2|3)`` crop px -> ``(B, 3, R, R)`` connectivity image in ``[-1, 1]``, drawn by
        ``rasterizer`` (default: the model's own)."""
        return self.config.connectivity(points, rasterizer or self.lines)

    def encode_source(self, source: torch.Tensor, source_points: torch.Tensor | None, z_id: torch.Tensor,
                      source_lines: torch.Tensor | None = None) -> NeuralSourceCache:
        """Source-only work.

        Args:
            source: ``(B, 3, S, S)`` float in ``[0, 1]``.
            source_points: ``(B, 478, 2|3)`` source landmarks in crop px (unused when ``source_lines`` is given).
            z_id: ``(B, 128)`` identity embedding of the source (dlib descriptor).
            source_lines: ``(B, 3, R, R)`` the source's connectivity image
                (:meth:`NeuralConfig.connectivity`), when already computed (training batches).
        """
        img = source * 2.0 - 1.0
        r = self.config.flow_size
        small = F.adaptive_avg_pool2d(img, r)
        lines = source_lines if source_lines is not None else self._lines(source_points)
        return NeuralSourceCache(img, self.warp_net.encode_source(small, lines),
                                 self.refine_net.encode_source(img, z_id))

    def forward(self, cache: NeuralSourceCache, target_points: torch.Tensor | None, mesh_grid: torch.Tensor,
                refine: bool = True, target_lines: torch.Tensor | None = None) -> NeuralOutput:
        """Render frames.

        Args:
            cache: from :meth:`encode_source` (batch 1 or B).
            target_points: ``(B, 478, 2|3)`` target landmarks in crop px (unused when ``target_lines`` is given).
            mesh_grid: ``(B, S, S, 2)`` the mesh warp's grid for these targets.
            refine: False skips the refinement network (``image`` is then ``warped``; training's warp stage).
            target_lines: ``(B, 3, R, R)`` the targets' connectivity images, when already computed.
        """
        if target_lines is None:
            target_lines = self._lines(target_points)
        return self.render_lines(cache, target_lines, mesh_grid, refine)

    def render_lines(self, cache: NeuralSourceCache, target_lines: torch.Tensor, mesh_grid: torch.Tensor,
                     refine: bool = True) -> NeuralOutput:
        """:meth:`forward` from the target connectivity image ``(B, 3, R, R)`` in ``[-1, 1]`` (what
        :meth:`_lines` draws) instead of the target points: the form the per-frame graph
        (:mod:`avatar_engine.models.frame_graph`) exports, with its own exportable rasterizer."""
        r = self.config.flow_size
        mesh_flow = grid_to_flow(downsample_grid(mesh_grid, r)) * (1.0 / r)
        w = self.warp_net(cache.warp, target_lines, mesh_flow)
        grid = apply_residual(mesh_grid, w.residual)
        src = cache.image
        if src.shape[0] != grid.shape[0]:
            src = src.expand(grid.shape[0], -1, -1, -1)
        warped = warp_image(src, grid)
        if not refine:
            return NeuralOutput(warped, warped, grid, w.residual, w.occlusion, [])
        out = self.refine_net(cache.refine, warped, grid, w.occlusion, target_lines)
        return NeuralOutput(out.image, warped, grid, w.residual, w.occlusion, out.masks)


def save_weights(model: NeuralAvatar, path: str | Path, metadata: dict[str, str] | None = None,
                 half: bool = False) -> None:
    """Write ``model``'s state dict (fp16 if ``half``) and its config (metadata ``config``) to a safetensors file.

    ``metadata`` adds string entries (``config`` and ``format`` are reserved)."""
    save_module(model, model.config.to_dict(), path, "avatar-engine-neural-v1", metadata, half)


def load_model(path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu") -> NeuralAvatar:
    """A :class:`NeuralAvatar` from a safetensors file written by :func:`save_weights` (float32, eval mode).

    Raises:
        WeightsError: missing, unreadable or corrupt file, or weights that do not fit the config.
    """
    return load_module(path, lambda cfg: NeuralAvatar(config_from_dict(NeuralConfig, cfg)), "neural", device)


def count_cost(model: NeuralAvatar, batch: int = 1) -> dict[str, dict[str, float]]:
    """FLOPs (``torch.utils.flop_counter``, 1 multiply-add = 2 FLOP) and parameters per module.

    Returns ``{module: {"gflop": ..., "params_m": ...}}`` for ``warp_net``, ``refine_net`` (per frame)
    and their ``source`` parts (once per source), plus ``total_per_frame``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    s = cfg.size
    device = next(model.parameters()).device
    src = torch.rand(batch, 3, s, s, device=device)
    pts = torch.rand(batch, 478, 3, device=device) * s
    z = torch.randn(batch, cfg.refine.id_dim, device=device)
    grid = torch.rand(batch, s, s, 2, device=device) * 2 - 1
    with torch.no_grad():
        counters = {}
        for name, fn in (("warp_net.source", lambda: model.warp_net.encode_source(
                              F.adaptive_avg_pool2d(src, cfg.flow_size), model._lines(pts))),
                         ("refine_net.source", lambda: model.refine_net.encode_source(src, z))):
            with FlopCounterMode(display=False) as fc:
                fn()
            counters[name] = fc
        cache = model.encode_source(src, pts, z)
        with FlopCounterMode(display=False) as fc:
            model(cache, pts, grid)
        counters["frame"] = fc

    def gflop(name: str, module: str = "Global") -> float:
        flops = counters[name].get_flop_counts()
        return float(sum(flops.get(module, {}).values())) / batch / 1e9

    def params(m: nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    warp_src = params(model.warp_net.source_encoder)
    refine_src = sum(params(m) for m in (model.refine_net.enc_mid, model.refine_net.enc_low, model.refine_net.id_mlp))
    return {
        "warp_net": {"gflop": gflop("frame", "NeuralAvatar.warp_net"), "params_m": params(model.warp_net) - warp_src},
        "refine_net": {"gflop": gflop("frame", "NeuralAvatar.refine_net"), "params_m": params(model.refine_net) - refine_src},
        "warp_net.source": {"gflop": gflop("warp_net.source"), "params_m": warp_src},
        "refine_net.source": {"gflop": gflop("refine_net.source"), "params_m": refine_src},
        "total_per_frame": {"gflop": gflop("frame"), "params_m": params(model)},
    }

