"""The evaluation run: self- and cross-reenactment of a data split with one or more renderers.

Self-reenactment (the paper's protocol), per clip of the split:

* source = the clip's first frame in which a face is found (static mediapipe detection); it is
  prepared with :func:`~avatar_engine.face.source.prepare_source` at full resolution and ``size``.
* ground truth = the following frames (at most ``max_frames_per_clip``), cut with the *source's*
  crop, so ground truth and output share one frame of reference. The source frame itself is not
  scored.
* output = a :class:`~avatar_engine.pipeline.reenact.Reenactor` (``paste_back=False``) per renderer, driven by
  the clip from the source frame on; its neutral is the source frame's landmarks *as the tracking
  detector sees them once locked on* (the source frame fed ``NEUTRAL_WARMUP`` times to a tracking
  detector): mediapipe's first detection of a face differs from its tracked ones by up to 4 % in
  scale on the val clips, which would otherwise be transferred as a zoom. The retargeted target is
  then the ground truth's own geometry.
* pixel metrics (PSNR from the clip's mean MSE, SSIM) on every scored frame; mouth / eye L1 and the
  landmark metrics on frames where the ground-truth crop has a face (frames without one are
  counted as ``gt_no_face``). Landmarks are detected on the output and on the ground truth with the
  same static detector; output frames without a face are counted as ``output_no_face``.
* identity (dlib descriptor distance) on every ``identity_every``-th scored frame: output vs
  ground truth and output vs source.
* flicker: each sequence's flow-compensated frame difference (:func:`~.metrics.warp_error`, with
  its *own* optical flow, so real motion is not counted), output / ground truth as a ratio (1 = as
  steady as the real video; the ``source`` renderer scores 0 since it never changes).

Cross-reenactment: every photo of the split whose identity has no clip in the split is driven by
the first clip of each of the first ``cross_drivers`` identities (sorted ids); the neutral is the one
``render`` takes (``cross_neutral="chosen"``: :func:`~avatar_engine.pipeline.render_job.choose_neutral`,
the most frontal, still, mouth-closed frame of the driver's first seconds with its typical brows and
lids), or the driver's first face frame locked on in the same way (``"first"``, the protocol before
session 13). Scored: identity distance output vs the source photo's
crop, and expression / pose error of the output's landmarks against the retargeted target
landmarks (frames where the driver has a face).

Motion transfer (:mod:`avatar_engine.eval.motion`, :mod:`avatar_engine.eval.signals`): face signals
(mouth and eye opening, gaze, brow height, lip-corner distance) measured on the output's landmarks
and on the reference's, per frame: the ground truth (self) or the retargeted target (cross);
correlation and amplitude ratio per sequence and pooled over the sequences; a blink score (share of
the driver's closed-eye frames where the output's eyes are closed) and a teeth score (share of the
driver's teeth-visible frames where the output shows teeth).

Per-clip and per-pair failures (unreadable video, no face) are recorded with their reason and
excluded. Nothing is random: a rerun gives the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatar_engine.face.crop import CropConfig, crop_from_landmarks
from avatar_engine.errors import AvatarError, NoFaceError
from avatar_engine.face.identity import SAME_PERSON_THRESHOLD, IdentityConfig, IdentityEncoder
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.geometry.retarget import RetargetConfig
from avatar_engine.models.mouth_net import DEFAULT_MOUTH_WEIGHTS
from avatar_engine.pipeline.neutral import NeutralChoice
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.pipeline.render_job import RenderJobConfig, choose_neutral
from avatar_engine.renderers import RENDERER_NAMES, create_renderer
from avatar_engine.renderers.base import Renderer
from avatar_engine.face.source import SourceConfig, SourceFace, prepare_source
from avatar_engine.io.video import iter_frames, probe_video
from avatar_engine.eval import metrics
from avatar_engine.eval.motion import MOMENTS, MOTION_METRICS, MotionTrack, aggregate_motion
from avatar_engine.data.corpus import ClipEntry, EvalDataset, ImageEntry, load_dataset

__all__ = ["EvalConfig", "SheetRow", "SequenceReport", "Failure", "EvalResult", "run_evaluation",
           "SELF_METRICS", "CROSS_METRICS", "MOTION_METRICS"]

log = logging.getLogger("avatar_engine")

NEUTRAL_WARMUP = 3
"""Times the source frame is fed to a tracking detector to get the self-reenactment neutral."""

SELF_METRICS: tuple[tuple[str, str], ...] = (
    ("psnr", "PSNR (dB) ↑"),
    ("ssim", "SSIM ↑"),
    ("l1_mouth", "L1 mouth ↓"),
    ("l1_eyes", "L1 eyes ↓"),
    ("identity_gt", "ID distance to GT ↓"),
    ("same_person_gt", "same person as GT ↑"),
    ("identity_source", "ID distance to source ↓"),
    ("expression_error", "expression error (IOD) ↓"),
    ("yaw_error", "yaw error (°) ↓"),
    ("pitch_error", "pitch error (°) ↓"),
    ("roll_error", "roll error (°) ↓"),
    ("flicker", "flicker (warp L1)"),
    ("flicker_gt", "flicker of GT (warp L1)"),
    ("flicker_ratio", "flicker ratio output / GT (GT = 1)"),
    ("output_no_face", "output frames without a face ↓"),
)
"""Self-reenactment metrics per renderer: (key, table label). Ratios and distances are means over
frames of a clip, then over clips; ``same_person_gt`` is the fraction of identity frames below the
0.6 threshold; ``output_no_face`` is the fraction of frames (with a ground-truth face)."""

CROSS_METRICS: tuple[tuple[str, str], ...] = (
    ("identity_source", "ID distance to source photo ↓"),
    ("same_person_source", "same person as source ↑"),
    ("expression_error", "expression error vs target (IOD) ↓"),
    ("yaw_error", "yaw error vs target (°) ↓"),
    ("pitch_error", "pitch error vs target (°) ↓"),
    ("roll_error", "roll error vs target (°) ↓"),
    ("output_no_face", "output frames without a face ↓"),
)
"""Cross-reenactment metrics per renderer (means over frames of a pair, then over pairs)."""


CROSS_NEUTRALS = ("chosen", "first")
"""How cross-reenactment takes the driver's neutral (:attr:`EvalConfig.cross_neutral`)."""


@dataclass
class EvalConfig:
    """Options of ``avatar-engine eval``.

    Attributes:
        data: folder with ``clips.csv`` / ``images.csv`` (the layout of ``../shared/data``).
        split: which split to evaluate.
        renderers: renderer names (:data:`~avatar_engine.renderers.RENDERER_NAMES`), compared side by side.
        size: face-crop side the renderers work and are scored at (256 or 512).
        max_frames_per_clip: scored frames per clip (self) and driving frames per pair (cross); None = all.
        identity_every: identity descriptors on every N-th scored frame (dlib costs ~90 ms a face).
        self_reenactment: run self-reenactment.
        cross: run cross-reenactment.
        cross_drivers: driving clips per cross-reenactment photo.
        clip_ids, image_ids: restrict to these clips / photos (None = all of the split).
        region_margin: growth of the mouth / eye masks, in inter-ocular distances.
        face_layers: draw the renderers' face layers and retarget the lids by open ratio (False: the
            plain renderers with additive lid retargeting, for before / after comparisons; the learned
            mouth stage is then off too).
        mouth_net: draw the shipped learned mouth stage over the renderers' outputs (off by default, as
            in ``start`` / ``render``; True: for before / after).
        device: torch device of the renderers.
        backend: their inference backend (``avatar_engine.backends.BACKEND_CHOICES``).
        sheet_frames: columns (frames) per row of the contact sheet.
        sheet_thumb: side of a contact-sheet thumbnail in pixels.
        lip_zero: retarget the mouth from closed (``RetargetConfig.lip_zero``, as ``render`` / ``start``
            by default; False: ``--keep-photo-mouth``, for before / after).
        cross_neutral: the driver's neutral in cross-reenactment: ``"chosen"`` (as ``render`` chooses
            it) or ``"first"`` (its first face frame; see the module docstring).
        progress: show a progress bar (stderr); without it, one log line (logger ``avatar_engine``,
            INFO) per clip / pair with the time elapsed and an estimate of the time left.
    """

    data: Path
    split: str = "val"
    renderers: tuple[str, ...] = ("source", "mesh")
    size: int = 256
    max_frames_per_clip: int | None = None
    identity_every: int = 5
    self_reenactment: bool = True
    cross: bool = True
    cross_drivers: int = 2
    clip_ids: tuple[str, ...] | None = None
    image_ids: tuple[str, ...] | None = None
    region_margin: float = 0.1
    face_layers: bool = True
    mouth_net: bool = False
    device: str = "cpu"
    backend: str = "eager"
    sheet_frames: int = 6
    sheet_thumb: int = 96
    lip_zero: bool = True
    cross_neutral: str = "chosen"
    progress: bool = False
    flow: metrics.FlowConfig = field(default_factory=metrics.FlowConfig)

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.renderers = tuple(dict.fromkeys(self.renderers))
        if self.cross_neutral not in CROSS_NEUTRALS:
            raise AvatarError(f"cross_neutral must be one of {', '.join(CROSS_NEUTRALS)}, not {self.cross_neutral!r}")
        unknown = [r for r in self.renderers if r not in RENDERER_NAMES]
        if unknown or not self.renderers:
            raise AvatarError(f"unknown renderer {', '.join(unknown) or '(none)'}; choose from {', '.join(RENDERER_NAMES)}")
        if self.size not in (256, 512):
            raise AvatarError(f"--size must be 256 or 512, got {self.size}")
        if self.max_frames_per_clip is not None and self.max_frames_per_clip < 2:
            raise AvatarError(f"--max-frames-per-clip must be >= 2, got {self.max_frames_per_clip}")
        if self.identity_every < 1 or self.cross_drivers < 1:
            raise AvatarError("--identity-every and --cross-drivers must be >= 1")

    def describe(self) -> dict[str, object]:
        """The options that determine the numbers, JSON-ready."""
        return {
            "data": str(self.data), "split": self.split, "renderers": list(self.renderers), "size": self.size,
            "max_frames_per_clip": self.max_frames_per_clip, "identity_every": self.identity_every,
            "self": self.self_reenactment, "cross": self.cross, "cross_drivers": self.cross_drivers,
            "clip_ids": None if self.clip_ids is None else list(self.clip_ids),
            "image_ids": None if self.image_ids is None else list(self.image_ids),
            "region_margin": self.region_margin, "face_layers": self.face_layers, "lip_zero": self.lip_zero,
            "mouth_net": self.mouth_net, "device": self.device, "flow": dict(self.flow.__dict__),
            "same_person_threshold": SAME_PERSON_THRESHOLD,
        }


@dataclass
class SheetRow:
    """One row of the contact sheet: a label and ``(T, T, 3) uint8`` thumbnails."""

    label: str
    frames: list[np.ndarray]


@dataclass
class SequenceReport:
    """Scores of one self-reenactment clip or one cross-reenactment (photo, driver) pair.

    Attributes:
        kind: ``"self"`` or ``"cross"``.
        item: clip id (self) or ``"<image id>/<driver clip id>"`` (cross).
        info: identities, source frame, frame counts.
        metrics: renderer -> metric key -> value (``nan`` where nothing could be scored).
        sheet: contact-sheet rows (ground truth or driver first, then one per renderer, then the
            motion moments: reference and outputs at the widest mouth, most sideways gaze, most
            closed eyes).
        motion: the face signals of the reference and the outputs (pooled by :meth:`EvalResult.aggregate`).
    """

    kind: str
    item: str
    info: dict[str, object]
    metrics: dict[str, dict[str, float]]
    sheet: list[SheetRow]
    motion: MotionTrack | None = None


@dataclass
class Failure:
    """An item excluded from the report, and why."""

    kind: str
    item: str
    reason: str


@dataclass
class EvalResult:
    """Everything one evaluation produced (see :mod:`avatar_engine.eval.report` for the files)."""

    config: EvalConfig
    self_reports: list[SequenceReport]
    cross_reports: list[SequenceReport]
    failures: list[Failure]

    def aggregate(self, kind: str) -> dict[str, dict[str, float]]:
        """renderer -> metric -> mean over the clips (``kind="self"``) or pairs (``"cross"``); the
        motion metrics (:data:`MOTION_METRICS`) pooled over the sequences instead
        (:func:`~avatar_engine.eval.motion.aggregate_motion`)."""
        reports = self.self_reports if kind == "self" else self.cross_reports
        keys = [k for k, _ in (SELF_METRICS if kind == "self" else CROSS_METRICS)]
        tracks = [r.motion for r in reports if r.motion is not None]
        out: dict[str, dict[str, float]] = {}
        for name in self.config.renderers:
            out[name] = {k: _mean([r.metrics[name][k] for r in reports]) for k in keys}
            if tracks:
                out[name].update(aggregate_motion(tracks, name))
        return out


def _mean(values: list[float]) -> float:
    """Mean of the non-nan values (``inf`` propagates); ``nan`` when there are none."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


class _Series:
    """Per-frame values of one renderer on one sequence, and a few counters."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.prev: np.ndarray | None = None

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))

    def mean(self, key: str) -> float:
        return _mean(self.values.get(key, []))


def _thumb(image: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def _moment_rows(item: str, track: MotionTrack, reference: str) -> list[SheetRow]:
    """Contact-sheet rows of a sequence's motion moments (reference thumbnail, then the outputs)."""
    names = "|".join((reference,) + track.renderers)
    return [SheetRow(f"{item} {m.name} f{m.frame}: {names}", m.thumbs) for m in
            (track.moments[k] for k in MOMENTS) if m.frame >= 0]


def _sheet_indices(total: int, columns: int) -> set[int]:
    """``columns`` evenly spaced indices in ``[0, total)``."""
    if total <= 0:
        return set()
    return {int(round(i)) for i in np.linspace(0, total - 1, min(columns, total))}


class _Evaluator:
    """Holds the shared detectors, encoder and renderers of one run."""

    def __init__(self, config: EvalConfig, stack: contextlib.ExitStack):
        self.config = config
        self.detector = stack.enter_context(LandmarkDetector(LandmarkConfig(), static=True))
        self.identity = IdentityEncoder(IdentityConfig())
        self.renderers: dict[str, Renderer] = {n: create_renderer(n, config.device, backend=config.backend)
                                                 for n in config.renderers}
        for r in self.renderers.values():
            if not config.face_layers:
                r.layers = None
            if config.mouth_net:
                r.mouth_weights = DEFAULT_MOUTH_WEIGHTS
        self.reenact = ReenactConfig(paste_back=False, retarget=RetargetConfig(lid_ratio=config.face_layers,
                                                                                 lip_zero=config.lip_zero))
        self._source_ids: dict[str, np.ndarray | None] = {}
        self._neutrals: dict[str, NeutralChoice] = {}  # driver clip id -> the neutral render chooses

    def _reenactors(self, stack: contextlib.ExitStack, source: SourceFace) -> dict[str, Reenactor]:
        return {name: stack.enter_context(Reenactor(source, r, self.reenact))
                for name, r in self.renderers.items()}

    def _pose(self, series: _Series, out_pts: np.ndarray, ref: np.ndarray) -> None:
        series.add("expression_error", metrics.expression_error(out_pts, ref))
        for axis, err in zip(("yaw_error", "pitch_error", "roll_error"), metrics.pose_error_deg(out_pts, ref)):
            series.add(axis, err)

    def self_reenactment(self, clip: ClipEntry) -> SequenceReport:
        """Score every renderer on one clip (see the module docstring)."""
        cfg = self.config
        frames = iter_frames(clip.path)
        source_index = -1
        for rgb, t in frames:
            source_index += 1
            if self.detector.detect(rgb) is not None:
                break
        else:
            raise NoFaceError(f"no face in any of the {source_index + 1} frames")
        source = prepare_source(rgb, SourceConfig(size=cfg.size, max_side=max(rgb.shape[:2])))
        neutral = self._tracked_landmarks(rgb)
        if neutral is None:
            neutral = source.crop.to_image(source.landmarks)
        planned = probe_video(clip.path).frames - source_index - 1
        if cfg.max_frames_per_clip is not None:
            planned = min(planned, cfg.max_frames_per_clip)
        shown = _sheet_indices(planned, cfg.sheet_frames)
        series = {name: _Series() for name in cfg.renderers}
        gt_series = _Series()
        track = MotionTrack(cfg.renderers)
        sheet = [SheetRow(f"{clip.clip_id} GT", [])] + [SheetRow(f"{clip.clip_id} {n}", []) for n in cfg.renderers]
        n = gt_no_face = driving_no_face = 0
        with contextlib.ExitStack() as stack:
            reenactors = self._reenactors(stack, source)
            for r in reenactors.values():
                r.set_neutral(neutral)
                r.step(rgb, t)  # the source frame: starts the tracker, not scored
            for rgb, t in frames:
                if cfg.max_frames_per_clip is not None and n >= cfg.max_frames_per_clip:
                    break
                gt = source.crop.crop_image(rgb)
                gt_pts = self.detector.detect(gt)
                gt_no_face += gt_pts is None
                masks = None if gt_pts is None else metrics.region_masks(gt_pts, gt.shape[:2], cfg.region_margin)
                if gt_series.prev is not None:
                    gt_series.add("flicker", metrics.warp_error(gt_series.prev, gt, cfg.flow))
                gt_series.prev = gt
                id_frame = n % cfg.identity_every == 0
                gt_id = self.identity.embed(gt, gt_pts) if id_frame and gt_pts is not None else None
                src_id = self._source_id(source) if id_frame else None
                gt_thumb = _thumb(gt, cfg.sheet_thumb)
                track.begin_frame(gt_pts, gt, gt_pts, gt_thumb)
                if n in shown:
                    sheet[0].frames.append(gt_thumb)
                for k, (name, reenactor) in enumerate(reenactors.items()):
                    res = reenactor.step(rgb, t)
                    if k == 0:
                        driving_no_face += not res.face_found
                    out, s = res.crop, series[name]
                    s.add("mse", metrics.mse(out, gt))
                    s.add("ssim", metrics.ssim(out, gt))
                    if s.prev is not None:
                        s.add("flicker", metrics.warp_error(s.prev, out, cfg.flow))
                    s.prev = out
                    out_thumb = _thumb(out, cfg.sheet_thumb)
                    if n in shown:
                        sheet[k + 1].frames.append(out_thumb)
                    out_pts = None
                    if gt_pts is not None or id_frame:
                        out_pts = self._score_face(s, out, gt, gt_pts, masks, gt_id if id_frame else None,
                                                   src_id if id_frame else None)
                    track.add_output(name, out, out_pts, out_thumb)
                n += 1
        if n < 2:
            raise NoFaceError(f"only {n} frame(s) after the first face frame; need 2")
        flicker_gt = gt_series.mean("flicker")
        scores: dict[str, dict[str, float]] = {}
        for name, s in series.items():
            flicker = s.mean("flicker")
            special = {"psnr": metrics.psnr_from_mse(s.mean("mse")), "flicker_gt": flicker_gt,
                       "flicker_ratio": flicker / flicker_gt if flicker_gt > 0 else math.nan}
            scores[name] = {k: special[k] if k in special else s.mean(k) for k, _ in SELF_METRICS}
            scores[name].update(track.scores(name))
        info = {"identity": clip.identity, "source_frame": source_index, "frames": n, "gt_no_face": gt_no_face,
                "driving_no_face": driving_no_face, **track.event_counts()}
        sheet += _moment_rows(clip.clip_id, track, "GT")
        return SequenceReport("self", clip.clip_id, info, scores, sheet, track)

    def _score_face(self, s: _Series, out: np.ndarray, gt: np.ndarray, gt_pts: np.ndarray | None,
                    masks: dict[str, np.ndarray] | None, gt_id: np.ndarray | None,
                    src_id: np.ndarray | None) -> np.ndarray | None:
        """Region, landmark and identity scores of one self-reenactment output frame.

        Region and landmark scores need ``gt_pts``; identity distances are taken when ``gt_id`` /
        ``src_id`` are given (identity frames). Returns the landmarks detected on ``out`` (or None).
        """
        out_pts = self.detector.detect(out)
        if gt_pts is not None and masks is not None:
            s.add("l1_mouth", metrics.masked_l1(out, gt, masks["mouth"]))
            s.add("l1_eyes", metrics.masked_l1(out, gt, masks["eyes"]))
            s.add("output_no_face", out_pts is None)
            if out_pts is not None:
                self._pose(s, out_pts, gt_pts)
        if out_pts is None or (gt_id is None and src_id is None):
            return out_pts
        out_id = self.identity.embed(out, out_pts)
        if out_id is not None and gt_id is not None:
            d = self.identity.distance(out_id, gt_id)
            s.add("identity_gt", d)
            s.add("same_person_gt", d < SAME_PERSON_THRESHOLD)
        if out_id is not None and src_id is not None:
            s.add("identity_source", self.identity.distance(out_id, src_id))
        return out_pts

    def _chosen_neutral(self, driver: ClipEntry) -> NeutralChoice:
        """The neutral ``render`` takes for ``driver`` (tracked once per clip and kept)."""
        if driver.clip_id not in self._neutrals:
            # only the driving clip and the landmark options of a render job enter its neutral choice
            job = RenderJobConfig(source=Path(driver.path), driving=Path(driver.path), output=Path(driver.path),
                                  progress=False, reenact=self.reenact)
            self._neutrals[driver.clip_id] = choose_neutral(job)
        return self._neutrals[driver.clip_id]

    @staticmethod
    def _tracked_landmarks(rgb: np.ndarray) -> np.ndarray | None:
        """``(478, 3)`` landmarks of ``rgb`` from a tracking detector fed it ``NEUTRAL_WARMUP`` times."""
        with LandmarkDetector(LandmarkConfig(smoothing=False), static=False) as det:
            points = None
            for k in range(NEUTRAL_WARMUP):
                points = det.detect(rgb, k / det.config.default_fps)
        return points

    def _source_id(self, source: SourceFace) -> np.ndarray | None:
        """The descriptor of a source's crop (memoised per source).

        Its landmarks are detected on the crop, like those of the outputs, so that the ``source``
        renderer scores an identity distance of exactly 0.
        """
        if source.key not in self._source_ids:
            points = self.detector.detect(source.crop_image)
            self._source_ids[source.key] = None if points is None else self.identity.embed(source.crop_image, points)
        return self._source_ids[source.key]

    def cross_reenactment(self, image: ImageEntry, source: SourceFace, driver: ClipEntry) -> SequenceReport:
        """Drive one photo with one clip with every renderer (see the module docstring)."""
        cfg = self.config
        src_id = self._source_id(source)
        if src_id is None:
            raise NoFaceError("dlib finds no face in the source crop")
        planned = probe_video(driver.path).frames
        if cfg.max_frames_per_clip is not None:
            planned = min(planned, cfg.max_frames_per_clip)
        shown = _sheet_indices(planned, cfg.sheet_frames)
        item = f"{image.image_id}/{driver.clip_id}"
        sheet = [SheetRow(f"{item} driver", [])] + [SheetRow(f"{item} {n}", []) for n in cfg.renderers]
        series = {name: _Series() for name in cfg.renderers}
        track = MotionTrack(cfg.renderers)
        n = driving_no_face = 0
        driver_crop = None
        chosen = self._chosen_neutral(driver) if cfg.cross_neutral == "chosen" else None
        with contextlib.ExitStack() as stack:
            reenactors = self._reenactors(stack, source)
            neutral_set = chosen is not None
            if chosen is not None:
                for r in reenactors.values():
                    r.set_neutral(chosen.points)
            for rgb, t in iter_frames(driver.path, cfg.max_frames_per_clip):
                if not neutral_set:  # until the first frame in which the pipeline sees a face
                    neutral = self._tracked_landmarks(rgb)
                    for r in reenactors.values():
                        if neutral is not None:
                            r.set_neutral(neutral)
                id_frame = n % cfg.identity_every == 0
                results = {name: r.step(rgb, t) for name, r in reenactors.items()}
                first = next(iter(results.values()))
                neutral_set = neutral_set or first.face_found
                driving_no_face += not first.face_found
                if driver_crop is None and first.driving is not None:
                    driver_crop = crop_from_landmarks(first.driving, CropConfig(size=cfg.sheet_thumb))
                driver_thumb = (driver_crop.crop_image(rgb) if driver_crop is not None
                                else _thumb(rgb, cfg.sheet_thumb))
                if n in shown:
                    sheet[0].frames.append(driver_thumb)
                track.begin_frame(first.target if first.face_found else None, rgb, first.driving, driver_thumb)
                for k, (name, res) in enumerate(results.items()):
                    s = series[name]
                    out = res.crop
                    out_thumb = _thumb(out, cfg.sheet_thumb)
                    if n in shown:
                        sheet[k + 1].frames.append(out_thumb)
                    if not res.face_found and not id_frame:
                        track.add_output(name, out, None, out_thumb)
                        continue
                    out_pts = self.detector.detect(out)
                    track.add_output(name, out, out_pts, out_thumb)
                    if res.face_found:
                        s.add("output_no_face", out_pts is None)
                        if out_pts is not None:
                            self._pose(s, out_pts, res.target)
                    if id_frame and out_pts is not None:
                        out_id = self.identity.embed(out, out_pts)
                        if out_id is not None:
                            d = self.identity.distance(out_id, src_id)
                            s.add("identity_source", d)
                            s.add("same_person_source", d < SAME_PERSON_THRESHOLD)
                n += 1
        if n == driving_no_face:
            raise NoFaceError(f"no face in any of the {n} driving frames")
        keys = [k for k, _ in CROSS_METRICS]
        scores = {name: {**{k: s.mean(k) for k in keys}, **track.scores(name)} for name, s in series.items()}
        info = {"image": image.image_id, "identity": image.identity, "driver": driver.clip_id,
                "driver_identity": driver.identity, "frames": n, "driving_no_face": driving_no_face,
                "neutral_frame": None if chosen is None else chosen.index, **track.event_counts()}
        sheet += _moment_rows(item, track, "driver")
        return SequenceReport("cross", item, info, scores, sheet, track)


def _select(dataset: EvalDataset, config: EvalConfig) -> tuple[list[ClipEntry], list[ImageEntry], list[ClipEntry]]:
    clips = list(dataset.clips) if config.self_reenactment else []
    if config.self_reenactment and config.clip_ids is not None:
        known = {c.clip_id for c in clips}
        missing = [c for c in config.clip_ids if c not in known]
        if missing:
            raise AvatarError(f"clip(s) {', '.join(missing)} not in the {config.split} split of {dataset.root}")
        clips = [c for c in clips if c.clip_id in config.clip_ids]
    images: list[ImageEntry] = []
    drivers: list[ClipEntry] = []
    if config.cross:
        images = list(dataset.cross_sources())
        if config.image_ids is not None:
            known = {i.image_id for i in images}
            missing = [i for i in config.image_ids if i not in known]
            if missing:
                raise AvatarError(f"image(s) {', '.join(missing)} are not cross-reenactment sources of the "
                                  f"{config.split} split (photos of identities without clips)")
            images = [i for i in images if i.image_id in config.image_ids]
        drivers = list(dataset.cross_drivers(config.cross_drivers))
    if not clips and not images:
        raise AvatarError(f"nothing to evaluate in the {config.split!r} split of {dataset.root}")
    return clips, images, drivers


def run_evaluation(config: EvalConfig, on_item: Callable[[EvalResult], None] | None = None) -> EvalResult:
    """Evaluate ``config.renderers`` on ``config.split`` of ``config.data``.

    ``on_item(result)``, when given, is called after every finished clip / pair (scored or failed)
    with the result so far (the CLI writes it as a partial report, so a killed run keeps its items).

    Raises:
        AvatarError: bad options or data folder. Failures of single clips / photos do not raise:
        they are logged and listed in :attr:`EvalResult.failures`.
    """
    dataset = load_dataset(config.data, config.split)
    clips, images, drivers = _select(dataset, config)
    result = EvalResult(config, [], [], [])

    def fail(kind: str, item: str, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        log.warning("eval: %s %s excluded: %s", kind, item, reason)
        result.failures.append(Failure(kind, item, reason))

    total = len(clips) + len(images) * len(drivers)
    with contextlib.ExitStack() as stack:
        evaluator = _Evaluator(config, stack)
        bar = stack.enter_context(tqdm(total=total, unit="item", desc="eval", disable=not config.progress))
        if not config.progress:
            log.info("eval: %d clip(s) self, %d photo/driver pair(s) cross, renderers %s", len(clips),
                     len(images) * len(drivers), ", ".join(config.renderers))
        started, finished = time.monotonic(), [0]

        def done(item: str, count: int = 1) -> None:
            bar.update(count)
            finished[0] += count
            if not config.progress:  # a log line per item where no bar is drawn (stderr is a file)
                elapsed = time.monotonic() - started
                log.info("eval: %d/%d %s (%.0f s elapsed, ~%.0f s left)", finished[0], total, item, elapsed,
                         elapsed / finished[0] * (total - finished[0]))
            if on_item is not None:
                on_item(result)

        for clip in clips:
            bar.set_postfix_str(clip.clip_id)
            try:
                result.self_reports.append(evaluator.self_reenactment(clip))
            except AvatarError as exc:
                fail("self", clip.clip_id, exc)
            done(f"self {clip.clip_id}")
        for image in images:
            try:
                source = prepare_source(image.path, SourceConfig(size=config.size))
            except AvatarError as exc:
                for driver in drivers:
                    fail("cross", f"{image.image_id}/{driver.clip_id}", exc)
                done(f"cross {image.image_id}", len(drivers))
                continue
            for driver in drivers:
                bar.set_postfix_str(f"{image.image_id}/{driver.clip_id}")
                try:
                    result.cross_reports.append(evaluator.cross_reenactment(image, source, driver))
                except AvatarError as exc:
                    fail("cross", f"{image.image_id}/{driver.clip_id}", exc)
                done(f"cross {image.image_id}/{driver.clip_id}")
    return result
