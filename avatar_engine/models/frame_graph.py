"""Per-frame work as single graphs with explicit inputs, for the inference backends (:mod:`avatar_engine.backends`).

:class:`NeuralFrameGraph`: one frame of the neural renderer. Inputs (S = model crop side, R = flow
resolution, ``c``/``c_mid``/``c_low`` the networks' widths):

    target_points (1, 478, 3)  target landmarks in crop px at S
    mesh_grid     (1, S, S, 2) the mesh warp's grid for them (MeshWarp.grid, see below)
    source        (1, 3, S, S) the source in [-1, 1]            \\
    warp0, warp1, warp2        warping-net source features      |  per source
    refine_mid, refine_low     refinement-net source features   |  (NeuralSourceCache, see
    id_code       (1, D)       identity code                    /   :meth:`source_inputs`)

and in the graph: connectivity rasterization of the target (the exportable fixed-shape form of
:class:`~avatar_engine.geometry.rasterizer.ConnectivityRasterizer`), warping network, flow to grid,
``grid_sample`` of the source, refinement network, and the detail transfer (:class:`DetailTransfer`:
the warped source's fine detail put back where the refined image agrees with it). Output
``(1, 3, S, S)`` in ``[0, 1]`` (clamped).

The mesh grid is an input, not part of the graph: the mesh warp's scanline rasterizer
(:class:`~avatar_engine.geometry.mesh_warp.MeshWarp`) expands each triangle into a number of rows and
pixels known only from the data, and its triangle list is built per source, so it has no fixed-shape
form; it runs in PyTorch before the graph (about 2 ms at 256 on one CPU core).

:class:`SRStepGraph`: one streaming step of the temporal SR network (:meth:`SRNet.step`) with its
state as explicit inputs and outputs. Inputs ``frame (1, 3, S, S)`` in ``[0, 1]``, ``fresh`` (a bool
tensor of shape ``(1,)``: the first frame of a stream, its past is itself), then one ``past`` tensor
``(kt - 1, 1, C, H, W)`` (oldest first) per temporal convolution; outputs the ``(1, 3, 2S, 2S)``
frame (not clamped) and the updated pasts, in the same order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_engine.backends.base import GraphSpec

from avatar_engine.geometry.rasterizer import ConnectivityRasterizer
from avatar_engine.models.base_model import NeuralAvatar, NeuralSourceCache
from avatar_engine.models.refine_net import RefineSourceCache
from avatar_engine.models.sr_net import SRNet
from avatar_engine.models.warp_net import WarpSourceCache

__all__ = ["DetailTransfer", "NeuralFrameGraph", "SRStepGraph", "StepState"]


class DetailTransfer(nn.Module):
    """The warped source's fine detail in the refined image, where the two agree.

    The refinement network (small, trained on L1 / SSIM) renders skin, hair and eyelashes softer than
    the photo: at rest, drawn at its own landmarks, the neural crop is 43 dB from the photo against the
    mesh warp's 52 dB. Here the refined image keeps its own coarse content (colour, shading, what it
    fills in) and takes its fine detail from the warped source:
    ``out = refined + w * ((warped - G(warped)) - (refined - G(refined)))``, ``G`` a Gaussian blur of
    ``sigma`` px, ``w = exp(-|G(refined) - G(warped)| / tau)`` (mean over the channels) so that where
    the network changed the picture (occlusions it filled, a mouth it redrew) its own detail stays.

    Args:
        sigma: Gaussian sigma in pixels (the kernel is ``2 * ceil(3 * sigma) + 1`` wide); 0: off.
        tau: agreement scale, in the images' ``[-1, 1]`` units.
    Shapes: ``refined, warped (B, 3, H, W)`` in about ``[-1, 1]`` -> ``(B, 3, H, W)``.
    """

    def __init__(self, sigma: float = 1.5, tau: float = 0.15):
        super().__init__()
        if sigma < 0 or tau <= 0:
            raise ValueError(f"need sigma >= 0 and tau > 0, got {sigma} and {tau}")
        r = max(1, int(math.ceil(3.0 * sigma)))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-t * t / (2.0 * max(sigma, 1e-6) ** 2))
        # buffers: part of the exported graph's cache key (onnx_runners.graph_key)
        self.register_buffer("kernel", (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1), persistent=False)
        self.register_buffer("tau", torch.tensor(float(tau)), persistent=False)
        self.enabled = sigma > 0

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of ``x (B, 3, H, W)``, edges replicated."""
        r = self.kernel.shape[-1] // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), self.kernel, groups=3)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), self.kernel.transpose(-1, -2), groups=3)

    def forward(self, refined: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return refined
        # linear: (warped - G(warped)) - (refined - G(refined)) = d - G(d), G(warped) - G(refined) = G(d)
        d = warped - refined
        low = self.blur(d)
        agree = torch.exp(-low.abs().mean(1, keepdim=True) / self.tau)
        return refined + agree * (d - low)


class NeuralFrameGraph(nn.Module):
    """One neural-renderer frame as one graph (see the module docstring).

    Args:
        model: the trained :class:`NeuralAvatar` (shared, not copied).
        detail: the detail transfer applied to the refined image (None: the network's image as it is).
    """

    input_names = ("target_points", "mesh_grid", "source", "warp0", "warp1", "warp2",
                   "refine_mid", "refine_low", "id_code")
    output_names = ("image",)

    def __init__(self, model: NeuralAvatar, detail: DetailTransfer | None = None):
        super().__init__()
        self.model = model
        self.detail = detail
        self.lines = ConnectivityRasterizer(model.config.flow_size, model.lines.config,
                                            device=model.lines.edges.device, fixed_shape=True)

    @staticmethod
    def source_inputs(cache: NeuralSourceCache) -> tuple[torch.Tensor, ...]:
        """The per-source inputs (``source`` .. ``id_code``) of a source cache of batch 1."""
        return (cache.image, *cache.warp.features, cache.refine.mid, cache.refine.low, cache.refine.z)

    def example_inputs(self, cache: NeuralSourceCache, target_points: torch.Tensor,
                       mesh_grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All inputs in order, contiguous (what the exporters and runtimes want)."""
        return tuple(t.contiguous() for t in (target_points.float(), mesh_grid, *self.source_inputs(cache)))

    def spec(self, cache: NeuralSourceCache, target_points: torch.Tensor, mesh_grid: torch.Tensor) -> GraphSpec:
        """The :class:`GraphSpec` of this graph at the shapes of these inputs (named ``neural<S>``)."""
        with torch.inference_mode():
            example = self.example_inputs(cache, target_points, mesh_grid)
        return GraphSpec(f"neural{self.model.config.size}", self, example, self.input_names, self.output_names)

    def synthetic_spec(self, seed: int = 0) -> GraphSpec:
        """A spec with made-up inputs of the right shapes (a random source, points and an identity
        mesh grid): for timing a backend without a photo (``avatar-engine doctor``)."""
        g = torch.Generator().manual_seed(seed)
        cfg = self.model.config
        dev = self.lines.edges.device
        s = cfg.size
        points = (torch.rand(1, 478, 3, generator=g) * torch.tensor([0.5 * s, 0.5 * s, 10.0]) + 0.25 * s).to(dev)
        with torch.inference_mode():
            cache = self.model.encode_source(torch.rand(1, 3, s, s, generator=g).to(dev), points,
                                             torch.randn(1, cfg.refine.id_dim, generator=g).to(dev))
        ident = F.affine_grid(torch.eye(2, 3)[None], [1, 3, s, s], align_corners=False).to(dev)
        return self.spec(cache, points, ident)

    def forward(self, target_points: torch.Tensor, mesh_grid: torch.Tensor, source: torch.Tensor,
                warp0: torch.Tensor, warp1: torch.Tensor, warp2: torch.Tensor, refine_mid: torch.Tensor,
                refine_low: torch.Tensor, id_code: torch.Tensor) -> torch.Tensor:
        cache = NeuralSourceCache(source, WarpSourceCache([warp0, warp1, warp2]),
                                  RefineSourceCache(refine_mid, refine_low, id_code))
        # Traced (export, compile): the fixed-shape rasterizer; run eagerly: the model's sparse one, 2 ms
        # faster on one CPU core. Both draw the same image (tests/backends/test_frame_graphs.py).
        traced = torch.compiler.is_exporting() or torch.compiler.is_compiling()
        lines = self.model._lines(torch.nan_to_num(target_points), self.lines if traced else None)
        out = self.model.render_lines(cache, lines, mesh_grid)
        image = out.image if self.detail is None else self.detail(out.image, out.warped)
        return ((image + 1.0) * 0.5).clamp(0.0, 1.0)


class _TensorPast:
    """The ring-buffer interface :meth:`CausalConv3d.step` uses, over an explicit past tensor.

    ``past (kt - 1, B, C, H, W)`` oldest first; ``fresh (1,)`` bool: when set, the past is the
    current slice repeated (what a fresh :class:`RingBuffer` does with ``fill``). After the step,
    :attr:`new_past` holds the past of the next frame.
    """

    def __init__(self, past: torch.Tensor, fresh: torch.Tensor):
        self.past, self.fresh = past, fresh
        self.capacity = past.shape[0]
        self.current: torch.Tensor | None = None
        self.new_past: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0  # CausalConv3d.step then calls fill(x) with the current slice

    def fill(self, x: torch.Tensor) -> None:
        self.current = x

    def ordered(self) -> torch.Tensor:
        assert self.current is not None
        repeated = self.current.unsqueeze(0).expand(self.capacity, *self.current.shape)
        return torch.where(self.fresh.view(1, 1, 1, 1, 1), repeated, self.past)

    def push(self, x: torch.Tensor) -> None:
        self.new_past = torch.cat((self.ordered()[1:], x.unsqueeze(0)), 0)


@dataclass
class StepState:
    """What :meth:`SRNet.step` reads: ``caches`` in network order (None for layers without a past)."""

    caches: list[_TensorPast | None]


class SRStepGraph(nn.Module):
    """One streaming SR step as one graph (see the module docstring).

    Args:
        net: the trained :class:`SRNet` (shared, not copied).
    """

    def __init__(self, net: SRNet):
        super().__init__()
        self.net = net
        self.temporal = [i for i, conv in enumerate(net.convs) if conv.kt > 1]

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("frame", "fresh", *(f"past{i}" for i in self.temporal))

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("image", *(f"new_past{i}" for i in self.temporal))

    def spec(self, device: torch.device | str = "cpu") -> tuple[GraphSpec, tuple[torch.Tensor, ...]]:
        """The :class:`GraphSpec` of one step at the network's input size (named ``sr<S>``), and a
        zero state (the ``past`` inputs) to start a stream with."""
        s = self.net.config.input_size
        frame = torch.zeros(1, 3, s, s, device=device)
        past = self.zero_state(frame)
        example = (frame, torch.ones(1, dtype=torch.bool, device=frame.device), *past)
        return GraphSpec(f"sr{s}", self, example, self.input_names, self.output_names), past

    def zero_state(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pasts of the right shapes for ``frame (1, 3, S, S)`` (contents unused while ``fresh``)."""
        state = self.net.new_state()
        with torch.inference_mode():
            self.net.step(frame, state)
        return tuple(torch.zeros_like(state.caches[i].storage) for i in self.temporal)

    def forward(self, frame: torch.Tensor, fresh: torch.Tensor, *pasts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        views = {i: _TensorPast(p, fresh) for i, p in zip(self.temporal, pasts)}
        out = self.net.step(frame, StepState([views.get(i) for i in range(len(self.net.convs))]))
        return (out, *(views[i].new_past for i in self.temporal))
