"""Training batches of (source, driving) pairs, built whole in the data-loader workers.

:class:`PairBatches` is a map-style dataset whose item ``k`` is the *batch* of step ``k`` (use it with
``DataLoader(batch_size=None)``): ``groups`` sources, each with ``drivings`` driving frames of its
segment. Everything per pair that is not learned is done here, batched, so the training process
only runs the networks:

* the source-side mesh (:class:`~avatar_engine.geometry.mesh_warp.MeshWarp`: a few ms of Python) is
  built once per group, and the grids of the group's driving frames are rasterised in one call;
* the grids travel at the mesh warp's own resolution (``mesh_flow_size``, planes ``(B, 2, R, R)``),
  4x fewer bytes than at 256; :func:`to_device` upsamples them with the same operation as
  :meth:`MeshWarp.grid <avatar_engine.geometry.mesh_warp.MeshWarp.grid>`, so the grid is the one the
  plain per-pair path computes (:class:`~avatar_engine.training.trainer.MeshPairs`);
* the connectivity images of both frames are drawn at the networks' resolution (batched torch, the
  model's own rasterizer: :meth:`NeuralConfig.connectivity <avatar_engine.models.base_model.NeuralConfig.connectivity>`);
* images stay ``uint8`` until they are on the training device.

Batch ``k`` is a deterministic function of ``(seed, k)``: a run resumes at any step with the same
data, and DDP rank ``r`` of ``w`` takes batches ``k * w + r``.

A batch (CPU): ``source, driving (B, 3, S, S) uint8``, ``source_points, driving_points (B, 478, 3)``
float32 crop px, ``z_id (B, 128)`` float32, ``mesh_planes (B, 2, Rm, Rm)`` float32 (normalised grid
planes at ``mesh_flow_size``), ``source_lines, driving_lines (B, 3, R, R)`` float32 in ``[-1, 1]``
(at ``flow_size``), with ``B = groups * drivings``; pairs of one group are consecutive; with
``flow_targets``, also ``flow_target (B, 2, R, R)`` and ``flow_weight (B, 1, R, R)`` float32.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from avatar_engine.data.prepare import PairConfig, PairDataset, PreparedClip
from avatar_engine.geometry.mesh_warp import MeshWarp, planes_to_grid
from avatar_engine.models.base_model import NeuralConfig
from avatar_engine.training.flow_targets import residual_flow_targets

__all__ = ["BatchConfig", "PairBatches", "to_device"]


@dataclass
class BatchConfig:
    """How :class:`PairBatches` draws a batch.

    Attributes:
        groups: sources per batch.
        drivings: driving frames per source (the batch has ``groups * drivings`` pairs).
        min_gap: smallest kept-frame distance of a (source, driving) pair.
        seed: base seed.
        mesh_cache: source meshes kept per worker (LRU; a repeated source skips its mesh build).
        flow_targets: also build the warping network's residual-flow targets
            (:func:`~avatar_engine.training.flow_targets.residual_flow_targets`: ``flow_target (B, 2, R, R)``
            crop px and ``flow_weight (B, 1, R, R)``), for ``LossConfig.flow``.
    """

    groups: int = 4
    drivings: int = 2
    min_gap: int = 1
    seed: int = 0
    mesh_cache: int = 256
    flow_targets: bool = False

    def __post_init__(self) -> None:
        if self.groups < 1 or self.drivings < 1:
            raise ValueError("groups and drivings must be >= 1")

    @property
    def batch_size(self) -> int:
        return self.groups * self.drivings


class PairBatches(torch.utils.data.Dataset):
    """Whole training batches from prepared clips (see the module docstring).

    Args:
        clips: prepared clips (:func:`~avatar_engine.data.prepare.load_prepared`), e.g. a split or one
            person's frames.
        model: the config of the model trained (crop size S, flow size, mesh warp, line width); the
            clips must be prepared at S.
        config: batch shape and seed.
        length: nominal number of batches (``len()``); any index >= 0 is valid.
    """

    def __init__(self, clips: list[PreparedClip], model: NeuralConfig, config: BatchConfig | None = None,
                 length: int = 1 << 30):
        self.config = config or BatchConfig()
        self.pairs = PairDataset(clips, PairConfig(min_gap=self.config.min_gap, seed=self.config.seed))
        self.model, self.length = model, length
        self.size, self.warp = model.size, model.mesh_warp_config()
        self.lines = model.connectivity_rasterizer()
        self._meshes: OrderedDict[tuple[int, int], MeshWarp] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def _mesh(self, clip: int, frame: int) -> MeshWarp:
        key = (clip, frame)
        mesh = self._meshes.get(key)
        if mesh is None:
            mesh = MeshWarp(np.asarray(self.pairs.clips[clip].landmarks[frame]), self.size, self.warp)
            self._meshes[key] = mesh
            if len(self._meshes) > self.config.mesh_cache:
                self._meshes.popitem(last=False)
        else:
            self._meshes.move_to_end(key)
        return mesh

    def draw(self, index: int) -> list[tuple[int, int, list[int]]]:
        """``[(clip number, source frame, [driving frames])]`` of batch ``index``, one per group."""
        cfg = self.config
        out = []
        for g in range(cfg.groups):
            ci, src, _ = self.pairs.draw(index * cfg.groups + g)
            clip = self.pairs.clips[ci]
            same = np.flatnonzero(clip.segment == clip.segment[src])
            far = same[np.abs(same - src) >= cfg.min_gap]
            rng = np.random.default_rng((cfg.seed, 1, int(index), g))
            drv = rng.choice(far, size=cfg.drivings, replace=len(far) < cfg.drivings)
            out.append((ci, src, [int(d) for d in drv]))
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        src_img, drv_img, src_pts, drv_pts, z_id, planes = [], [], [], [], [], []
        for ci, src, drv in self.draw(index):
            clip = self.pairs.clips[ci]
            d_pts = np.asarray(clip.landmarks[drv], np.float32)  # (m, 478, 3)
            m = len(drv)
            src_img.append(np.repeat(np.asarray(clip.frames[src])[None], m, 0))
            drv_img.append(np.asarray(clip.frames[drv]))
            src_pts.append(np.repeat(np.asarray(clip.landmarks[src], np.float32)[None], m, 0))
            drv_pts.append(d_pts)
            z_id.append(np.repeat(np.asarray(clip.identity[src], np.float32)[None], m, 0))
            with torch.no_grad():
                planes.append(self._mesh(ci, src).planes(torch.from_numpy(d_pts)))
        s_pts, d_pts = torch.from_numpy(np.concatenate(src_pts)), torch.from_numpy(np.concatenate(drv_pts))
        with torch.no_grad():
            s_lines = self.model.connectivity(s_pts, self.lines)
            d_lines = self.model.connectivity(d_pts, self.lines)
        batch = {"source": torch.from_numpy(np.concatenate(src_img)).permute(0, 3, 1, 2).contiguous(),
                 "driving": torch.from_numpy(np.concatenate(drv_img)).permute(0, 3, 1, 2).contiguous(),
                 "source_points": s_pts, "driving_points": d_pts,
                 "z_id": torch.from_numpy(np.concatenate(z_id)),
                 "mesh_planes": torch.cat(planes), "source_lines": s_lines, "driving_lines": d_lines}
        if self.config.flow_targets:
            batch["flow_target"], batch["flow_weight"] = residual_flow_targets(
                batch["source"], batch["driving"], planes_to_grid(batch["mesh_planes"], self.size),
                self.model.flow_size)
        return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str, model: NeuralConfig,
              channels_last: bool = False) -> dict[str, torch.Tensor]:
    """A CPU batch on ``device``, ready for the step.

    ``batch``: from :class:`PairBatches`, or stacked :class:`~avatar_engine.training.trainer.MeshPairs`
    items (``mesh_grid`` instead of ``mesh_planes``, no connectivity images). Returns images float in
    ``[0, 1]`` ``(B, 3, S, S)`` (channels-last memory if asked), ``mesh_grid (B, S, S, 2)`` (upsampled
    from ``mesh_planes`` as :meth:`MeshWarp.grid` does), ``source_lines, driving_lines (B, 3, R, R)``
    (drawn here when missing), points and ``z_id``.
    """
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for k in ("source", "driving"):
        out[k] = (out[k].float() / 255.0).contiguous(memory_format=fmt)
    if "mesh_planes" in out:
        out["mesh_grid"] = planes_to_grid(out.pop("mesh_planes"), model.size)
    for k in ("source", "driving"):
        if f"{k}_lines" not in out:
            with torch.no_grad():
                out[f"{k}_lines"] = model.connectivity(out[f"{k}_points"])
    return out
