"""The training step of the neural base model, built once and shared by every user of the model.

:func:`build_step` returns a :class:`ModelStep`: the optimisers (Adam, fused on CPU), the optional
discriminator, and one callable ``step(batch, full) -> losses`` for batches of
:class:`~avatar_engine.training.batches.PairBatches` (moved with
:func:`~avatar_engine.training.batches.to_device`). Users: the base-model trainer
(:mod:`avatar_engine.training.trainer`), and anything that fine-tunes the model for a few hundred
steps on one person's frames (enrollment, meta-learning)::

    step = build_step(model, LossConfig(), OptimConfig(lr=1e-4))
    batches = PairBatches(load_prepared(cache, "person"), model.config, BatchConfig(groups=2, drivings=4))
    for k in range(300):
        losses = step(to_device(batches[k], step.device, model.config.size, step.channels_last), full=True)

Losses (images in ``[-1, 1]``): on the warped image always, and on the refined image when ``full``,
``l1 * L1 + ssim * (1 - SSIM) + region * L1(eye and mouth boxes)``; the warped image's term is
weighted by ``warp``; with ``flow`` > 0 the warping network's residual also gets ``flow * L1`` (crop
pixels) against the batch's optical-flow targets (:mod:`avatar_engine.training.flow_targets`). With a discriminator and ``full``, the refined image also gets ``gan * LSGAN
+ feature_matching * FM`` (conditioned on the target connectivity image at S), and the discriminator
takes one LSGAN step.

Fast path (:class:`StepOptions`), same losses as the plain eager step (a test holds them equal on a
fixed batch): the generator forward and the reconstruction loss run ``torch.compile``-d (Inductor
fuses the normalisation / modulation / loss element-wise work; when compilation fails the step
falls back to eager with a warning), weights and images in channels-last memory, fused Adam. On CUDA
the forward passes run under bfloat16 autocast; on CPU they stay float32 (bf16 autocast measured no
faster on the 2-core AVX-512 machine, see benchmarks/bench_train.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from avatar_engine.geometry.rasterizer import ConnectivityRasterizer
from avatar_engine.models.base_model import NeuralAvatar
from avatar_engine.training import losses
from avatar_engine.training.discriminator import MultiScaleDiscriminator
from avatar_engine.training.flow_targets import flow_loss

__all__ = ["LossConfig", "OptimConfig", "StepOptions", "ModelStep", "build_step", "generator_losses",
           "reconstruction_loss"]

log = logging.getLogger("avatar_engine")


@dataclass
class LossConfig:
    """Loss weights (see the module docstring). ``flow``: weight of the warping network's residual-flow
    error in crop pixels against the optical-flow targets of the batch
    (:mod:`avatar_engine.training.flow_targets`; 0: off, and batches carry no targets)."""

    l1: float = 1.0
    ssim: float = 1.0
    region: float = 5.0
    region_margin: float = 0.25
    warp: float = 1.0
    flow: float = 0.0
    gan: float = 0.05
    feature_matching: float = 1.0

    @property
    def uses_gan(self) -> bool:
        return self.gan > 0 or self.feature_matching > 0


@dataclass
class OptimConfig:
    """Adam settings (MetaPortrait's: 2e-4, betas (0.5, 0.999), warp at 0.1x in the joint stage)."""

    lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    warp_lr_scale: float = 0.1
    grad_clip: float = 1.0


@dataclass
class StepOptions:
    """The fast path's switches (all on by default; all off is the plain eager step).

    Attributes:
        compile: ``torch.compile`` the generator forward + losses (falls back to eager on failure).
        compile_backend: the ``torch.compile`` backend (``inductor``: generated C++/Triton kernels, the
            fast one; ``aot_eager``: the same captured forward/backward graphs run by eager kernels, which
            compiles in seconds instead of a minute and a half on a cold 2-core CPU: the test suite's choice).
        channels_last: weights and images in channels-last memory.
        fused_adam: fused Adam kernels.
    """

    compile: bool = True
    compile_backend: str = "inductor"
    channels_last: bool = True
    fused_adam: bool = True

    @classmethod
    def plain(cls) -> "StepOptions":
        return cls(compile=False, channels_last=False, fused_adam=False)


def reconstruction_loss(x: torch.Tensor, gt: torch.Tensor, region: torch.Tensor, lc: LossConfig,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``l1 * L1 + ssim * (1 - SSIM) + region * L1(boxes)`` of ``x`` against ``gt`` (``(B, 3, S, S)`` in
    ``[-1, 1]``; ``region (B, 1, S, S)``) -> ``(total, L1, SSIM, region L1)``."""
    l1 = (x.float() - gt).abs().mean()
    ss = losses.ssim(x, gt)
    reg = losses.weighted_l1(x, gt, region)
    return lc.l1 * l1 + lc.ssim * (1 - ss) + lc.region * reg, l1, ss, reg


def _recon(x: torch.Tensor, gt: torch.Tensor, region: torch.Tensor, lc: LossConfig, parts: dict[str, torch.Tensor],
           prefix: str, recon: Callable = reconstruction_loss) -> torch.Tensor:
    total, l1, ss, reg = recon(x, gt, region, lc)
    parts[f"{prefix}_l1"], parts[f"{prefix}_ssim"], parts[f"{prefix}_region"] = l1.detach(), ss.detach(), reg.detach()
    return total


class _Generator(nn.Module):
    """DDP-wrappable forward of one batch: source encoding + rendering, connectivity images given."""

    def __init__(self, model: NeuralAvatar):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, z_id: torch.Tensor, source_lines: torch.Tensor,
                driving_lines: torch.Tensor, mesh_grid: torch.Tensor, refine: bool,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = self.model.encode_source(source, None, z_id, source_lines=source_lines)
        out = self.model(cache, None, mesh_grid, refine=refine, target_lines=driving_lines)
        return out.image, out.warped, out.residual


def generator_losses(gen: nn.Module, batch: dict[str, torch.Tensor], lc: LossConfig, full: bool,
                     disc: nn.Module | None = None, cond: torch.Tensor | None = None,
                     recon: Callable = reconstruction_loss,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Forward and generator losses of one batch (on device, :func:`~avatar_engine.training.batches.to_device`).

    Args:
        gen: :class:`_Generator` (or its DDP wrapper).
        full: the joint stage (refined image scored) or the warp stage.
        disc, cond: the discriminator (parameters frozen by the caller) and the target connectivity
            image at S in ``[-1, 1]`` ``(B, 3, S, S)``, for the GAN terms (``full`` only).
        recon: :func:`reconstruction_loss` or its compiled form.
    Returns:
        ``(total loss, {part: detached scalar}, refined image (B, 3, S, S))``.
    """
    gt = batch["driving"] * 2 - 1
    region = losses.region_weight_map(batch["driving_points"], gt.shape[-1], lc.region_margin)
    parts: dict[str, torch.Tensor] = {}
    image, warped, residual = gen(batch["source"], batch["z_id"], batch["source_lines"], batch["driving_lines"],
                                  batch["mesh_grid"], full)
    loss = lc.warp * _recon(warped, gt, region, lc, parts, "warp", recon)
    if lc.flow > 0 and "flow_target" in batch:
        fl = flow_loss(residual, batch["flow_target"], batch["flow_weight"])
        parts["flow_px"] = fl.detach()
        loss = loss + lc.flow * fl
    if full:
        loss = loss + _recon(image, gt, region, lc, parts, "out", recon)
    if full and disc is not None:
        fake_logits, fake_feats = disc(torch.cat([image, cond], 1))
        with torch.no_grad():
            _, real_feats = disc(torch.cat([gt, cond], 1))
        g_gan = losses.lsgan_g_loss(fake_logits)
        fm = losses.feature_matching(real_feats, fake_feats)
        parts["g_gan"], parts["fm"] = g_gan.detach(), fm.detach()
        loss = loss + lc.gan * g_gan + lc.feature_matching * fm
    parts["loss"] = loss.detach()
    return loss, parts, image


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class ModelStep:
    """Optimisers + one training step of a :class:`NeuralAvatar` (see the module docstring).

    ``step(batch, full)`` runs one generator step (and one discriminator step when there is a
    discriminator and ``full``) and returns the loss parts as floats. ``state_dict`` /
    ``load_state_dict`` hold the optimisers (the model and discriminator are the caller's modules).
    """

    def __init__(self, model: NeuralAvatar, loss: LossConfig, optim: OptimConfig,
                 disc: MultiScaleDiscriminator | None = None, options: StepOptions | None = None,
                 distributed: bool = False):
        self.model, self.disc, self.loss, self.optim = model, disc, loss, optim
        self.options = opts = options or StepOptions()
        self.device = next(model.parameters()).device
        self.channels_last = opts.channels_last
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)
            if disc is not None:
                disc.to(memory_format=torch.channels_last)
        fused = opts.fused_adam and (self.device.type in ("cpu", "cuda"))
        self.opt_g = torch.optim.Adam([{"params": model.warp_net.parameters(), "name": "warp"},
                                       {"params": model.refine_net.parameters(), "name": "refine"}],
                                      lr=optim.lr, betas=optim.betas, fused=fused or None)
        self.opt_d = (torch.optim.Adam(disc.parameters(), lr=optim.d_lr, betas=optim.betas, fused=fused or None)
                      if disc is not None else None)
        self.lines_s = ConnectivityRasterizer(model.config.size).to(self.device) if disc is not None else None
        self.distributed = distributed
        self.autocast = self.device.type == "cuda"
        self.stage: bool | None = None
        self.gen: nn.Module = _Generator(model)
        self.disc_ddp: nn.Module | None = disc
        self._recon: Callable = reconstruction_loss
        self._compiled = False

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, dict]:
        out = {"opt_g": self.opt_g.state_dict()}
        if self.opt_d is not None:
            out["opt_d"] = self.opt_d.state_dict()
        return out

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None and "opt_d" in state:
            self.opt_d.load_state_dict(state["opt_d"])

    def set_stage(self, full: bool) -> None:
        """Warp stage (refinement frozen, warp at ``lr``) or joint stage (warp at ``lr * warp_lr_scale``)."""
        if full == self.stage:
            return
        self.stage = full
        _set_requires_grad(self.model.refine_net, full)
        o = self.optim
        for g in self.opt_g.param_groups:
            g["lr"] = (o.lr * o.warp_lr_scale if full else o.lr) if g["name"] == "warp" else (o.lr if full else 0.0)
        gen = _Generator(self.model)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.gen = DDP(gen, device_ids=ids)
            self.disc_ddp = DDP(self.disc, device_ids=ids) if (full and self.disc is not None) else self.disc
        else:
            self.gen = gen
        self._recon = reconstruction_loss
        if self.options.compile and not self.distributed:
            # two compiled regions, the generator and the reconstruction loss: one graph holding both
            # gave the refinement network zero gradients from the SSIM term (Inductor, torch 2.13 CPU;
            # aot_eager and the split graphs are right; tests/training/test_fast_step.py checks it)
            self.gen = torch.compile(gen, backend=self.options.compile_backend)
            self._recon = torch.compile(reconstruction_loss, backend=self.options.compile_backend)
            self._compiled = True

    # ---------------------------------------------------------------- one step
    def _forward(self, batch: dict[str, torch.Tensor], full: bool, disc, cond):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            if self._compiled:
                try:
                    return generator_losses(self.gen, batch, self.loss, full, disc, cond, self._recon)
                except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager
                    log.warning("torch.compile of the training step failed (%s: %s); running eager",
                                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                    self.gen, self._recon, self._compiled = _Generator(self.model), reconstruction_loss, False
            return generator_losses(self.gen, batch, self.loss, full, disc, cond, self._recon)

    def __call__(self, batch: dict[str, torch.Tensor], full: bool) -> dict[str, float]:
        """One step on ``batch`` (on this step's device). Returns ``{loss part: value}``."""
        self.set_stage(full)
        o = self.optim
        use_gan = full and self.disc is not None and self.loss.uses_gan
        cond = None
        if use_gan:
            cond = self.lines_s(batch["driving_points"][..., :2]) * 2 - 1
            if self.channels_last:
                cond = cond.contiguous(memory_format=torch.channels_last)
            _set_requires_grad(self.disc, False)
        loss, parts, image = self._forward(batch, full, self.disc if use_gan else None, cond)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], o.grad_clip)
        self.opt_g.step()
        if use_gan:
            _set_requires_grad(self.disc, True)
            gt = batch["driving"] * 2 - 1
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits, _ = self.disc_ddp(torch.cat([torch.cat([gt, cond], 1), torch.cat([image.detach(), cond], 1)], 0))
            n = gt.shape[0]
            d_loss = losses.lsgan_d_loss([lo[:n] for lo in logits], [lo[n:] for lo in logits])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), o.grad_clip)
            self.opt_d.step()
            parts["d_loss"] = d_loss.detach()
        return {k: float(v) for k, v in parts.items()}


def build_step(model: NeuralAvatar, loss: LossConfig | None = None, optim: OptimConfig | None = None,
               disc: MultiScaleDiscriminator | None = None, options: StepOptions | None = None,
               distributed: bool = False) -> ModelStep:
    """The fast training step of ``model`` (on its device): see :class:`ModelStep` and the module docstring.

    Args:
        model: the model to train (moved to channels-last memory in place when ``options.channels_last``).
        loss, optim: loss weights and Adam settings (defaults: :class:`LossConfig`, :class:`OptimConfig`).
        disc: a discriminator for the GAN terms (None: reconstruction losses only).
        options: fast-path switches (default: all on).
        distributed: wrap the forward in DistributedDataParallel (under torchrun).
    """
    return ModelStep(model, loss or LossConfig(), optim or OptimConfig(), disc, options, distributed)
