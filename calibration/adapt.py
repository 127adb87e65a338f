"""Fine-tuning the neural model on one person: pair pools, the inner loop, held-back scoring.

One loop serves both personalization (:func:`adapt`: tens to hundreds of steps from the meta-learned
weights) and Reptile meta-training (:mod:`calibration.reptile`: a few inner steps per identity). It is a
thin user of :mod:`avatar_engine.training`: the model of :mod:`avatar_engine.models.base_model`, the
reconstruction losses of :mod:`avatar_engine.training.losses` (L1 + (1 - SSIM) + eye/mouth-box L1 on the
learned warp and on the refined output, weights from :class:`~avatar_engine.training.trainer.LossConfig`)
and the mesh-grid pairs of :class:`~avatar_engine.training.trainer.MeshPairs`. No discriminator: a few
hundred steps on one person do not train one (MetaPortrait's meta phase has no GAN loss either).

Pairs are self-reenactment pairs (source and driving frame of one fixed-crop segment) from prepared
clips (:mod:`avatar_engine.data.prepare`). A :class:`PairPool` builds a fixed number of them once (the
mesh grids cost a few ms each) and serves batches from them.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from avatar_engine.data.prepare import PairConfig, PairDataset, PreparedClip
from avatar_engine.errors import AvatarError
from avatar_engine.models.base_model import NeuralAvatar
from avatar_engine.training import losses
from avatar_engine.training.trainer import LossConfig, MeshPairs

__all__ = ["PARAM_SETS", "AdaptConfig", "AdaptResult", "PairPool", "slice_clip", "select_parameters",
           "reconstruction_loss", "inner_steps", "adapt", "heldout_loss"]

PARAM_SETS = ("all", "refine", "norm")
"""Which parameters fine-tuning changes: ``all``; ``refine`` (the refinement network only); ``norm``
(the modulation of the normalisation layers: AdaIN/FiLM affine layers, and every bias)."""

_NORM_PARAM = re.compile(r"(affine|film)\.|\.bias$")


def _recon_loss_config() -> LossConfig:
    return LossConfig(gan=0.0, feature_matching=0.0)


@dataclass
class AdaptConfig:
    """Options of :func:`adapt`.

    Attributes:
        steps: optimisation steps (upper bound; ``seconds`` may stop earlier).
        seconds: wall-clock budget of the loop (None: no limit): no step starts that would end after it at
            the mean step time so far (the first step always runs).
        batch_size: pairs per step.
        lr: Adam learning rate. betas: Adam betas. grad_clip: max gradient norm (0: none).
        params: one of :data:`PARAM_SETS`.
        pool: distinct training pairs built once (mesh grids) and cycled.
        min_gap: smallest frame distance of a pair.
        eval_every: held-back loss every N steps for the curve (0: only before and after).
        seed: pair drawing seed.
        loss: loss weights (``gan`` and ``feature_matching`` are ignored).
    """

    steps: int = 150
    seconds: float | None = None
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    params: str = "all"
    pool: int = 96
    min_gap: int = 2
    eval_every: int = 0
    seed: int = 0
    loss: LossConfig = field(default_factory=_recon_loss_config)

    def __post_init__(self) -> None:
        if self.params not in PARAM_SETS:
            raise ValueError(f"params must be one of {', '.join(PARAM_SETS)}, got {self.params!r}")
        if self.steps < 0 or self.batch_size < 1 or self.pool < 1 or self.lr <= 0:
            raise ValueError("need steps >= 0, batch_size >= 1, pool >= 1 and lr > 0")


def slice_clip(clip: PreparedClip, start: int, stop: int) -> PreparedClip:
    """Kept frames ``[start, stop)`` of a prepared clip (views of its arrays)."""
    return PreparedClip(clip.path, clip.meta, clip.frames[start:stop], clip.landmarks[start:stop],
                        clip.segment[start:stop], clip.identity[start:stop])


class PairPool:
    """A fixed set of self-reenactment pairs with their mesh grids, served as batches.

    Args:
        clips: prepared clips of one person (size = the model's crop size).
        count: pairs to build.
        model_size: the model's crop side; warp_config: its mesh warp (``NeuralConfig.mesh_warp_config()``).
        seed, min_gap: pair drawing (:class:`~avatar_engine.data.prepare.PairConfig`).
    Raises:
        AvatarError: the clips hold no usable pair (too few frames with a face).

    A batch is a dict of ``source (B, 3, S, S)`` and ``driving`` in ``[0, 1]``, ``source_points``,
    ``driving_points`` ``(B, 478, 3)`` crop px, ``z_id (B, 128)``, ``mesh_grid (B, S, S, 2)``.
    """

    def __init__(self, clips: list[PreparedClip], count: int, model_size: int, warp_config, seed: int = 0,
                 min_gap: int = 2):
        pairs = MeshPairs(PairDataset(clips, PairConfig(min_gap=min_gap, seed=seed)), model_size, warp_config)
        items = [pairs[i] for i in range(count)]
        self.tensors = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        for k in ("source", "driving"):
            self.tensors[k] = self.tensors[k].float() / 255.0

    def __len__(self) -> int:
        return int(self.tensors["source"].shape[0])

    def batch(self, index: torch.Tensor | slice, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {k: v[index].to(device) for k, v in self.tensors.items()}

    def batches(self, batch_size: int, device: torch.device | str = "cpu", shuffle_seed: int | None = 0
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches: the pool in a shuffled order (epoch after epoch; None: in order)."""
        n, epoch = len(self), 0
        while True:
            if shuffle_seed is None:
                order = torch.arange(n)
            else:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed * 7919 + epoch))
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                yield self.batch(order[i:i + batch_size], device)
            epoch += 1

    def chunks(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """The pool once, in order, in batches of at most ``batch_size``."""
        for i in range(0, len(self), batch_size):
            yield self.batch(slice(i, i + batch_size), device)


def select_parameters(model: NeuralAvatar, which: str) -> list[torch.nn.Parameter]:
    """The parameters of ``model`` that the set ``which`` (:data:`PARAM_SETS`) fine-tunes."""
    if which == "all":
        return list(model.parameters())
    if which == "refine":
        return list(model.refine_net.parameters())
    if which == "norm":
        return [p for n, p in model.named_parameters() if _NORM_PARAM.search(n)]
    raise ValueError(f"unknown parameter set {which!r}")


def reconstruction_loss(model: NeuralAvatar, batch: dict[str, torch.Tensor], loss: LossConfig
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch (see the module docstring) -> ``(scalar, {"warp": ..., "out": ...})``."""
    cache = model.encode_source(batch["source"], batch["source_points"], batch["z_id"])
    out = model(cache, batch["driving_points"], batch["mesh_grid"])
    gt = batch["driving"] * 2 - 1
    region = losses.region_weight_map(batch["driving_points"], model.config.size, loss.region_margin)
    parts = {}
    total = torch.zeros((), device=gt.device)
    for name, img, weight in (("warp", out.warped, loss.warp), ("out", out.image, 1.0)):
        term = (loss.l1 * (img - gt).abs().mean() + loss.ssim * (1 - losses.ssim(img, gt))
                + loss.region * losses.weighted_l1(img, gt, region))
        parts[name] = float(term.detach())
        total = total + weight * term
    return total, parts


def inner_steps(model: NeuralAvatar, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, torch.Tensor]],
                loss: LossConfig, grad_clip: float = 1.0) -> list[float]:
    """One Adam/SGD step per batch on the reconstruction loss; returns the losses (before each step)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    out = []
    for batch in batches:
        value, _ = reconstruction_loss(model, batch, loss)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        out.append(float(value.detach()))
    return out


@torch.no_grad()
def heldout_loss(model: NeuralAvatar, pool: PairPool, loss: LossConfig, batch_size: int = 8,
                 device: torch.device | str = "cpu") -> float:
    """Mean reconstruction loss over a pool (eval mode; the model's mode is restored)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for b in pool.chunks(batch_size, device):
        value, _ = reconstruction_loss(model, b, loss)
        total += float(value) * b["source"].shape[0]
        n += b["source"].shape[0]
    model.train(was)
    return total / max(n, 1)


@dataclass
class AdaptResult:
    """What :func:`adapt` did: steps, seconds of the loop (held-back scoring excluded), the curve
    ``[(step, loop seconds, held-back loss)]`` (step 0 = before), the last training losses."""

    steps: int
    seconds: float
    curve: list[tuple[int, float, float]]
    train_losses: list[float]


def adapt(model: NeuralAvatar, train: PairPool, config: AdaptConfig, heldout: PairPool | None = None,
          progress: Callable[[int, int, float, float], None] | None = None,
          device: torch.device | str = "cpu") -> AdaptResult:
    """Fine-tune ``model`` in place on ``train`` pairs (fresh Adam on the ``config.params`` set).

    Args:
        progress: called after each step as ``progress(step, total, seconds, loss)``.
        heldout: pool scored before, every ``eval_every`` steps and after (the curve).
    """
    params = select_parameters(model, config.params)
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    opt = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    curve = []
    if heldout is not None:
        curve.append((0, 0.0, heldout_loss(model, heldout, config.loss, device=device)))
    stream = train.batches(config.batch_size, device, config.seed)
    seconds, step, train_losses = 0.0, 0, []
    try:
        # stop before a step that would end past the budget (at the mean step time so far)
        while step < config.steps and (config.seconds is None or seconds * (step + 1) / max(step, 1) <= config.seconds):
            t0 = time.perf_counter()
            train_losses += inner_steps(model, opt, [next(stream)], config.loss, config.grad_clip)
            seconds += time.perf_counter() - t0
            step += 1
            if not math.isfinite(train_losses[-1]):
                raise AvatarError("fine-tuning diverged (non-finite loss); try a lower learning rate")
            if progress is not None:
                progress(step, config.steps, seconds, train_losses[-1])
            if heldout is not None and config.eval_every and step % config.eval_every == 0:
                curve.append((step, seconds, heldout_loss(model, heldout, config.loss, device=device)))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    if heldout is not None and curve[-1][0] != step:
        curve.append((step, seconds, heldout_loss(model, heldout, config.loss, device=device)))
    return AdaptResult(step, seconds, curve, train_losses)

