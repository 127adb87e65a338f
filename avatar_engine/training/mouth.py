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

Loss: L1 between ``rendered + feather * correction`` and the ground truth, weighted by the feather
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

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatar_engine.data.prepare import load_prepared
from avatar_engine.face.crop import FaceCrop
from avatar_engine.face.source import SourceFace
from avatar_engine.geometry.mouth_patch import MouthPatchConfig, cut_patch, feather, lip_masks, mouth_affine, to_patch
from avatar_engine.models.mouth_net import MouthNet, MouthNetConfig, mouth_inputs, save_mouth_net
from avatar_engine.training.core import Checkpoint, LoopPeriods, RunLog, load_toml_config, run_steps, seed_all
from avatar_engine.training.ddp import distributed

__all__ = ["MouthDataConfig", "MouthTrainConfig", "MouthPairs", "build_mouth_pairs", "load_mouth_pairs",
           "mouth_batch", "mouth_loss", "train_mouth", "MouthTrainReport", "load_mouth_config"]

log = logging.getLogger("avatar_engine")

PAIRS_VERSION = 1


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
    image = np.ascontiguousarray(crop_frames[src])
    size = image.shape[0]
    source = SourceFace(image=image, crop=FaceCrop(size / 2, size / 2, size, size), crop_image=image,
                        landmarks=np.asarray(landmarks[src], np.float32), faces_found=1,
                        key=f"{key}-{src}")
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


def build_mouth_pairs(cache: str | Path, split: str, data: MouthDataConfig, patch: MouthPatchConfig,
                      progress: bool = False) -> Path:
    """Build (or reuse) the pair cache of ``split``; returns its folder (module docstring)."""
    from avatar_engine.renderers.mesh import MeshRenderer

    folder = Path(cache).parent / "mouth" / split
    options = {"version": PAIRS_VERSION, "data": asdict(data), "patch": asdict(patch)}
    meta_path = folder / "meta.json"
    if meta_path.is_file() and {k: v for k, v in json.loads(meta_path.read_text()).items()
                                if k in options} == options:
        return folder
    clips = load_prepared(cache, split, 256)
    if data.max_clips:
        clips = clips[: data.max_clips]
    renderer = MeshRenderer("cpu")
    renderer.mouth_weights = None  # what the network corrects: the renderer without it
    rendered, target, points, source, sources, inner = [], [], [], [], [], []
    for clip in tqdm(clips, desc=f"mouth pairs {split}", unit="clip", disable=not progress):
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
        raise ValueError(f"no mouth pairs in the {split} split of {cache}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, arr in (("rendered", np.stack(rendered)), ("target", np.stack(target)), ("points", np.stack(points)),
                      ("source", np.asarray(source, np.int32)), ("sources", np.stack(sources)),
                      ("source_inner", np.stack(inner))):
        np.save(tmp / f"{name}.npy", arr)
    (tmp / "meta.json").write_text(json.dumps({**options, "clips": [c.clip_id for c in clips],
                                               "pairs": len(rendered)}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_mouth_pairs(folder: str | Path) -> MouthPairs:
    """The arrays of a pair cache, memory-mapped."""
    f = Path(folder)
    return MouthPairs(*(np.load(f / f"{n}.npy", mmap_mode="r") for n in
                        ("rendered", "target", "points", "source", "sources", "source_inner")))


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
    out = batch["rendered"] + weight * net(batch["x"])
    area = _lip_area(batch["lips"], out.shape[-1])
    w = weight * (1.0 + lip_weight * area)
    return ((out - batch["target"]).abs() * w).sum() / (w.sum() * 3.0), out


@dataclass
class MouthTrainReport:
    """What :func:`train_mouth` did."""

    checkpoint: Path
    steps: int
    steps_this_run: int
    seconds: float
    last_losses: dict[str, float]
    last_val: dict[str, float]


def _validate(net: MouthNet, pairs: MouthPairs, weight: torch.Tensor, size: int, device: torch.device
              ) -> dict[str, float]:
    """Mouth-area L1 (levels in [0, 1]) of the rendered and the corrected val patches."""
    net.eval()
    sums = {"l1_rendered": 0.0, "l1_corrected": 0.0}
    n = 0.0
    with torch.inference_mode():
        for start in range(0, len(pairs), 64):
            b = {k: v.to(device) for k, v in mouth_batch(pairs, np.arange(start, min(start + 64, len(pairs))),
                                                         size).items()}
            out = b["rendered"] + weight * net(b["x"])
            area = _lip_area(b["lips"], size)
            for key, img in (("l1_rendered", b["rendered"]), ("l1_corrected", out)):
                sums[key] += float(((img - b["target"]).abs() * area).sum() / 2.0)
            n += float(area.sum() * 3.0)
    net.train()
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
    except Exception as exc:  # no val split prepared: train without validation
        log.warning("mouth training without validation: %s", exc)
        val_pairs = None
    with distributed(device) as info:
        seed_all(config.seed)
        dev = info.device
        net = MouthNet(config.model).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.99))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total))))
        ckpt = Checkpoint(out / "checkpoint.pt", info.is_main)
        start = 0
        state = ckpt.load(dev)
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log.info("resumed %s at step %d", ckpt.path, start)
        weight = torch.from_numpy(feather(patch))[None, None].to(dev)

        def batches():
            for step in range(start, total):
                rng = np.random.default_rng((config.seed, step, info.rank))
                rows = np.sort(rng.choice(len(train_pairs), config.batch, replace=False))
                b = mouth_batch(train_pairs, rows, patch.size, rng.random(config.batch) < 0.5)
                yield {k: v.to(dev) for k, v in b.items()}

        def one_step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
            loss, _ = mouth_loss(net, batch, weight, config.lip_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            return {"loss": float(loss.detach())}

        def save(at: int) -> None:
            ckpt.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": schedule.state_dict(),
                       "step": at, "model_config": json.dumps(config.model.to_dict())})

        validate = None if val_pairs is None else (lambda step: _validate(net, val_pairs, weight, patch.size, dev))
        result = run_steps(batches(), one_step, start, total, save, info,
                           LoopPeriods(config.log_every, config.save_every, config.val_every),
                           RunLog(out / "loss_log.jsonl", info.is_main), validate, progress, "train mouth")
        if info.is_main:
            save_mouth_net(net.eval(), out / "mouth.safetensors",
                           {"steps": str(result.step), "pairs": str(len(train_pairs))})
        return MouthTrainReport(ckpt.path, result.step, result.steps_this_run, result.seconds, result.last_losses,
                                result.last_val)
