"""Personalization: the capture prepared like the training data, fine-tuned, scored before/after.

:func:`prepare_capture` runs :func:`avatar_engine.data.prepare.prepare_dataset` (the training data's
code path: tracker, segments with fixed crops, identity codes) on the capture video through a
one-clip corpus. :func:`split_holdout` keeps the first 80% of the kept frames for adaptation and
holds back the last 20%. :func:`personalize` fine-tunes a copy of the start weights (the meta-learned
ones when shipped) with :func:`calibration.adapt.adapt` and scores both models on held-back pairs
(:func:`score_pairs`: PSNR, mouth L1, identity distance to the ground truth), with a contact sheet.
Then :func:`personalize_bank` keeps the person's own mouth interiors (teeth, tongue, cavity) from the
adaptation frames as a mouth bank (:mod:`avatar_engine.geometry.mouth_bank`) and scores the held-back
mouth L1 of the face layers without and with it; optionally (``mouth``) :func:`personalize_mouth`
fine-tunes the learned mouth stage (:mod:`avatar_engine.models.mouth_net`) on the same split.
"""
from __future__ import annotations

import copy
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from avatar_engine.data.prepare import PreparedClip, PrepareConfig, load_prepared, prepare_dataset
from avatar_engine.errors import AvatarError
from avatar_engine.eval.metrics import masked_l1, psnr, region_masks
from avatar_engine.face.source import crop_source
from avatar_engine.geometry.mouth_bank import MouthBank, MouthBankConfig, build_mouth_bank
from avatar_engine.models.base_model import DEFAULT_WEIGHTS, NeuralAvatar, load_model
from avatar_engine.models.mouth_net import DEFAULT_MOUTH_WEIGHTS, MouthNet, load_mouth_net
from avatar_engine.models.weights import WEIGHTS_DIR
from avatar_engine.training.mouth import MouthDataConfig, MouthStep, collect_mouth_pairs, mouth_area_l1, random_batches
from calibration.adapt import AdaptConfig, AdaptResult, PairPool, adapt, slice_clip

__all__ = ["META_WEIGHTS", "start_weights", "MouthAdaptConfig", "PersonalizeConfig", "PersonalizeResult",
           "MouthAdaptResult", "prepare_capture", "split_holdout", "score_pairs", "contact_sheet", "personalize",
           "personalize_mouth", "MouthBankResult", "personalize_bank", "score_mouth_bank"]

log = logging.getLogger("avatar_engine")

META_WEIGHTS = WEIGHTS_DIR / "neural_lite_meta.safetensors"
"""The shipped Reptile meta-learned start (``avatar-engine train meta``), when present."""

_SPLIT = "enroll"


def start_weights() -> Path:
    """The weights fine-tuning starts from: :data:`META_WEIGHTS` if shipped, else the base model."""
    return META_WEIGHTS if META_WEIGHTS.is_file() else DEFAULT_WEIGHTS


def _default_adapt() -> AdaptConfig:
    # refinement network only, Adam 3e-4: the lowest held-back loss per second of the measured settings
    # (README, Enrollment); the warping network stays as trained on many people
    return AdaptConfig(steps=120, seconds=45.0, lr=3e-4, params="refine")


@dataclass
class MouthAdaptConfig:
    """Fine-tuning of the learned mouth stage: at most ``steps`` Adam steps of ``batch`` mouth pairs or
    ``seconds`` of loop time, rate ``lr`` (cosine decay), from ``init`` (None: the shipped weights)."""

    steps: int = 100
    seconds: float = 30.0
    lr: float = 3e-4
    batch: int = 16
    lip_weight: float = 4.0
    init: Path | None = None
    seed: int = 0


@dataclass
class PersonalizeConfig:
    """Options of :func:`personalize`.

    Attributes:
        adapt: the fine-tuning (steps, time budget, learning rate, parameter set).
        init: start weights (None: :func:`start_weights`).
        holdout: fraction of the kept frames held back (the last ones).
        eval_pairs: held-back pairs scored (PSNR, mouth L1; and the held-back loss).
        identity_pairs: of those, how many also get the identity distance (dlib, ~0.1 s each).
        sheet_rows: rows of the contact sheet.
        bank: choice of the mouth bank's exemplars (None: no bank, the procedural mouth interior).
        mouth: fine-tuning of the learned mouth stage (None, the default: no learned stage in the profile).
    """

    adapt: AdaptConfig = field(default_factory=_default_adapt)
    init: Path | None = None
    holdout: float = 0.2
    eval_pairs: int = 24
    identity_pairs: int = 8
    sheet_rows: int = 4
    bank: MouthBankConfig | None = field(default_factory=MouthBankConfig)
    mouth: MouthAdaptConfig | None = None

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")


def prepare_capture(video: str | Path, work: str | Path, identity: str = "enrollee") -> list[PreparedClip]:
    """Prepare one video like the training data (a one-row corpus in ``work``); its prepared clip.

    Raises:
        AvatarError: no usable frame in the video.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "clips.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "split", "identity", "path"])
        w.writerow(["capture", _SPLIT, identity, str(Path(video).resolve())])
    report = prepare_dataset(PrepareConfig(data=work, cache=work / "prepared", splits=(_SPLIT,)))
    summary = report.clips[0]
    if summary.error or not summary.frames_kept:
        raise AvatarError(f"no usable face frame in the capture ({summary.error or 'every frame skipped'})")
    return load_prepared(work / "prepared", _SPLIT)


def split_holdout(clips: list[PreparedClip], holdout: float) -> tuple[list[PreparedClip], list[PreparedClip]]:
    """``(adaptation clips, held-back clips)``: the last ``holdout`` of the kept frames (in clip order) held back."""
    total = sum(len(c) for c in clips)
    cut = int(round(total * (1 - holdout)))
    adapt_part, held = [], []
    start = 0
    for c in clips:
        local = min(max(cut - start, 0), len(c))
        if local > 0:
            adapt_part.append(slice_clip(c, 0, local))
        if local < len(c):
            held.append(slice_clip(c, local, len(c)))
        start += len(c)
    return adapt_part, held


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """``(3, S, S)`` in ``[-1, 1]`` -> ``(S, S, 3) uint8``."""
    return ((img.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def _render(model: NeuralAvatar, pool: PairPool, batch_size: int = 8) -> list[np.ndarray]:
    model.eval()
    out = []
    for b in pool.chunks(batch_size):
        cache = model.encode_source(b["source"], b["source_points"], b["z_id"])
        out += [_to_uint8(x) for x in model(cache, b["driving_points"], b["mesh_grid"]).image]
    return out


def score_pairs(model: NeuralAvatar, pool: PairPool, identity_pairs: int = 8, encoder=None) -> dict[str, float]:
    """Mean PSNR (dB), mouth L1 (``[0, 1]``, inside the mouth region of the ground truth) and identity
    distance (dlib descriptors of output and ground truth, first ``identity_pairs`` pairs) of
    ``model`` on ``pool``, and ``pairs``."""
    frames = _render(model, pool)
    gts = [_to_uint8(g * 2 - 1) for g in pool.tensors["driving"]]
    pts = pool.tensors["driving_points"].numpy()
    ps, mouth, ids = [], [], []
    for i, (img, gt) in enumerate(zip(frames, gts)):
        ps.append(psnr(img, gt))
        mouth.append(masked_l1(img, gt, region_masks(pts[i], gt.shape[:2])["mouth"]))
        if encoder is not None and i < identity_pairs:
            a, b = encoder.embed(img, pts[i]), encoder.embed(gt, pts[i])
            if a is not None and b is not None:
                ids.append(encoder.distance(a, b))
    return {"psnr": float(np.mean(ps)), "mouth_l1": float(np.nanmean(mouth)),
            "identity_distance": float(np.mean(ids)) if ids else float("nan"), "pairs": float(len(frames))}


def contact_sheet(before: NeuralAvatar, after: NeuralAvatar, pool: PairPool, rows: int = 4) -> np.ndarray:
    """``(24 + rows * S, 4 * S, 3) uint8``: a label strip, then source | ground truth | before | after, one
    held-back pair per row."""
    n = min(rows, len(pool))
    sub = copy.copy(pool)
    sub.tensors = {k: v[:n] for k, v in pool.tensors.items()}
    b, a = _render(before, sub), _render(after, sub)
    size = pool.tensors["source"].shape[-1]
    header = np.full((24, 4 * size, 3), 255, np.uint8)
    for k, label in enumerate(("source", "ground truth", "before", "after")):
        cv2.putText(header, label, (k * size + 8, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    lines = [header]
    for i in range(n):
        src = _to_uint8(sub.tensors["source"][i] * 2 - 1)
        gt = _to_uint8(sub.tensors["driving"][i] * 2 - 1)
        lines.append(np.concatenate([src, gt, b[i], a[i]], axis=1))
    return np.concatenate(lines, axis=0)


@dataclass
class MouthAdaptResult:
    """The personalized mouth network, its start file, mouth-patch L1 on the held-back pairs before
    and after, steps and loop seconds."""

    net: MouthNet
    init: Path
    before: float
    after: float
    steps: int
    seconds: float


def personalize_mouth(adapt_clips: list[PreparedClip], held: list[PreparedClip], config: MouthAdaptConfig,
                      progress: Callable[[int, int, float, float], None] | None = None) -> MouthAdaptResult:
    """Fine-tune the learned mouth stage on ``adapt_clips``' mouth pairs; score it on ``held``'s.

    ``progress(step, steps, seconds, loss)`` after every step. Raises WeightsError: the start weights
    are missing or corrupt; ValueError: no pairs (every segment a single frame)."""
    import time

    init = Path(config.init) if config.init is not None else DEFAULT_MOUTH_WEIGHTS
    net = load_mouth_net(init)
    patch = net.config.patch
    train_pairs = collect_mouth_pairs(adapt_clips, MouthDataConfig(stride=1), patch)
    held_pairs = collect_mouth_pairs(held, MouthDataConfig(stride=2), patch)
    step = MouthStep(net, config.lr, config.lip_weight, config.steps)
    before = mouth_area_l1(net, held_pairs, step.weight)["l1_corrected"]
    t0, done = time.perf_counter(), 0
    for batch in random_batches(train_pairs, config.batch, config.seed, 0, config.steps):
        loss = step(batch)["loss"]
        done += 1
        elapsed = time.perf_counter() - t0
        if progress is not None:
            progress(done, config.steps, elapsed, loss)
        if elapsed * (done + 1) / done > config.seconds:  # the next step would pass the budget
            break
    seconds = time.perf_counter() - t0
    after = mouth_area_l1(net.eval(), held_pairs, step.weight)["l1_corrected"]
    return MouthAdaptResult(net, init, before, after, done, seconds)


@dataclass
class MouthBankResult:
    """The person's mouth bank and its :func:`score_mouth_bank` metrics on the held-back frames."""

    bank: MouthBank
    metrics: dict[str, float]

    @property
    def before(self) -> float:
        """Held-back mouth L1 with the procedural interior."""
        return self.metrics["mouth_l1_procedural"]

    @property
    def after(self) -> float:
        """Held-back mouth L1 with the person's own interiors."""
        return self.metrics["mouth_l1_bank"]


def _segment_sources(clips: list[PreparedClip], stride: int):
    """Per segment of ``clips``: its first frame as a :class:`SourceFace` and the rows of every
    ``stride``-th other frame (self-reenactment within one fixed crop)."""
    for c in clips:
        segs = np.asarray(c.segment)
        for seg in np.unique(segs):
            rows = np.flatnonzero(segs == seg)
            if len(rows) < 2:
                continue
            yield c, crop_source(c.frames[rows[0]], c.landmarks[rows[0]], f"{c.clip_id}-{rows[0]}"), rows[1::stride]


def score_mouth_bank(bank: MouthBank, clips: list[PreparedClip], stride: int = 3, renderer: str = "mesh",
                     keep: int = 0) -> tuple[dict[str, float], list[tuple]]:
    """The face layers of ``renderer`` without and with ``bank`` on self-reenactment frames of ``clips``
    (each segment's first frame driven by every ``stride``-th other).

    Returns:
        metrics: ``mouth_l1_procedural`` / ``mouth_l1_bank`` (the evaluation's mouth region, mean over
        frames), ``teeth_match_procedural`` / ``teeth_match_bank`` (share of frames where the output
        shows teeth exactly when the real frame does, :func:`avatar_engine.eval.signals.teeth_visible` at
        the frame's landmarks) and ``frames``; and the ``keep`` widest-open frames as
        ``(opening, procedural, bank, truth, landmarks)``: ``(S, S, 3) uint8`` crops and ``(478, 3)``, for
        contact sheets.
    """
    from avatar_engine.eval.signals import teeth_visible
    from avatar_engine.geometry.mouth_bank import mouth_shape
    from avatar_engine.geometry.teeth import teeth_cue
    from avatar_engine.renderers import create_renderer

    plain, banked = create_renderer(renderer), create_renderer(renderer, mouth_bank=bank)
    rows: dict[str, list[float]] = {k: [] for k in ("l1_p", "l1_b", "teeth_p", "teeth_b")}
    frames = []
    for clip, source, targets in _segment_sources(clips, stride):
        for r in targets:
            target, truth = np.asarray(clip.landmarks[r], np.float32), np.asarray(clip.frames[r])
            mask = region_masks(target, truth.shape[:2])["mouth"]
            real_teeth = teeth_visible(truth, target)
            teeth = teeth_cue(truth, target)  # the driving frame's teeth, as the live path measures them
            a, b = plain.render(source, target, teeth), banked.render(source, target, teeth)
            for key, out in (("p", a), ("b", b)):
                rows[f"l1_{key}"].append(masked_l1(out, truth, mask))
                rows[f"teeth_{key}"].append(float(teeth_visible(out, target) == real_teeth))
            if keep:
                frames.append((float(mouth_shape(target)[0]), a, b, truth, target))
                frames = sorted(frames, key=lambda f: -f[0])[:keep]
    n = len(rows["l1_p"])
    mean = (lambda v: float(np.mean(v))) if n else (lambda v: float("nan"))
    return {"mouth_l1_procedural": mean(rows["l1_p"]), "mouth_l1_bank": mean(rows["l1_b"]),
            "teeth_match_procedural": mean(rows["teeth_p"]), "teeth_match_bank": mean(rows["teeth_b"]),
            "frames": n}, frames


def personalize_bank(adapt_clips: list[PreparedClip], held: list[PreparedClip],
                     config: MouthBankConfig) -> MouthBankResult | None:
    """The mouth bank of ``adapt_clips``' frames, scored on ``held`` (:func:`score_mouth_bank`); None when
    the mouth never opens in the adaptation frames."""
    bank = build_mouth_bank(((np.asarray(c.frames[i]), np.asarray(c.landmarks[i]))
                             for c in adapt_clips for i in range(len(c))), config)
    if bank is None:
        log.warning("the mouth never opened in the capture: the avatar keeps the procedural mouth interior")
        return None
    return MouthBankResult(bank, score_mouth_bank(bank, held)[0])


@dataclass
class PersonalizeResult:
    """The adapted model, the start model, metrics before/after, the fine-tuning record, the sheet, the
    mouth bank and the personalized mouth stage (each None when off)."""

    model: NeuralAvatar
    start: NeuralAvatar
    init: Path
    before: dict[str, float]
    after: dict[str, float]
    adapt: AdaptResult
    sheet: np.ndarray
    frames_adapt: int
    frames_held: int
    bank: MouthBankResult | None = None
    mouth: MouthAdaptResult | None = None


def personalize(clips: list[PreparedClip], config: PersonalizeConfig | None = None,
                progress: Callable[[int, int, float, float], None] | None = None, identity_encoder=None,
                eval_clips: list[PreparedClip] | None = None) -> PersonalizeResult:
    """Fine-tune on the first part of ``clips``, score on the held-back rest (see the module docstring).

    Args:
        eval_clips: score on these clips instead of the held-back part (and adapt on all of ``clips``).
        identity_encoder: an :class:`~avatar_engine.face.identity.IdentityEncoder` (None: no identity metric).
    Raises:
        AvatarError: too few frames for adaptation or for the held-back check.
    """
    cfg = config or PersonalizeConfig()
    if eval_clips is None:
        adapt_clips, held = split_holdout(clips, cfg.holdout)
    else:
        adapt_clips, held = clips, eval_clips
    init = Path(cfg.init) if cfg.init is not None else start_weights()
    start = load_model(init)
    warp = start.config.mesh_warp_config()
    size = start.config.size
    if clips and clips[0].frames.shape[1] != size:
        raise AvatarError(f"prepared crops are {clips[0].frames.shape[1]} px, the model renders {size}")
    a = cfg.adapt
    train_pool = PairPool(adapt_clips, a.pool, size, warp, seed=a.seed, min_gap=a.min_gap)
    held_pool = PairPool(held, cfg.eval_pairs, size, warp, seed=a.seed + 1, min_gap=a.min_gap)
    before = score_pairs(start, held_pool, cfg.identity_pairs, identity_encoder)
    model = copy.deepcopy(start)
    record = adapt(model, train_pool, a, heldout=held_pool, progress=progress)
    after = score_pairs(model, held_pool, cfg.identity_pairs, identity_encoder)
    before["heldout_loss"], after["heldout_loss"] = record.curve[0][2], record.curve[-1][2]
    sheet = contact_sheet(start, model, held_pool, cfg.sheet_rows)
    bank = None if cfg.bank is None else personalize_bank(adapt_clips, held, cfg.bank)
    mouth = None if cfg.mouth is None else personalize_mouth(adapt_clips, held, cfg.mouth, progress)
    return PersonalizeResult(model, start, init, before, after, record, sheet,
                             sum(len(c) for c in adapt_clips), sum(len(c) for c in held), bank, mouth)
