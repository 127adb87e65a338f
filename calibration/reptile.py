"""Reptile meta-training of the neural model (``avatar-engine train meta``), MetaPortrait section 3.2.

A task is one identity of the training split (all its prepared clips). One outer step: copy the shared
weights theta, run ``inner_steps`` Adam steps (a fresh optimiser, :func:`calibration.adapt.inner_steps`)
on pairs of one identity to get phi, then move the shared weights towards the adapted ones::

    theta <- theta + meta_step * mean over processes (phi - theta)

(:func:`reptile_update`). Under ``torchrun`` every process adapts to its own identity and the
differences are averaged with an all-reduce before the update (the role DDP plays in the base
trainer), so all replicas stay equal. The weights that come out are a starting point from which a few
fine-tuning steps on a new person go further than from the base model.

Outputs in ``output``: ``checkpoint.pt`` (shared weights, outer step, config; written atomically
every ``checkpoint_every`` steps and at the end, resumed when present), ``meta_log.jsonl`` (inner
losses per step; ``kind: val`` rows: held-back loss of val identities after ``val_steps`` fine-tuning
steps from the current weights), ``config.json``. :func:`export_meta_weights` writes the renderer's
safetensors file.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from avatar_engine.config import config_from_dict, load_config
from avatar_engine.data.prepare import PreparedClip, load_prepared
from avatar_engine.errors import AvatarError
from avatar_engine.models.base_model import DEFAULT_WEIGHTS, NeuralAvatar, load_model, save_weights
from avatar_engine.training.ddp import DistInfo, cleanup_distributed, init_distributed
from avatar_engine.training.trainer import LossConfig
from calibration.profiles import file_sha256
from calibration.adapt import (AdaptConfig, PairPool, adapt, heldout_loss, inner_steps, select_parameters,
                               slice_clip)

__all__ = ["MetaConfig", "MetaReport", "load_meta_config", "reptile_update", "identity_tasks", "meta_train",
           "export_meta_weights"]

log = logging.getLogger("avatar_engine")


def _recon_loss_config() -> LossConfig:
    return LossConfig(gan=0.0, feature_matching=0.0)


@dataclass
class MetaConfig:
    """One meta-training run (``configs/meta_lite.toml``).

    Attributes:
        init: weights to start from (the base model; default: the shipped lite weights).
        steps: outer (meta) steps.
        inner_steps: Adam steps per task. inner_lr, inner_betas: the inner optimiser.
        inner_batch: pairs per inner step.
        meta_step: fraction of ``phi - theta`` the shared weights move per outer step.
        meta_step_final: fraction at the last step (linear annealing; None: constant).
        params: parameter set adapted in the inner loop (:data:`calibration.adapt.PARAM_SETS`).
        grad_clip: inner gradient clipping (0: none).
        min_gap: smallest frame distance of a pair.
        min_frames: identities with fewer kept frames are not tasks.
        split: cache split of the tasks. seed: task and pair seed.
        checkpoint_every / log_every: periods in outer steps.
        val_split, val_every, val_tasks, val_steps, val_pairs: every ``val_every`` outer steps (0: never),
            fine-tune a copy for ``val_steps`` steps (``inner_lr``) on the first 80% of each of
            ``val_tasks`` val identities and log the loss on ``val_pairs`` pairs of the last 20%.
        loss: loss weights (no GAN terms).
    """

    init: str = str(DEFAULT_WEIGHTS)
    steps: int = 300
    inner_steps: int = 4
    inner_lr: float = 1e-4
    inner_betas: tuple[float, float] = (0.9, 0.999)
    inner_batch: int = 4
    meta_step: float = 0.5
    meta_step_final: float | None = None
    params: str = "all"
    grad_clip: float = 1.0
    min_gap: int = 2
    min_frames: int = 40
    split: str = "train"
    seed: int = 0
    checkpoint_every: int = 10
    log_every: int = 1
    val_split: str = "val"
    val_every: int = 0
    val_tasks: int = 2
    val_steps: int = 10
    val_pairs: int = 16
    loss: LossConfig = field(default_factory=_recon_loss_config)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.inner_steps < 1 or self.inner_batch < 1:
            raise ValueError("need steps >= 0, inner_steps >= 1 and inner_batch >= 1")
        if not 0 < self.meta_step <= 1 or (self.meta_step_final is not None and not 0 <= self.meta_step_final <= 1):
            raise ValueError("meta_step must be in (0, 1] and meta_step_final in [0, 1]")
        AdaptConfig(params=self.params)  # validates the parameter set

    def fraction(self, step: int) -> float:
        """The meta step size at outer step ``step`` (0-based)."""
        if self.meta_step_final is None or self.steps <= 1:
            return self.meta_step
        return self.meta_step + (self.meta_step_final - self.meta_step) * step / (self.steps - 1)


def load_meta_config(path: str | Path) -> MetaConfig:
    """Read a TOML meta-training config (unknown keys are an error)."""
    import tomllib

    try:
        return load_config(path, MetaConfig)
    except (OSError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise AvatarError(f"bad config {path}: {getattr(exc, 'strerror', None) or exc}") from None


@torch.no_grad()
def reptile_update(shared: torch.nn.Module, adapted: torch.nn.Module, fraction: float) -> float:
    """Move ``shared``'s parameters towards ``adapted``'s: ``theta += fraction * mean_ranks(phi - theta)``.

    The difference is averaged over the torch.distributed processes when a group is initialised.
    Returns the norm of the (averaged) difference.
    """
    theta = list(shared.parameters())
    delta = torch.cat([(pa.detach() - pt.detach()).reshape(-1) for pt, pa in zip(theta, adapted.parameters())])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(delta)
        delta /= dist.get_world_size()
    offset = 0
    for p in theta:
        n = p.numel()
        p.add_(delta[offset:offset + n].view_as(p), alpha=fraction)
        offset += n
    return float(delta.norm())


def identity_tasks(clips: list[PreparedClip], min_frames: int) -> list[list[PreparedClip]]:
    """Clips grouped by identity (sorted by identity id), identities with at least ``min_frames`` frames."""
    groups: dict[str, list[PreparedClip]] = defaultdict(list)
    for c in clips:
        groups[str(c.meta["identity"])].append(c)
    return [groups[k] for k in sorted(groups) if sum(len(c) for c in groups[k]) >= min_frames]


@dataclass
class MetaReport:
    """End of a run: outer steps done (total, this run), seconds, last inner losses, checkpoint."""

    steps: int
    steps_this_run: int
    seconds: float
    last_losses: list[float]
    last_val: float | None
    checkpoint: Path


class _ValTasks:
    """Few-shot check on val identities: adapt on the first 80%, score the last 20%."""

    def __init__(self, cfg: MetaConfig, cache: Path, model_cfg, device: torch.device):
        tasks = identity_tasks(load_prepared(cache, cfg.val_split, model_cfg.size), cfg.min_frames)
        self.pools = []
        for clips in tasks[:cfg.val_tasks]:
            adapt_part, held_part = [], []
            for c in clips:
                cut = int(len(c) * 0.8)
                adapt_part.append(slice_clip(c, 0, cut))
                held_part.append(slice_clip(c, cut, len(c)))
            warp = model_cfg.mesh_warp_config()
            self.pools.append((PairPool(adapt_part, cfg.val_steps * cfg.inner_batch, model_cfg.size, warp, cfg.seed),
                               PairPool(held_part, cfg.val_pairs, model_cfg.size, warp, cfg.seed + 1)))
        self.cfg, self.device = cfg, device

    def __call__(self, model: NeuralAvatar) -> float:
        cfg = self.cfg
        scores = []
        for train_pool, held in self.pools:
            m = copy.deepcopy(model)
            adapt(m, train_pool, AdaptConfig(steps=cfg.val_steps, batch_size=cfg.inner_batch, lr=cfg.inner_lr,
                                             betas=cfg.inner_betas, params=cfg.params, grad_clip=cfg.grad_clip,
                                             loss=cfg.loss), device=self.device)
            scores.append(heldout_loss(m, held, cfg.loss, device=self.device))
        return float(np.mean(scores))


def _save_checkpoint(path: Path, model: NeuralAvatar, step: int, cfg: MetaConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "step": step,
                "config": dataclasses.asdict(cfg)}, tmp)
    os.replace(tmp, path)


def _load_checkpoint_model(path: Path, device: torch.device) -> tuple[NeuralAvatar, int]:
    from avatar_engine.models.base_model import NeuralConfig

    state = torch.load(path, map_location=device, weights_only=True)
    model = NeuralAvatar(config_from_dict(NeuralConfig, state["model_config"])).to(device)
    model.load_state_dict(state["model"])
    return model, int(state["step"])


def meta_train(config: MetaConfig, cache: str | Path, output: str | Path, steps: int | None = None,
               device: str = "auto", progress: bool = False) -> MetaReport:
    """Run (or resume) Reptile meta-training (see the module docstring).

    Args:
        steps: override ``config.steps`` (the total to reach, counting resumed steps).
    Raises:
        InputFileError: nothing prepared for the split. AvatarError: no identity with enough frames.
        WeightsError: ``config.init`` is missing or corrupt.
    """
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    dist_info: DistInfo = init_distributed(device)
    try:
        dev = dist_info.device
        output = Path(output)
        ckpt = output / "checkpoint.pt"
        if dist_info.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        if ckpt.is_file():
            model, start = _load_checkpoint_model(ckpt, dev)
            if dist_info.is_main:
                log.info("resumed from %s at outer step %d", ckpt, start)
        else:
            model, start = load_model(config.init, dev), 0
        mcfg = model.config
        tasks = identity_tasks(load_prepared(cache, config.split, mcfg.size), config.min_frames)
        if not tasks:
            raise AvatarError(f"no {config.split} identity has {config.min_frames} prepared frames")
        val = _ValTasks(config, Path(cache), mcfg, dev) if config.val_every and dist_info.is_main else None
        log_path = output / "meta_log.jsonl"
        t0 = time.time()
        last: list[float] = []
        last_val: float | None = None
        bar = tqdm(total=config.steps, initial=start, desc="meta", unit="step",
                   disable=not (progress and dist_info.is_main))
        model.train()
        for step in range(start, config.steps):
            rng = np.random.default_rng((config.seed, step, dist_info.rank))
            task = int(rng.integers(len(tasks)))
            pool = PairPool(tasks[task], config.inner_steps * config.inner_batch, mcfg.size,
                            mcfg.mesh_warp_config(), seed=int(rng.integers(1 << 31)), min_gap=config.min_gap)
            fast = copy.deepcopy(model)
            opt = torch.optim.Adam(select_parameters(fast, config.params), lr=config.inner_lr, betas=config.inner_betas)
            last = inner_steps(fast, opt, pool.chunks(config.inner_batch, dev), config.loss, config.grad_clip)
            if not all(np.isfinite(last)):
                raise AvatarError(f"meta-training diverged at outer step {step} (non-finite inner loss)")
            moved = reptile_update(model, fast, config.fraction(step))
            bar.update(1)
            done = step + 1
            if dist_info.is_main and (done % config.log_every == 0 or done == config.steps):
                with open(log_path, "a") as f:
                    f.write(json.dumps({"kind": "train", "step": done, "time_s": round(time.time() - t0, 2),
                                        "identity": str(tasks[task][0].meta["identity"]),
                                        "inner": [round(v, 5) for v in last], "delta_norm": round(moved, 6)}) + "\n")
                bar.set_postfix(first=f"{last[0]:.3f}", last=f"{last[-1]:.3f}")
            if val is not None and (done % config.val_every == 0 or done == config.steps):
                last_val = val(model)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"kind": "val", "step": done, "heldout_loss": round(last_val, 5)}) + "\n")
            if dist_info.is_main and (done % config.checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(ckpt, model, done, config)
        bar.close()
        if dist_info.is_main and not ckpt.is_file():
            _save_checkpoint(ckpt, model, start, config)
        return MetaReport(max(config.steps, start), max(config.steps - start, 0), time.time() - t0, last, last_val,
                          ckpt)
    finally:
        cleanup_distributed()


def export_meta_weights(checkpoint: str | Path, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the renderer's fp16 safetensors file from a meta-training checkpoint (the init's hash and
    the outer step in the metadata)."""
    model, step = _load_checkpoint_model(Path(checkpoint), torch.device("cpu"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    init = Path(state["config"]["init"])
    meta = {"kind": "reptile-meta", "outer_steps": str(step),
            "init_sha256": file_sha256(init) if init.is_file() else "unknown", **(metadata or {})}
    save_weights(model, path, meta, half=True)
