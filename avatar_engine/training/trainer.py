"""Training loop of the neural base model (``avatar-engine train``).

Data: self-reenactment pairs from the ``prepare`` cache, whole batches built in the data-loader workers
(:class:`avatar_engine.training.batches.PairBatches`: ``batch_size / drivings`` sources with ``drivings``
driving frames each, mesh-warp grids and connectivity images included). The step is the shared fast
step (:func:`avatar_engine.training.step.build_step`, switches in the ``[step]`` table); the loop,
checkpoint and log are the trainer core's (:mod:`avatar_engine.training.core`).

Stages (as in the paper): steps ``[0, warp_steps)`` train the warping network alone (loss on the
warped image); then warp + refinement together, the warping network at ``warp_lr_scale`` times the
learning rate. Losses per image (warped, and refined in the second stage), images in ``[-1, 1]``:
``l1 * L1 + ssim * (1 - SSIM) + region * L1(eye and mouth boxes)``; in the second stage the refined
image also gets ``gan * LSGAN + feature_matching * FM`` from a multi-scale patch discriminator
conditioned on the target connectivity image (our stand-in for the unavailable pretrained VGG loss).

Distribution: launched by ``torchrun``, every process trains a DistributedDataParallel replica on its
own slice of the batch stream (:class:`StepSampler`); rank 0 logs, validates and writes checkpoints.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from avatar_engine.config import config_from_dict
from avatar_engine.data.prepare import PairConfig, PairDataset, load_prepared
from avatar_engine.errors import AvatarError
from avatar_engine.geometry.mesh_warp import MeshWarp, WarpConfig
from avatar_engine.models.base_model import NeuralAvatar, NeuralConfig, load_model, save_weights
from avatar_engine.training.batches import BatchConfig, PairBatches, to_device
from avatar_engine.training.core import Checkpoint, LoopPeriods, RunLog, load_toml_config, run_steps, seed_all
from avatar_engine.training.ddp import DistInfo, distributed
from avatar_engine.training.discriminator import DiscriminatorConfig, MultiScaleDiscriminator
from avatar_engine.training.step import LossConfig, OptimConfig, StepOptions, build_step

__all__ = ["LossConfig", "OptimConfig", "TrainConfig", "TrainReport", "MeshPairs", "StepSampler", "train",
           "export_weights", "load_train_config"]

log = logging.getLogger("avatar_engine")


@dataclass
class TrainConfig:
    """One training run (``configs/neural_*.toml``: top-level keys + ``[model]``, ``[loss]``, ``[optim]``,
    ``[discriminator]`` tables).

    Attributes:
        steps: total optimisation steps (both stages).
        warp_steps: steps of the warp-only stage.
        batch_size: pairs per step and process.
        drivings: driving frames per source in a batch (divides ``batch_size``; a source's mesh is
            built once for all of them: :class:`~avatar_engine.training.batches.PairBatches`).
        seed: base seed (pairs, initialisation).
        num_workers: data-loader worker processes per training process (0: in-process).
        min_gap: smallest frame distance of a (source, driving) pair.
        train_split / val_split: cache splits to train on and to validate on.
        val_every / val_pairs / val_images: validation period (steps), pairs scored, rows in the PNG.
        checkpoint_every / log_every: periods in steps.
        step: the fast path's switches (``[step]`` table: compile, channels_last, fused_adam).
        ema: decay of an exponential moving average of the generator's weights (0: off). When on, the
            average is what validation scores (``ema_*`` next to the raw weights' numbers), what the
            checkpoint keeps beside the weights and what :func:`export_weights` writes (0.999: about the
            last 1,000 steps; Adam at a constant rate leaves the raw weights noisy).
        init: weights (safetensors, :func:`~avatar_engine.models.base_model.load_model`) to start a new
            run from, at step ``init_step`` (e.g. ``warp_steps``: fine-tuning in the joint stage);
            ignored when the run folder has a checkpoint.
    """

    model: NeuralConfig = field(default_factory=NeuralConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    steps: int = 2000
    warp_steps: int = 300
    batch_size: int = 4
    drivings: int = 1
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
    step: StepOptions = field(default_factory=StepOptions)
    init: str | None = None
    init_step: int = 0
    ema: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.steps < 0 or self.warp_steps < 0 or self.batch_size < 1:
            raise ValueError("steps and warp_steps must be >= 0 and batch_size >= 1")
        if self.drivings < 1 or self.batch_size % self.drivings:
            raise ValueError(f"drivings ({self.drivings}) must be >= 1 and divide batch_size ({self.batch_size})")

    def batch_config(self) -> BatchConfig:
        return BatchConfig(groups=self.batch_size // self.drivings, drivings=self.drivings, min_gap=self.min_gap,
                           seed=self.seed, flow_targets=self.loss.flow > 0)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a TOML training config (unknown keys are an error)."""
    return load_toml_config(TrainConfig, path)


class MeshPairs(torch.utils.data.Dataset):
    """A :class:`PairDataset` whose items also carry ``mesh_grid (S, S, 2)``: the mesh warp of the source
    to the driving landmarks (:class:`~avatar_engine.geometry.mesh_warp.MeshWarp` with ``warp_config``).

    The plain per-pair path (validation pairs, and the reference the batched
    :class:`~avatar_engine.training.batches.PairBatches` is tested against)."""

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
    """Batch numbers for one process: step ``k`` gives rank ``r`` batch ``k * world + r`` of
    :class:`~avatar_engine.training.batches.PairBatches`, for ``k`` in ``[start_step, steps)``.
    Deterministic and resumable at any step; processes never share a batch (the role of a DistributedSampler)."""

    def __init__(self, start_step: int, steps: int, rank: int = 0, world: int = 1):
        self.start, self.steps, self.rank, self.world = start_step, steps, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start * self.world + self.rank, self.steps * self.world, self.world))

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


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


class _Trainer:
    """Model, discriminator, the shared fast step (:func:`~avatar_engine.training.step.build_step`) and
    the checkpoint of one run."""

    def __init__(self, config: TrainConfig, cache: Path, output: Path, dist_info: DistInfo, progress: bool):
        self.cfg, self.cache, self.output, self.dist, self.progress = config, Path(cache), Path(output), dist_info, progress
        seed_all(config.seed)
        dev = dist_info.device
        self.model = NeuralAvatar(config.model).to(dev)
        self.disc = MultiScaleDiscriminator(config.discriminator).to(dev)
        self.fast = build_step(self.model, config.loss, config.optim,
                               self.disc if config.loss.uses_gan else None, config.step, dist_info.distributed)
        self.step = 0
        self.ema: AveragedModel | None = None
        self.ckpt = Checkpoint(self.output / "checkpoint.pt", dist_info.is_main)
        self.ckpt_path = self.ckpt.path
        state = self.ckpt.load(dev)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.disc.load_state_dict(state["disc"])
            self.fast.load_state_dict(state)
            self.step = int(state["step"])
            self.start_average(state.get("ema"))
            if dist_info.is_main:
                log.info("resumed from %s at step %d", self.ckpt.path, self.step)

    def start_average(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """The weight average (``TrainConfig.ema``), from the current weights or a checkpoint's ``ema``."""
        if self.cfg.ema <= 0:
            return
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema))
        if state is not None:
            self.ema.load_state_dict(state)

    def save_checkpoint(self) -> None:
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        self.ckpt.save({"model": self.model.state_dict(), "disc": self.disc.state_dict(), **self.fast.state_dict(),
                        **extra, "step": self.step, "config": dataclasses.asdict(self.cfg)})

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step on a CPU batch (:class:`~avatar_engine.training.batches.PairBatches`, or stacked
        :class:`MeshPairs` items); the stage follows ``warp_steps``. The weight average (if on) follows."""
        b = to_device(batch, self.dist.device, self.cfg.model, self.fast.channels_last)
        parts = self.fast(b, full=self.step >= self.cfg.warp_steps)
        self.step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return parts

    def validate_all(self, pairs: MeshPairs) -> dict[str, float]:
        """:meth:`validate` of the weights, and of their average (keys ``ema_*``; its PNG ``step_<N>_ema``)."""
        out = self.validate(pairs)
        if self.ema is not None:
            out.update({f"ema_{k}": v for k, v in self.validate(pairs, self.ema.module, "_ema").items()})
        return out

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, pairs: MeshPairs, model: NeuralAvatar | None = None, tag: str = "") -> dict[str, float]:
        """Mean L1 / PSNR (in [0, 1] units) of the mesh warp, learned warp and refined output of ``model``
        (default: the trained weights) on fixed val pairs; writes ``samples/step_<N><tag>.png``."""
        model = model if model is not None else self.model
        model.eval()
        dev = self.dist.device
        sums: dict[str, float] = {}
        rows = []
        n = min(self.cfg.val_pairs, len(pairs))
        for start in range(0, n, self.cfg.batch_size):
            items = [pairs[i] for i in range(start, min(start + self.cfg.batch_size, n))]
            b = to_device({k: torch.stack([it[k] for it in items]) for k in items[0]}, dev, self.cfg.model)
            cache = model.encode_source(b["source"], b["source_points"], b["z_id"])
            out = model(cache, b["driving_points"], b["mesh_grid"])
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
        model.train()
        if rows:
            sheet = (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            (self.output / "samples").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(self.output / "samples" / f"step_{self.step:06d}{tag}.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
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
    with distributed(device) as dist_info:
        output = Path(output)
        if dist_info.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        trainer = _Trainer(config, Path(cache), output, dist_info, progress)
        if not trainer.ckpt.exists() and config.init:
            trainer.model.load_state_dict(load_model(config.init).state_dict())
            trainer.step = config.init_step
        if trainer.ema is None:
            trainer.start_average()
        batches = PairBatches(load_prepared(cache, config.train_split, config.model.size), config.model,
                              config.batch_config())
        val_pairs = _val_pairs(config, Path(cache)) if dist_info.is_main else None
        start = trainer.step
        sampler = StepSampler(start, config.steps, dist_info.rank, dist_info.world_size)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=sampler, num_workers=config.num_workers,
                                             pin_memory=dist_info.device.type == "cuda",
                                             prefetch_factor=4 if config.num_workers else None)
        trainer.model.train()

        def save(step: int) -> None:
            trainer.save_checkpoint()

        result = run_steps(loader, trainer.train_step, start, config.steps, save, dist_info,
                           LoopPeriods(config.log_every, config.checkpoint_every, config.val_every),
                           RunLog(output / "loss_log.jsonl", dist_info.is_main),
                           (lambda step: trainer.validate_all(val_pairs)) if val_pairs is not None else None, progress)
        fingerprint = float(sum(p.detach().double().abs().sum() for p in trainer.model.parameters()))
        return TrainReport(result.step, result.steps_this_run, result.seconds, result.last_losses, result.last_val,
                           trainer.ckpt.path, fingerprint)


def export_weights(checkpoint: str | Path, path: str | Path, half: bool = True,
                   metadata: dict[str, str] | None = None, average: bool = True) -> None:
    """Write the renderer's safetensors file (fp16 by default) from a training checkpoint: the weight
    average where the run kept one (``TrainConfig.ema``) and ``average``, else the trained weights."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = config_from_dict(TrainConfig, state["config"])
    model = NeuralAvatar(config.model)
    averaged = average and "ema" in state
    if averaged:
        ema = AveragedModel(model)
        ema.load_state_dict(state["ema"])
        model = ema.module
    else:
        model.load_state_dict(state["model"])
    save_weights(model, path, {"step": str(state["step"]), "weights": "ema" if averaged else "trained",
                               **(metadata or {})}, half=half)
