"""Training of the temporal super-resolution network (``avatar-engine train-sr``).

Data: the prepared cache of :mod:`avatar_engine.data.prepare` (``avatar-engine prepare --size 256 512``):
targets are the real 512 face crops, inputs the same frames' 256 crops, either as cut from the video
(downscaled ground truth) or as the mesh renderer draws them in self-reenactment (each segment's
first frame warped to every frame's landmarks), so the network also learns to clean renderer
output. The renderer inputs are computed once by :func:`build_render_inputs` into
``<cache>/../sr_inputs/<split>/<clip>/mesh_256.npy`` (``(N, 256, 256, 3) uint8``, same rows as the
prepared frames), never inside the training loop. Only segments whose crop square covers at least
``min_source_side`` video pixels are used: below that the "512" crop is an upsampled image with no
real detail to learn.

Samples (:class:`SRWindowDataset`) are ``window = T + 1`` consecutive frames of one segment (one
crop square), a random ``patch x patch`` region at 256 (``2 patch`` at 512), randomly mirrored; the
256 inputs of a share of the samples are degraded with sensor noise and JPEG coding drawn afresh for
every frame (:mod:`avatar_engine.data.degrade`: the frame-to-frame noise the temporal taps learn to see
through). The network's outputs for the last two frames are scored: L1 (both) + ``w_ssim * (1 - SSIM)`` (newest)
+ ``w_temporal *`` the temporal term: the newest output against the previous output warped by the
ground-truth optical flow (Farneback on the 512 ground truth, newest -> previous), weighted by
``exp(-alpha |gt_t - warp(gt_{t-1})|)`` so occlusions and flow failures do not count.

Schedule (paper 3.3): stage ``2d`` trains the frame-by-frame network (``frames = 1``); stage ``3d``
inflates its kernels (:func:`avatar_engine.models.sr_net.inflate`) and fine-tunes the temporal network.

Runs use the trainer core (:mod:`avatar_engine.training.core`): they are resumable (``<run>/last_<stage>.pt``:
model, optimiser, scheduler, step, written atomically), log ``<run>/loss_log_<stage>.jsonl``, run under
``torchrun`` with DDP (gloo on CPU, nccl on CUDA; each rank draws its own samples), show a tqdm bar on rank 0 and
export ``<run>/sr_<stage>.safetensors`` (loadable by :func:`avatar_engine.pipeline.super_resolution.load_sr_net`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avatar_engine.data.prepare import PreparedClip, default_cache_dir, load_prepared
from avatar_engine.data.degrade import DegradeConfig, degrade_clip, sample_degradation
from avatar_engine.errors import AvatarError, InputFileError
from avatar_engine.geometry.flow import optical_flow
from avatar_engine.models.sr_net import SRConfig, SRNet, inflate
from avatar_engine.pipeline.super_resolution import load_sr_net, save_sr_weights
from avatar_engine.training.core import Checkpoint, LoopPeriods, RunLog, load_toml_config, read_toml, run_steps, seed_all
from avatar_engine.training.ddp import distributed
from avatar_engine.training.losses import ssim as ssim_signed

__all__ = ["SRTrainConfig", "load_train_config", "build_render_inputs", "SRWindowDataset", "ssim_torch",
           "warp_by_flow", "sr_losses", "training_step", "train_sr", "SRTrainReport"]

log = logging.getLogger("avatar_engine")


def _default_inputs_dir() -> Path:
    return default_cache_dir().parent / "sr_inputs"


@dataclass
class SRTrainConfig:
    """Options of one SR training stage.

    Attributes:
        model: network shape (``frames`` is forced to 1 in stage ``2d``).
        degrade: per-frame noise / JPEG degradation of the 256 inputs (:mod:`avatar_engine.data.degrade`).
        stage: ``"2d"`` (frame-by-frame) or ``"3d"`` (inflate ``init`` and fine-tune).
        init: start weights: stage ``3d``: a frame-by-frame file (inflated) or a temporal one; stage
            ``2d``: a frame-by-frame file to continue from (fresh optimiser and schedule).
        run_dir: checkpoints and the exported weights.
        cache: prepared cache (``avatar-engine prepare``). inputs: renderer-input cache.
        split: training split.
        steps: optimiser steps of this stage (a resumed run continues up to it).
        batch: samples per step (per rank). patch: input patch side at 256 (multiple of 4).
        lr: Adam learning rate (cosine decay to 10 %). render_fraction: share of renderer inputs.
        min_source_side: segments whose crop square is smaller (video pixels) are not used.
        w_l1, w_ssim, w_temporal: loss weights. temporal_alpha: sharpness of the occlusion weight.
        save_every: checkpoint period in steps. seed: sampling seed. device: torch device.
        progress: tqdm bar on rank 0.
    """

    model: SRConfig = field(default_factory=SRConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    stage: str = "2d"
    init: Path | None = None
    run_dir: Path = field(default_factory=lambda: default_cache_dir().parent / "sr_runs" / "light")
    cache: Path = field(default_factory=default_cache_dir)
    inputs: Path = field(default_factory=_default_inputs_dir)
    split: str = "train"
    steps: int = 1000
    batch: int = 8
    patch: int = 64
    lr: float = 1e-3
    render_fraction: float = 0.25
    min_source_side: float = 400.0
    w_l1: float = 1.0
    w_ssim: float = 0.2
    w_temporal: float = 0.5
    temporal_alpha: float = 30.0
    save_every: int = 100
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.run_dir, self.cache, self.inputs = Path(self.run_dir), Path(self.cache), Path(self.inputs)
        self.init = None if self.init is None else Path(self.init)
        if self.stage not in ("2d", "3d"):
            raise ValueError(f"stage must be '2d' or '3d', got {self.stage!r}")
        if self.patch % 4 or self.patch < 16:
            raise ValueError(f"patch must be a multiple of 4 and >= 16, got {self.patch}")
        if not 0.0 <= self.render_fraction <= 1.0:
            raise ValueError("render_fraction must be in [0, 1]")
        if self.stage == "2d":
            self.model = dataclasses.replace(self.model, frames=1)


def load_train_config(path: str | Path, **overrides: object) -> SRTrainConfig:
    """Read a ``configs/sr_*.toml`` (``[model]`` = :class:`SRConfig`, ``[degrade]`` =
    :class:`~avatar_engine.data.degrade.DegradeConfig`, ``[train]`` = the rest) with the trainer core's
    loader (:func:`~avatar_engine.training.core.load_toml_config`).

    ``overrides`` (not None) replace ``[train]`` values.
    """
    data = read_toml(path, "SR config")
    try:
        model = SRConfig.from_dict(dict(data.get("model", {})))
        degrade = DegradeConfig.from_dict(dict(data.get("degrade", {})))
    except (ValueError, TypeError) as exc:
        raise AvatarError(f"bad SR config {path}: {exc}") from None
    return load_toml_config(SRTrainConfig, path, section="train", overrides=overrides, what="SR config",
                            model=model, degrade=degrade)


def _segment_sides(clip: PreparedClip) -> np.ndarray:
    """``(N,)`` crop-square side (video pixels) of each kept frame's segment."""
    sides = np.zeros(len(clip), np.float32)
    for seg in clip.meta["segments"]:
        sides[seg["start"]: seg["stop"]] = seg["side"]
    return sides


def build_render_inputs(cache: Path, inputs: Path, split: str, min_source_side: float = 0.0,
                        progress: bool = False) -> list[Path]:
    """Mesh-renderer self-reenactment inputs for every prepared clip of ``split`` (once; cached).

    Each frame is the mesh warp of its segment's first 256 crop to the frame's own 256 landmarks.
    Only clips prepared at 512 too (the training targets) with a segment of at least
    ``min_source_side`` video pixels are done. Returns the files.
    """
    from avatar_engine.geometry.mesh_warp import MeshWarp, WarpConfig
    from avatar_engine.io.image import image_to_tensor, tensor_to_image

    written = []
    clips = load_prepared(cache, split, 256)
    todo = [c for c in clips if 512 in c.meta["sizes"] and (_segment_sides(c) >= min_source_side).any()]
    for clip in tqdm(todo, desc=f"SR render inputs {split}", disable=not progress, leave=False):
        out = inputs / split / clip.clip_id / "mesh_256.npy"
        if out.is_file():
            written.append(out)
            continue
        frames = np.empty_like(np.asarray(clip.frames))
        with torch.inference_mode():
            for seg in clip.meta["segments"]:
                first = seg["start"]
                warp = MeshWarp(np.asarray(clip.landmarks[first]), 256, WarpConfig(), "cpu")
                src = image_to_tensor(np.array(clip.frames[first]))
                for i in range(seg["start"], seg["stop"]):
                    grid = warp.grid(torch.from_numpy(np.array(clip.landmarks[i], np.float32))[None])
                    frames[i] = tensor_to_image(warp.warp(src, grid))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npy")
        np.save(tmp, frames)
        os.replace(tmp, out)
        written.append(out)
    return written


class SRWindowDataset(torch.utils.data.Dataset):
    """Random windows of consecutive frames: 256 inputs, 512 targets, ground-truth flow.

    Args:
        clips256, clips512: the same prepared clips at 256 and 512 (matched by clip id).
        window: frames per sample (``T + 1``).
        patch: input patch side at 256.
        render_inputs: clip id -> ``(N, 256, 256, 3) uint8`` renderer inputs (may be empty).
        render_fraction: probability of a renderer input when the clip has them.
        min_source_side: segments below this crop side (video pixels) are not sampled.
        length: nominal epoch length. seed: base seed (each index draws deterministically).
        degrade: degradation of the inputs (one level per sample, fresh noise per frame).

    Items: ``inp (3, window, p, p)``, ``gt (3, window, 2p, 2p)`` float in ``[0, 1]``,
    ``flow (2, 2p, 2p)`` float32 backward flow newest -> previous in 512 pixels (dx, dy).
    """

    def __init__(self, clips256: list[PreparedClip], clips512: list[PreparedClip], window: int, patch: int,
                 render_inputs: dict[str, np.ndarray] | None = None, render_fraction: float = 0.0,
                 min_source_side: float = 0.0, length: int = 10_000, seed: int = 0,
                 degrade: DegradeConfig | None = None):
        by_id = {c.clip_id: c for c in clips512}
        self.pairs = [(c, by_id[c.clip_id]) for c in clips256 if c.clip_id in by_id]
        self.window, self.patch, self.length, self.seed = window, patch, length, seed
        self.render_inputs = render_inputs or {}
        self.render_fraction = render_fraction
        self.degrade = degrade or DegradeConfig()
        self.starts: list[tuple[int, int]] = []  # (pair index, last frame of a window)
        for k, (c256, _) in enumerate(self.pairs):
            index = np.load(c256.path / "index.npy")
            ok = (_segment_sides(c256) >= min_source_side)
            for last in range(window - 1, len(c256)):
                first = last - window + 1
                if (ok[last] and c256.segment[first] == c256.segment[last]
                        and index[last] - index[first] == window - 1):
                    self.starts.append((k, last))
        if not self.starts:
            raise InputFileError(f"no usable {window}-frame windows with crop side >= {min_source_side:g} px "
                                 "in the prepared cache")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, item))
        k, last = self.starts[int(rng.integers(len(self.starts)))]
        c256, c512 = self.pairs[k]
        sl = slice(last - self.window + 1, last + 1)
        rendered = self.render_inputs.get(c256.clip_id)
        use_render = rendered is not None and rng.random() < self.render_fraction
        inp = np.asarray((rendered if use_render else c256.frames)[sl])
        p = self.patch
        y, x = (int(v) for v in rng.integers(0, 256 - p + 1, size=2))
        noise = np.random.default_rng((self.seed, item, 1))  # its own stream: the sample's geometry stays put
        inp = degrade_clip(np.ascontiguousarray(inp[:, y: y + p, x: x + p]), sample_degradation(self.degrade, noise),
                           noise)
        gt = np.asarray(c512.frames[sl, 2 * y: 2 * (y + p), 2 * x: 2 * (x + p)])
        if rng.random() < 0.5:
            inp, gt = inp[:, :, ::-1], gt[:, :, ::-1]
        gt = np.ascontiguousarray(gt)
        flow = optical_flow(gt[-1], gt[-2])  # newest -> previous
        return {
            "inp": torch.from_numpy(np.ascontiguousarray(inp)).permute(3, 0, 1, 2).float().div_(255.0),
            "gt": torch.from_numpy(gt).permute(3, 0, 1, 2).float().div_(255.0),
            "flow": torch.from_numpy(flow).permute(2, 0, 1).contiguous(),
        }


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of ``(B, C, H, W)`` images in ``[0, 1]`` (the base model's differentiable SSIM)."""
    return ssim_signed(a * 2 - 1, b * 2 - 1)


def warp_by_flow(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image (B, C, H, W)`` at ``x + flow(x)``; ``flow (B, 2, H, W)`` in pixels (border repeat)."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=image.dtype, device=image.device),
                            torch.arange(w, dtype=image.dtype, device=image.device), indexing="ij")
    gx = (xs + flow[:, 0] + 0.5) / w * 2 - 1
    gy = (ys + flow[:, 1] + 0.5) / h * 2 - 1
    return F.grid_sample(image, torch.stack((gx, gy), -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def sr_losses(pred: torch.Tensor, gt: torch.Tensor, flow: torch.Tensor, config: SRTrainConfig) -> dict[str, torch.Tensor]:
    """Loss terms of the last two outputs.

    Args:
        pred: ``(B, 3, 2, H, W)`` outputs for frames ``t-1, t``. gt: the same frames' targets.
        flow: ``(B, 2, H, W)`` ground-truth backward flow ``t -> t-1`` (pixels).
    Returns:
        ``{"l1", "ssim", "temporal", "total"}`` scalars.
    """
    l1 = (pred - gt).abs().mean()
    ssim = ssim_torch(pred[:, :, -1], gt[:, :, -1])
    prev_pred = warp_by_flow(pred[:, :, -2], flow)
    with torch.no_grad():
        residual = (gt[:, :, -1] - warp_by_flow(gt[:, :, -2], flow)).abs().mean(1, keepdim=True)
        weight = torch.exp(-config.temporal_alpha * residual)
    temporal = (weight * (pred[:, :, -1] - prev_pred).abs()).mean()
    total = config.w_l1 * l1 + config.w_ssim * (1 - ssim) + config.w_temporal * temporal
    return {"l1": l1, "ssim": ssim, "temporal": temporal, "total": total}


def training_step(net: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  config: SRTrainConfig) -> dict[str, float]:
    """One optimiser step on ``batch`` (tensors already on the device). Returns the loss terms."""
    net.train()
    pred = net(batch["inp"], n_out=2)
    losses = sr_losses(pred, batch["gt"][:, :, -2:], batch["flow"], config)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


@dataclass
class SRTrainReport:
    """What a stage did."""

    weights: Path
    steps: int
    seconds: float
    last_losses: dict[str, float]
    flops_per_frame: int


def _initial_net(config: SRTrainConfig) -> SRNet:
    if config.stage == "2d":
        if config.init is None:
            return SRNet(config.model)
        base = load_sr_net(config.init)
        if base.config != config.model:
            raise AvatarError(f"--init {config.init} is not a frame-by-frame network of the config's shape")
        return base
    if config.init is None:
        raise AvatarError("stage 3d needs --init: the frame-by-frame (stage 2d) weights to inflate")
    base = load_sr_net(config.init)
    if base.frames == 1:
        return inflate(base, config.model.frames)
    if base.config != config.model:
        raise AvatarError(f"--init {config.init} has another network shape than the config")
    return base


def train_sr(config: SRTrainConfig) -> SRTrainReport:
    """Run (or resume) one training stage; returns the exported weights and the last losses.

    On the trainer core (:mod:`avatar_engine.training.core`): the process group is joined and left
    (:func:`~avatar_engine.training.ddp.distributed`), ``last_<stage>.pt`` written atomically, losses
    logged to ``<run>/loss_log_<stage>.jsonl``.
    """
    from avatar_engine.models.sr_net import count_flops

    with distributed(config.device) as info:
        rank, world, device = info.rank, info.world_size, info.device
        seed_all(config.seed)
        run = config.run_dir
        ckpt = Checkpoint(run / f"last_{config.stage}.pt", info.is_main)
        net = _initial_net(config).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.99))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / max(1, config.steps))))
        step = 0
        state = ckpt.load(device)
        if state is not None:
            if SRConfig.from_dict(state["model_config"]) != net.config:
                raise AvatarError(f"checkpoint {ckpt.path} has another network shape; use another run directory")
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            step = int(state["step"])
            log.info("resumed %s at step %d", ckpt.path, step)
        model: torch.nn.Module = net
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)

        clips256 = load_prepared(config.cache, config.split, 256)
        clips512 = load_prepared(config.cache, config.split, 512)
        render_inputs = {}
        if config.render_fraction > 0:
            for c in clips256:
                f = config.inputs / config.split / c.clip_id / "mesh_256.npy"
                if f.is_file():
                    render_inputs[c.clip_id] = np.load(f, mmap_mode="r")
            if not render_inputs:
                log.warning("no renderer inputs under %s: training on cut crops only (run build_render_inputs)",
                            config.inputs)
        dataset = SRWindowDataset(clips256, clips512, config.model.frames + 1, config.patch, render_inputs,
                                  config.render_fraction, config.min_source_side,
                                  length=config.steps * config.batch, seed=config.seed * 1000 + rank,
                                  degrade=config.degrade)
        # sample numbers of steps [step, steps): deterministic, resumable at any step
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch,
                                             sampler=range(step * config.batch, config.steps * config.batch))
        batches = ({k: v.to(device) for k, v in b.items()} for b in loader)
        current = {"losses": {}}

        def one_step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
            current["losses"] = training_step(model, batch, opt, config)
            schedule.step()
            return current["losses"]

        def save(at: int) -> None:
            ckpt.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": at,
                       "scheduler": schedule.state_dict(), "model_config": dataclasses.asdict(net.config),
                       "losses": current["losses"]})

        result = run_steps(batches, one_step, step, config.steps, save, info,
                           LoopPeriods(log_every=10, checkpoint_every=config.save_every),
                           RunLog(run / f"loss_log_{config.stage}.jsonl", info.is_main),
                           progress=config.progress, desc=f"train sr {config.stage}")
        weights = run / f"sr_{config.stage}.safetensors"
        if info.is_main:
            meta = {"stage": config.stage, "steps": str(result.step), "split": config.split,
                    "losses": json.dumps(current["losses"]), "train_config": json.dumps(
                        {k: str(v) for k, v in dataclasses.asdict(config).items() if k != "model"})}
            save_sr_weights(net, weights, meta)
        flops = count_flops(net.eval())
        if world > 1:
            torch.distributed.barrier()
        return SRTrainReport(weights, result.step, result.seconds, current["losses"], flops)
