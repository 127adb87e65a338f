"""Training of the learned mouth stage (:mod:`avatar_engine.models.mouth_net`): ``avatar-engine train mouth``.

Data: self-reenactment pairs of the ``prepare`` cache. Per segment of a clip (frames sharing one
crop) the first frame is the source; every ``stride``-th other frame of the segment drives it through
the mesh renderer with its face layers (:class:`~avatar_engine.renderers.mesh.MeshRenderer`, the
same rendering the network corrects at run time, neural output being the mesh warp plus a small
correction). Each pair is stored as mouth patches (:mod:`avatar_engine.geometry.mouth_patch`) of the
rendered frame and of the real driving frame, with the driving landmarks in patch coordinates, so
training never renders. The pair cache (``<cache>/../mouth/<split>/``, rebuilt when its options
change)::

    meta.json        options, clips, pairs, version
    rendered.npy     (N, P, P, 3) uint8 rendered mouth patches
    target.npy       (N, P, P, 3) uint8 ground-truth patches (the driving frame)
    points.npy       (N, 478, 2) float32 driving landmarks in patch pixels
    source.npy       (N,) int32 row of the pair's source in the two arrays below
    sources.npy      (M, P, P, 3) uint8 source patches (at the source's own landmarks)
    source_inner.npy (M, P, P) float32 source inner-lip masks

Loss: L1 between ``rendered + feather * gate * correction`` (the gate:
:func:`~avatar_engine.models.mouth_net.correction_gate`, the mouth opening) and the ground truth, weighted by the feather
and ``lip_weight`` more on the outer-lip area, so the mouth counts most, as in the evaluation's mouth L1.
Horizontal flips double the data. The trainer core (:mod:`avatar_engine.training.core`) runs the
loop, checkpoints (``checkpoint.pt``, resumable) and the loss log; ``val`` lines give the mouth-area L1
of the rendered and of the corrected patches on the val split's pairs.
"""
from __future__ import annotations

import json
import math
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avatar_engine.data.prepare import load_prepared
from avatar_engine.errors import InputFileError
from avatar_engine.face.source import crop_source
from avatar_engine.geometry.mouth_patch import MouthPatchConfig, cut_patch, feather, lip_masks, mouth_affine, to_patch
from avatar_engine.models.mouth_net import MouthNet, MouthNetConfig, correction_gate, mouth_inputs, save_mouth_net
from avatar_engine.training import losses
from avatar_engine.training.discriminator import DiscriminatorConfig, MultiScaleDiscriminator
from avatar_engine.training.core import Checkpoint, LoopPeriods, RunLog, load_toml_config, run_steps, seed_all
from avatar_engine.training.ddp import distributed

__all__ = ["MouthDataConfig", "MouthTrainConfig", "MouthPairs", "collect_mouth_pairs", "build_mouth_pairs", "load_mouth_pairs",
           "mouth_batch", "mouth_loss", "mouth_area_l1", "MouthStep", "random_batches", "train_mouth", "MouthTrainReport", "load_mouth_config"]

log = logging.getLogger("avatar_engine")

PAIRS_VERSION = 1
_ARRAYS = ("rendered", "target", "points", "source", "sources", "source_inner")


@dataclass
class MouthDataConfig:
    """Which pairs: ``stride`` between driving frames of a segment, at most ``max_clips`` clips (0: all)."""

    stride: int = 1
    max_clips: int = 0


@dataclass
class MouthTrainConfig:
    """``configs/mouth_lite.toml``.

    Attributes:
        model: network sizes and patch geometry.
        train, val: pair selection of the train and val splits.
        steps, batch, lr: optimisation (Adam, cosine decay to 10 %).
        lip_weight: extra loss weight on the outer-lip area.
        gan, feature_matching: weights of the LSGAN and feature-matching terms of a two-scale patch
            discriminator that sees the mouth opening only (0: L1 alone, which blurs the teeth).
        val_every, save_every, log_every: loop periods in steps.
        seed: seed of the batch order.
    """

    model: MouthNetConfig = field(default_factory=MouthNetConfig)
    train: MouthDataConfig = field(default_factory=MouthDataConfig)
    val: MouthDataConfig = field(default_factory=lambda: MouthDataConfig(stride=5))
    steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    lip_weight: float = 4.0
    gan: float = 0.0
    feature_matching: float = 0.0
    val_every: int = 500
    save_every: int = 250
    log_every: int = 25
    seed: int = 0


def load_mouth_config(path: str | Path) -> MouthTrainConfig:
    """Read a mouth training TOML (sections ``[model]``, ``[model.patch]``, ``[train]``, ``[val]``)."""
    return load_toml_config(MouthTrainConfig, path)


@dataclass
class MouthPairs:
    """A pair cache (module docstring), arrays memory-mapped."""

    rendered: np.ndarray
    target: np.ndarray
    points: np.ndarray
    source: np.ndarray
    sources: np.ndarray
    source_inner: np.ndarray

    def __len__(self) -> int:
        return int(self.rendered.shape[0])


def _render_segment(renderer, crop_frames: np.ndarray, landmarks: np.ndarray, rows: np.ndarray,
                    patch: MouthPatchConfig, key: str):
    """Source patch + inner mask and, per driving row, (rendered, target, points) of one segment."""
    src = int(rows[0])
    source = crop_source(crop_frames[src], landmarks[src], f"{key}-{src}")
    image = source.crop_image
    affine = mouth_affine(landmarks[src], patch)
    head = (cut_patch(image, affine, patch.size), lip_masks(to_patch(landmarks[src], affine), patch.size)[0])
    out = []
    for r in rows[1:]:
        target = np.asarray(landmarks[r], np.float32)
        rendered = renderer.render(source, target)
        a = mouth_affine(target, patch)
        out.append((cut_patch(rendered, a, patch.size), cut_patch(np.ascontiguousarray(crop_frames[r]), a, patch.size),
                    to_patch(target, a)))
    return head, out


def collect_mouth_pairs(clips: list, data: MouthDataConfig, patch: MouthPatchConfig, progress: bool = False,
                        desc: str = "mouth pairs") -> MouthPairs:
    """The pairs of prepared ``clips`` (:class:`~avatar_engine.data.prepare.PreparedClip`), in memory."""
    from avatar_engine.renderers.mesh import MeshRenderer

    renderer = MeshRenderer("cpu")
    renderer.mouth_weights = None  # what the network corrects: the renderer without it
    rendered, target, points, source, sources, inner = [], [], [], [], [], []
    for clip in tqdm(clips, desc=desc, unit="clip", disable=not progress):
        for seg in np.unique(clip.segment):
            rows = np.flatnonzero(clip.segment == seg)
            rows = np.concatenate([rows[:1], rows[1:][:: data.stride]])
            if len(rows) < 2:
                continue
            (s_patch, s_inner), items = _render_segment(renderer, clip.frames, clip.landmarks, rows, patch,
                                                        clip.clip_id)
            sources.append(s_patch)
            inner.append(s_inner)
            for r, t, p in items:
                rendered.append(r)
                target.append(t)
                points.append(p)
                source.append(len(sources) - 1)
    if not rendered:
        raise ValueError("no mouth pairs: every segment has a single frame")
    return MouthPairs(np.stack(rendered), np.stack(target), np.stack(points), np.asarray(source, np.int32),
                      np.stack(sources), np.stack(inner))


def build_mouth_pairs(cache: str | Path, split: str, data: MouthDataConfig, patch: MouthPatchConfig,
                      progress: bool = False) -> Path:
    """Build (or reuse) the pair cache of ``split``; returns its folder (module docstring)."""
    folder = Path(cache).parent / "mouth" / split
    options = {"version": PAIRS_VERSION, "data": asdict(data), "patch": asdict(patch)}
    meta_path = folder / "meta.json"
    if meta_path.is_file() and {k: v for k, v in json.loads(meta_path.read_text()).items()
                                if k in options} == options:
        return folder
    clips = load_prepared(cache, split, 256)
    if data.max_clips:
        clips = clips[: data.max_clips]
    pairs = collect_mouth_pairs(clips, data, patch, progress, f"mouth pairs {split}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _ARRAYS:
        np.save(tmp / f"{name}.npy", getattr(pairs, name))
    (tmp / "meta.json").write_text(json.dumps({**options, "clips": [c.clip_id for c in clips],
                                               "pairs": len(pairs)}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_mouth_pairs(folder: str | Path) -> MouthPairs:
    """The arrays of a pair cache, memory-mapped."""
    f = Path(folder)
    return MouthPairs(*(np.load(f / f"{n}.npy", mmap_mode="r") for n in _ARRAYS))


def mouth_batch(pairs: MouthPairs, rows: np.ndarray, size: int, flip: np.ndarray | None = None
                ) -> dict[str, torch.Tensor]:
    """Network inputs ``x (B, 9, P, P)``, ``rendered`` / ``target (B, 3, P, P)`` in [-1, 1] and the
    outer-lip mask ``lips (B, 1, P, P)`` of pair ``rows``; ``flip (B,) bool`` mirrors those pairs."""
    xs, tgt, lips = [], [], []
    for i, r in enumerate(rows):
        x = mouth_inputs(pairs.rendered[r], pairs.sources[pairs.source[r]], pairs.points[r],
                         pairs.source_inner[pairs.source[r]], size)
        t = pairs.target[r].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        if flip is not None and flip[i]:
            x, t = x[:, :, ::-1], t[:, :, ::-1]
        xs.append(x)
        tgt.append(t)
        lips.append(x[7:8])
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)))
    return {"x": x, "rendered": x[:, :3], "target": torch.from_numpy(np.ascontiguousarray(np.stack(tgt))),
            "lips": torch.from_numpy(np.ascontiguousarray(np.stack(lips)))}


def _lip_area(lips: torch.Tensor, size: int) -> torch.Tensor:
    """The outer-lip mask grown by about a tenth of the patch (the evaluation's margin), ``(B, 1, P, P)``."""
    k = max(3, (size // 10) | 1)
    return torch.nn.functional.max_pool2d(lips, k, 1, k // 2)


def mouth_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], weight: torch.Tensor, lip_weight: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted L1 loss, corrected patches ``(B, 3, P, P)``) of one batch; ``weight (1, 1, P, P)`` is the feather."""
    out = batch["rendered"] + weight * correction_gate(batch["x"]) * net(batch["x"])
    area = _lip_area(batch["lips"], out.shape[-1])
    w = weight * (1.0 + lip_weight * area)
    return ((out - batch["target"]).abs() * w).sum() / (w.sum() * 3.0), out


class MouthStep:
    """One Adam step of :func:`mouth_loss` (cosine decay of the rate to 10 % over ``total`` steps),
    plus, when ``gan`` or ``feature_matching`` is on, the LSGAN terms of a patch discriminator (its
    own Adam step first) that sees the gated mouth opening and the lip masks:
    ``step(batch) -> {"loss", "l1", ...: float}``; ``state_dict`` / ``load_state_dict`` for checkpoints
    (a checkpoint without a discriminator starts a fresh one)."""

    def __init__(self, net: MouthNet, lr: float, lip_weight: float, total: int, device: torch.device | str = "cpu",
                 gan: float = 0.0, feature_matching: float = 0.0):
        self.net, self.lip_weight, self.gan, self.fm = net, lip_weight, gan, feature_matching
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, self._decay(total))
        self.weight = torch.from_numpy(feather(net.config.patch))[None, None].to(device)
        self.disc = None
        if gan > 0 or feature_matching > 0:
            self.disc = MultiScaleDiscriminator(DiscriminatorConfig(scales=2, channels=32, layers=3,
                                                                    in_channels=5)).to(device)
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.99))
            self.d_schedule = torch.optim.lr_scheduler.LambdaLR(self.d_opt, self._decay(total))

    @staticmethod
    def _decay(total: int):
        return lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total)))

    def _d_input(self, image: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return torch.cat([image * gate, x[:, 6:8]], 1)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.net.train()
        loss, out = mouth_loss(self.net, batch, self.weight, self.lip_weight)
        parts = {"l1": float(loss.detach())}
        if self.disc is not None:
            x = batch["x"]
            gate = correction_gate(x)
            real = self._d_input(batch["target"], x, gate)
            fake = self._d_input(out, x, gate)
            real_logits, real_feats = self.disc(real)
            fake_logits, _ = self.disc(fake.detach())
            d_loss = losses.lsgan_d_loss(real_logits, fake_logits)
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            self.d_schedule.step()
            g_logits, g_feats = self.disc(fake)
            g_gan = losses.lsgan_g_loss(g_logits)
            g_fm = losses.feature_matching(real_feats, g_feats)
            loss = loss + self.gan * g_gan + self.fm * g_fm
            parts.update(d=float(d_loss.detach()), g_gan=float(g_gan.detach()), g_fm=float(g_fm.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.schedule.step()
        return {"loss": float(loss.detach()), **parts}

    def state_dict(self) -> dict:
        state = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.schedule.state_dict()}
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), d_optimizer=self.d_opt.state_dict(),
                         d_scheduler=self.d_schedule.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.d_opt.load_state_dict(state["d_optimizer"])
            self.d_schedule.load_state_dict(state["d_scheduler"])
        elif self.disc is not None:
            self.d_schedule.last_epoch = self.schedule.last_epoch  # a fresh discriminator, on the same schedule


def random_batches(pairs: MouthPairs, batch: int, seed: int, start: int, total: int, rank: int = 0,
                   device: torch.device | str = "cpu"):
    """Batches of steps ``start .. total - 1``: step ``k`` draws ``batch`` pairs (without replacement
    when there are enough) and flips half of them, from a seed of ``(seed, k, rank)``, so a resumed run
    sees the batches it would have seen."""
    for step in range(start, total):
        rng = np.random.default_rng((seed, step, rank))
        rows = np.sort(rng.choice(len(pairs), batch, replace=len(pairs) < batch))
        b = mouth_batch(pairs, rows, pairs.rendered.shape[1], rng.random(batch) < 0.5)
        yield {k: v.to(device) for k, v in b.items()}


@dataclass
class MouthTrainReport:
    """What :func:`train_mouth` did."""

    checkpoint: Path
    steps: int
    steps_this_run: int
    seconds: float
    last_losses: dict[str, float]
    last_val: dict[str, float]


def mouth_area_l1(net: MouthNet, pairs: MouthPairs, weight: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Mouth-area L1 (levels in [0, 1], inside the outer lips grown as in the evaluation) of the
    rendered (``l1_rendered``) and the corrected (``l1_corrected``) patches of ``pairs``."""
    was_training = net.training
    net.eval()
    device = weight.device
    size = pairs.rendered.shape[1]
    sums = {"l1_rendered": 0.0, "l1_corrected": 0.0}
    n = 0.0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch):
            b = {k: v.to(device) for k, v in mouth_batch(pairs, np.arange(start, min(start + batch, len(pairs))),
                                                         size).items()}
            out = b["rendered"] + weight * correction_gate(b["x"]) * net(b["x"])
            area = _lip_area(b["lips"], size)
            for key, img in (("l1_rendered", b["rendered"]), ("l1_corrected", out)):
                sums[key] += float(((img - b["target"]).abs() * area).sum() / 2.0)
            n += float(area.sum() * 3.0)
    net.train(was_training)
    return {k: v / max(n, 1.0) for k, v in sums.items()}


def train_mouth(config: MouthTrainConfig, cache: str | Path, output: str | Path, steps: int | None = None,
                device: str = "auto", progress: bool = False) -> MouthTrainReport:
    """Train (or resume) the mouth network; the run folder gets ``checkpoint.pt``, ``loss_log.jsonl``
    and ``mouth.safetensors`` (fp16) at the end."""
    total = int(steps or config.steps)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    patch = config.model.patch
    train_pairs = load_mouth_pairs(build_mouth_pairs(cache, "train", config.train, patch, progress))
    try:
        val_pairs = load_mouth_pairs(build_mouth_pairs(cache, "val", config.val, patch, progress))
    except (InputFileError, ValueError) as exc:  # no val split prepared: train without validation
        log.warning("mouth training without validation: %s", exc)
        val_pairs = None
    with distributed(device) as info:
        seed_all(config.seed)
        dev = info.device
        net = MouthNet(config.model).to(dev)
        step_fn = MouthStep(net, config.lr, config.lip_weight, total, dev, config.gan, config.feature_matching)
        ckpt = Checkpoint(out / "checkpoint.pt", info.is_main)
        start = 0
        state = ckpt.load(dev)
        if state is not None:
            step_fn.load_state_dict(state)
            start = int(state["step"])
            log.info("resumed %s at step %d", ckpt.path, start)

        def save(at: int) -> None:
            ckpt.save({**step_fn.state_dict(), "step": at, "model_config": json.dumps(config.model.to_dict())})

        validate = None if val_pairs is None else (
            lambda step: mouth_area_l1(net, val_pairs, step_fn.weight))
        result = run_steps(random_batches(train_pairs, config.batch, config.seed, start, total, info.rank, dev),
                           step_fn, start, total, save, info,
                           LoopPeriods(config.log_every, config.save_every, config.val_every),
                           RunLog(out / "loss_log.jsonl", info.is_main), validate, progress, "train mouth")
        if info.is_main:
            save_mouth_net(net.eval(), out / "mouth.safetensors",
                           {"steps": str(result.step), "pairs": str(len(train_pairs))})
        return MouthTrainReport(ckpt.path, result.step, result.steps_this_run, result.seconds, result.last_losses,
                                result.last_val)
