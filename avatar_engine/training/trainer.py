"""Training loop of the neural base model (``avatar-engine train``).

Data: self-reenactment pairs from the ``prepare`` cache (:class:`avatar_engine.data.prepare.PairDataset`);
each pair gets its mesh-warp grid (the geometric prior) in the data-loader workers.

Stages (as in the paper): steps ``[0, warp_steps)`` train the warping network alone (loss on the
warped image); then warp + refinement together, the warping network at ``warp_lr_scale`` times the
learning rate. Losses per image (warped, and refined in the second stage), images in ``[-1, 1]``:
``l1 * L1 + ssim * (1 - SSIM) + region * L1(eye and mouth boxes)``; in the second stage the refined
image also gets ``gan * LSGAN + feature_matching * FM`` from a multi-scale patch discriminator
conditioned on the target connectivity image (our stand-in for the unavailable pretrained VGG loss).

Distribution: launched by ``torchrun``, every process trains a DistributedDataParallel replica on its
own slice of the pair stream (:class:`StepSampler`); rank 0 logs, validates and writes checkpoints.
Without torchrun the same command runs in one process (CPU or GPU). On CUDA the forward passes run
under bfloat16 autocast.

Outputs in ``output``: ``checkpoint.pt`` (everything needed to resume: weights, optimisers, step;
written atomically every ``checkpoint_every`` steps and at the end), ``loss_log.jsonl`` (one JSON
object per ``log_every`` steps, and one per validation), ``samples/step_<N>.png`` (validation rows:
source | driving (ground truth) | mesh warp | learned warp | refined), ``config.json``. Re-running
with the same ``output`` resumes from the checkpoint. :func:`export_weights` writes the
safetensors file the renderer loads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from avatar_engine.data.prepare import PairConfig, PairDataset, load_prepared
from avatar_engine.errors import AvatarError
from avatar_engine.models.base_model import NeuralAvatar, NeuralConfig, config_from_dict, save_weights
from avatar_engine.geometry.rasterizer import ConnectivityRasterizer
from avatar_engine.geometry.mesh_warp import MeshWarp, WarpConfig
from avatar_engine.training import losses
from avatar_engine.training.ddp import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from avatar_engine.training.discriminator import DiscriminatorConfig, MultiScaleDiscriminator

__all__ = ["LossConfig", "OptimConfig", "TrainConfig", "TrainReport", "MeshPairs", "StepSampler", "train",
           "export_weights", "load_train_config"]

log = logging.getLogger("avatar_engine")


@dataclass
class LossConfig:
    """Loss weights (see the module docstring)."""

    l1: float = 1.0
    ssim: float = 1.0
    region: float = 5.0
    region_margin: float = 0.25
    warp: float = 1.0
    gan: float = 0.05
    feature_matching: float = 1.0


@dataclass
class OptimConfig:
    """Adam settings (MetaPortrait's: 2e-4, betas (0.5, 0.999), warp at 0.1x in the joint stage)."""

    lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    warp_lr_scale: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """One training run (``configs/neural_*.toml``: top-level keys + ``[model]``, ``[loss]``, ``[optim]``,
    ``[discriminator]`` tables).

    Attributes:
        steps: total optimisation steps (both stages).
        warp_steps: steps of the warp-only stage.
        batch_size: pairs per step and process.
        seed: base seed (pairs, initialisation).
        num_workers: data-loader worker processes per training process (0: in-process).
        min_gap: smallest frame distance of a (source, driving) pair.
        train_split / val_split: cache splits to train on and to validate on.
        val_every / val_pairs / val_images: validation period (steps), pairs scored, rows in the PNG.
        checkpoint_every / log_every: periods in steps.
    """

    model: NeuralConfig = field(default_factory=NeuralConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    steps: int = 2000
    warp_steps: int = 300
    batch_size: int = 4
    seed: int = 0
    num_workers: int = 1
    min_gap: int = 1
    train_split: str = "train"
    val_split: str = "val"
    val_every: int = 250
    val_pairs: int = 32
    val_images: int = 4
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 0 or self.warp_steps < 0 or self.batch_size < 1:
            raise ValueError("steps and warp_steps must be >= 0 and batch_size >= 1")


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a TOML training config (unknown keys are an error)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return config_from_dict(TrainConfig, data)
    except OSError as exc:
        raise AvatarError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise AvatarError(f"bad config {path}: {exc}") from None


class MeshPairs(torch.utils.data.Dataset):
    """A :class:`PairDataset` whose items also carry ``mesh_grid (S, S, 2)``: the mesh warp of the source
    to the driving landmarks (:class:`~avatar_engine.geometry.mesh_warp.MeshWarp` with ``warp_config``)."""

    def __init__(self, pairs: PairDataset, size: int, warp_config: WarpConfig):
        self.pairs, self.size, self.warp_config = pairs, size, warp_config

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.pairs[index]
        mw = MeshWarp(item["source_points"].numpy(), self.size, self.warp_config)
        item["mesh_grid"] = mw.grid(item["driving_points"][None])[0].contiguous()
        return item


class StepSampler(torch.utils.data.Sampler):
    """Global pair numbers for one process: step ``k`` gives rank ``r`` the numbers
    ``(k * world + r) * batch + j``, ``j < batch``, for ``k`` in ``[start_step, steps)``. Deterministic
    and resumable at any step; processes never share a pair (the role of a DistributedSampler)."""

    def __init__(self, start_step: int, steps: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.steps, self.batch, self.rank, self.world = start_step, steps, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.steps):
            base = (k * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(self.steps - self.start, 0) * self.batch


class _Generator(nn.Module):
    """DDP-wrappable forward of one batch: source encoding + rendering."""

    def __init__(self, model: NeuralAvatar):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, source_points: torch.Tensor, z_id: torch.Tensor,
                driving_points: torch.Tensor, mesh_grid: torch.Tensor, refine: bool):
        cache = self.model.encode_source(source, source_points, z_id)
        out = self.model(cache, driving_points, mesh_grid, refine=refine)
        return out.image, out.warped


@dataclass
class TrainReport:
    """End of a run: steps done (total, this run), seconds, last logged losses, last validation, and a
    fingerprint of this process's weights (sum of |w| in float64: equal on every DDP replica)."""

    steps: int
    steps_this_run: int
    seconds: float
    last_losses: dict[str, float]
    last_val: dict[str, float]
    checkpoint: Path
    fingerprint: float


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["source"] = out["source"].float() / 255.0
    out["driving"] = out["driving"].float() / 255.0
    return out


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class _Trainer:
    def __init__(self, config: TrainConfig, cache: Path, output: Path, dist_info: DistInfo, progress: bool):
        self.cfg, self.cache, self.output, self.dist, self.progress = config, Path(cache), Path(output), dist_info, progress
        _seed_all(config.seed)
        dev = dist_info.device
        self.model = NeuralAvatar(config.model).to(dev)
        self.disc = MultiScaleDiscriminator(config.discriminator).to(dev)
        o = config.optim
        self.opt_g = torch.optim.Adam([{"params": self.model.warp_net.parameters(), "name": "warp"},
                                       {"params": self.model.refine_net.parameters(), "name": "refine"}],
                                      lr=o.lr, betas=o.betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=o.d_lr, betas=o.betas)
        self.lines = ConnectivityRasterizer(config.model.size).to(dev)
        self.step = 0
        self.ckpt_path = self.output / "checkpoint.pt"
        if self.ckpt_path.is_file():
            self._load_checkpoint()
        self.stage: str | None = None
        self.gen: nn.Module = _Generator(self.model)
        self.disc_ddp: nn.Module = self.disc
        self.autocast = dev.type == "cuda"

    # ---------------------------------------------------------------- state
    def _load_checkpoint(self) -> None:
        state = torch.load(self.ckpt_path, map_location=self.dist.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d", self.ckpt_path, self.step)

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "disc": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(),
                    "opt_d": self.opt_d.state_dict(), "step": self.step,
                    "config": dataclasses.asdict(self.cfg)}, tmp)
        os.replace(tmp, self.ckpt_path)

    def _enter_stage(self, stage: str) -> None:
        """(Re)build the DDP wrappers and learning rates for ``warp`` or ``full``."""
        if stage == self.stage:
            return
        self.stage = stage
        full = stage == "full"
        _set_requires_grad(self.model.refine_net, full)
        o = self.cfg.optim
        for g in self.opt_g.param_groups:
            g["lr"] = (o.lr * o.warp_lr_scale if full else o.lr) if g["name"] == "warp" else (o.lr if full else 0.0)
        gen = _Generator(self.model)
        if self.dist.distributed:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.gen = DDP(gen, device_ids=ids)
            self.disc_ddp = DDP(self.disc, device_ids=ids) if full else self.disc
        else:
            self.gen, self.disc_ddp = gen, self.disc

    # ---------------------------------------------------------------- one step
    def _recon(self, x: torch.Tensor, gt: torch.Tensor, region: torch.Tensor, parts: dict[str, float],
               prefix: str) -> torch.Tensor:
        lc = self.cfg.loss
        l1 = (x.float() - gt).abs().mean()
        ss = losses.ssim(x, gt)
        reg = losses.weighted_l1(x, gt, region)
        parts[f"{prefix}_l1"], parts[f"{prefix}_ssim"], parts[f"{prefix}_region"] = (float(v.detach()) for v in (l1, ss, reg))
        return lc.l1 * l1 + lc.ssim * (1 - ss) + lc.region * reg

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, lc = self.cfg, self.cfg.loss
        full = self.step >= cfg.warp_steps
        self._enter_stage("full" if full else "warp")
        b = _batch_to(batch, self.dist.device)
        gt = b["driving"] * 2 - 1
        region = losses.region_weight_map(b["driving_points"], cfg.model.size, lc.region_margin)
        parts: dict[str, float] = {}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            image, warped = self.gen(b["source"], b["source_points"], b["z_id"], b["driving_points"], b["mesh_grid"],
                                     full)
        loss = lc.warp * self._recon(warped, gt, region, parts, "warp")
        use_gan = full and (lc.gan > 0 or lc.feature_matching > 0)
        if full:
            loss = loss + self._recon(image, gt, region, parts, "out")
        if use_gan:
            cond = self.lines(b["driving_points"][..., :2]) * 2 - 1
            _set_requires_grad(self.disc, False)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                fake_logits, fake_feats = self.disc(torch.cat([image, cond], 1))
                with torch.no_grad():
                    _, real_feats = self.disc(torch.cat([gt, cond], 1))
            g_gan = losses.lsgan_g_loss(fake_logits)
            fm = losses.feature_matching(real_feats, fake_feats)
            parts["g_gan"], parts["fm"] = float(g_gan.detach()), float(fm.detach())
            loss = loss + lc.gan * g_gan + lc.feature_matching * fm
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        self.opt_g.step()
        parts["loss"] = float(loss.detach())
        if use_gan:
            _set_requires_grad(self.disc, True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits, _ = self.disc_ddp(torch.cat([torch.cat([gt, cond], 1), torch.cat([image.detach(), cond], 1)], 0))
            n = gt.shape[0]
            d_loss = losses.lsgan_d_loss([lo[:n] for lo in logits], [lo[n:] for lo in logits])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.optim.grad_clip)
            self.opt_d.step()
            parts["d_loss"] = float(d_loss.detach())
        self.step += 1
        return parts

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, pairs: MeshPairs) -> dict[str, float]:
        """Mean L1 / PSNR (in [0, 1] units) of the mesh warp, learned warp and refined output on fixed val
        pairs; writes ``samples/step_<N>.png``."""
        self.model.eval()
        dev = self.dist.device
        sums: dict[str, float] = {}
        rows = []
        n = min(self.cfg.val_pairs, len(pairs))
        for start in range(0, n, self.cfg.batch_size):
            items = [pairs[i] for i in range(start, min(start + self.cfg.batch_size, n))]
            b = _batch_to({k: torch.stack([it[k] for it in items]) for k in items[0]}, dev)
            cache = self.model.encode_source(b["source"], b["source_points"], b["z_id"])
            out = self.model(cache, b["driving_points"], b["mesh_grid"])
            mesh = torch.nn.functional.grid_sample(b["source"], b["mesh_grid"], mode="bilinear",
                                                   padding_mode="border", align_corners=False)
            gt = b["driving"]
            for name, img in (("mesh", mesh), ("warp", (out.warped + 1) / 2), ("out", ((out.image + 1) / 2).clamp(0, 1))):
                err = (img.float() - gt).abs().mean(dim=(1, 2, 3))
                mse = ((img.float() - gt) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
                sums[f"{name}_l1"] = sums.get(f"{name}_l1", 0.0) + float(err.sum())
                sums[f"{name}_psnr"] = sums.get(f"{name}_psnr", 0.0) + float((-10 * torch.log10(mse)).sum())
            for k in range(len(items)):
                if len(rows) < self.cfg.val_images:
                    rows.append(torch.cat([b["source"][k], gt[k], mesh[k], (out.warped[k] + 1) / 2,
                                           ((out.image[k] + 1) / 2).clamp(0, 1)], dim=2))
        self.model.train()
        if rows:
            sheet = (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            (self.output / "samples").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(self.output / "samples" / f"step_{self.step:06d}.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        return {k: v / max(n, 1) for k, v in sums.items()}


def _val_pairs(cfg: TrainConfig, cache: Path) -> MeshPairs | None:
    try:
        clips = load_prepared(cache, cfg.val_split, cfg.model.size)
    except AvatarError:
        return None
    pairs = PairDataset(clips, PairConfig(min_gap=cfg.min_gap, seed=cfg.seed + 7919))
    return MeshPairs(pairs, cfg.model.size, cfg.model.mesh_warp_config())


def train(config: TrainConfig, cache: str | Path, output: str | Path, steps: int | None = None,
          device: str = "auto", progress: bool = False) -> TrainReport:
    """Train (or resume) a model (see the module docstring).

    Args:
        config: the run's configuration.
        cache: ``prepare`` cache folder.
        output: run folder (checkpoint, logs, samples); an existing checkpoint there is resumed.
        steps: override ``config.steps`` (the total to reach, counting resumed steps).
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar (rank 0).
    Raises:
        InputFileError: nothing prepared for the training split.
    """
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    dist_info = init_distributed(device)
    try:
        output = Path(output)
        if dist_info.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        trainer = _Trainer(config, Path(cache), output, dist_info, progress)
        train_pairs = MeshPairs(PairDataset(load_prepared(cache, config.train_split, config.model.size),
                                            PairConfig(min_gap=config.min_gap, seed=config.seed)),
                                config.model.size, config.model.mesh_warp_config())
        val_pairs = _val_pairs(config, Path(cache)) if dist_info.is_main else None
        start = trainer.step
        sampler = StepSampler(start, config.steps, config.batch_size, dist_info.rank, dist_info.world_size)
        loader = torch.utils.data.DataLoader(train_pairs, batch_size=config.batch_size, sampler=sampler,
                                             num_workers=config.num_workers, pin_memory=dist_info.device.type == "cuda",
                                             persistent_workers=False)
        t0 = time.time()
        acc: dict[str, float] = {}
        counts: dict[str, int] = {}
        n_acc = 0
        last: dict[str, float] = {}
        last_val: dict[str, float] = {}
        log_path = output / "loss_log.jsonl"
        bar = tqdm(total=config.steps, initial=start, desc="train", unit="step",
                   disable=not (progress and dist_info.is_main))
        trainer.model.train()
        for batch in loader:
            parts = trainer.train_step(batch)
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            n_acc += 1
            bar.update(1)
            step = trainer.step
            if step % config.log_every == 0 or step == config.steps:
                loss_mean = float(all_reduce_mean(torch.tensor(acc["loss"] / n_acc, device=dist_info.device)))
                last = {k: v / counts[k] for k, v in acc.items()} | {"loss": loss_mean}
                acc, counts, n_acc = {}, {}, 0
                if dist_info.is_main:
                    bar.set_postfix(loss=f"{loss_mean:.4f}")
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"kind": "train", "step": step, "time_s": round(time.time() - t0, 2),
                                            **{k: round(v, 6) for k, v in last.items()}}) + "\n")
            if dist_info.is_main and val_pairs is not None and (step % config.val_every == 0 or step == config.steps):
                last_val = trainer.validate(val_pairs)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"kind": "val", "step": step, **{k: round(v, 5) for k, v in last_val.items()}}) + "\n")
            if step % config.checkpoint_every == 0 or step == config.steps:
                trainer.save_checkpoint()
        bar.close()
        if trainer.step == start:
            trainer.save_checkpoint()
        fingerprint = float(sum(p.detach().double().abs().sum() for p in trainer.model.parameters()))
        return TrainReport(trainer.step, trainer.step - start, time.time() - t0, last, last_val, trainer.ckpt_path,
                           fingerprint)
    finally:
        cleanup_distributed()


def export_weights(checkpoint: str | Path, path: str | Path, half: bool = True,
                   metadata: dict[str, str] | None = None) -> None:
    """Write the renderer's safetensors file (fp16 by default) from a training checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = config_from_dict(TrainConfig, state["config"])
    model = NeuralAvatar(config.model)
    model.load_state_dict(state["model"])
    save_weights(model, path, {"step": str(state["step"]), **(metadata or {})}, half=half)
