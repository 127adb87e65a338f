"""Prepared training data: aligned face crops, landmarks and identity codes of every clip, cached once.

``prepare_dataset(PrepareConfig)`` (CLI: ``avatar-engine prepare``) decodes every clip of a
``clips.csv`` corpus (the layout of ``../shared/data``: see :mod:`avatar_engine.data.corpus`), finds
the face in every frame with the mediapipe tracker (no smoothing), cuts aligned square crops and stores
them with their landmarks so that training never decodes video nor runs a detector.

Crops follow the evaluation protocol: the evaluation cuts the ground truth of a clip with the crop of
its *source* frame (one fixed crop, :func:`~avatar_engine.face.crop.crop_from_landmarks` with the default
framing). Here a clip is cut into *segments* of ``segment_frames`` kept frames; every frame of a
segment is cut with the crop of the segment's first face frame, so any two frames of one segment form
a (source, driving) self-reenactment pair in one frame of reference.

Cache layout (``<cache>/<split>/<clip_id>/``, format version :data:`CACHE_VERSION`)::

    meta.json          clip id, identity, split, video path, fps, width, height, frames decoded,
                       frames kept, skipped frames {reason: count} and [[frame index, reason], ...],
                       segments [{"start", "stop", "center_x", "center_y", "side"}] (kept-frame index
                       range, crop square in video pixels), sizes, the PrepareConfig used, version
    frames_<S>.npy     (N, S, S, 3) uint8 RGB crops of the N kept frames, S in ``sizes`` (256, 512)
    landmarks_<S>.npy  (N, 478, 3) float32 landmarks in crop pixels of size S (corner origin, z in the
                       same units; see docs/design.md)
    index.npy          (N,) int32 decoded-frame index of each kept frame (gaps = skipped frames)
    time.npy           (N,) float64 presentation time in seconds
    segment.npy        (N,) int32 segment id of each kept frame (frames of one segment share a crop)
    identity.npy       (N, 128) float32 dlib face descriptor (:mod:`avatar_engine.face.identity`) of the
                       256 crop, on each segment's first frame and every ``identity_every``-th kept
                       frame of a segment; rows not computed (or without a dlib face) are NaN

Arrays are plain ``.npy`` files: open them with ``np.load(path, mmap_mode="r")``. A clip directory
appears atomically (written under a temporary name, then renamed) only when complete, so re-running
``prepare`` does only new work: a clip is skipped when its ``meta.json`` has the same version and
options, at least the requested sizes, and no lower frame cap. Clips that yield no usable frame get a ``meta.json`` with ``frames_kept = 0`` and no arrays.

Skip reasons of a frame: ``no_face`` (the detector found none), ``small_face`` (face extent below
``min_face_px`` video pixels: too few pixels to train on), ``face_outside`` (under ``min_inside`` of
the face's landmarks fall inside its segment's crop). A decoding error part-way stops the clip and
keeps the frames decoded so far (logged).

:class:`PairDataset` serves (source, driving) pairs from the cache for training.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avatar_engine.face.crop import CropConfig, FaceCrop, crop_from_landmarks, face_extent
from avatar_engine.errors import AvatarError, InputFileError
from avatar_engine.data.corpus import ClipEntry, load_dataset
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames, probe_video

__all__ = ["CACHE_VERSION", "PrepareConfig", "ClipSummary", "PrepareReport", "prepare_dataset",
           "default_cache_dir", "PreparedClip", "load_prepared", "PairConfig", "PairDataset"]

log = logging.getLogger("avatar_engine")

CACHE_VERSION = 1
"""Bumped when the cache layout or its content changes (old entries are then rebuilt)."""

ID_DIM = 128


def default_cache_dir() -> Path:
    """``$AVATAR_CACHE/prepared`` or ``~/.cache/avatar-engine/prepared``."""
    root = os.environ.get("AVATAR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "avatar-engine") / "prepared"


@dataclass
class PrepareConfig:
    """Options of :func:`prepare_dataset`.

    Attributes:
        data: corpus folder with ``clips.csv`` (as ``../shared/data``).
        cache: output folder (see the module docstring for the layout).
        splits: splits to prepare.
        sizes: crop sides to store (each of 256, 512; 256 is always stored).
        segment_frames: kept frames per fixed-crop segment (>= 2).
        identity_every: dlib descriptor on every N-th kept frame of a segment (and its first); 0 = none.
        min_face_px: frames whose face extent is below this (video pixels) are skipped.
        min_inside: frames with less than this fraction of landmarks inside the crop are skipped.
        max_frames_per_clip: decode at most this many frames per clip (None: all).
        clip_ids: only these clips (None: all of the splits).
        progress: show a progress bar.
    """

    data: Path
    cache: Path = field(default_factory=default_cache_dir)
    splits: tuple[str, ...] = ("train", "val")
    sizes: tuple[int, ...] = (256,)
    segment_frames: int = 50
    identity_every: int = 10
    min_face_px: float = 24.0
    min_inside: float = 0.85
    max_frames_per_clip: int | None = None
    clip_ids: tuple[str, ...] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        self.data, self.cache = Path(self.data), Path(self.cache)
        self.sizes = tuple(sorted(set(int(s) for s in self.sizes) | {256}))
        if any(s not in (256, 512) for s in self.sizes):
            raise ValueError(f"sizes must be 256 and/or 512, got {self.sizes}")
        if self.segment_frames < 2:
            raise ValueError("segment_frames must be >= 2")
        if self.identity_every < 0:
            raise ValueError("identity_every must be >= 0")
        if not 0.0 <= self.min_inside <= 1.0:
            raise ValueError("min_inside must be in [0, 1]")

    def signature(self) -> dict[str, object]:
        """The options that change the content of a clip's cache entry."""
        return {"sizes": list(self.sizes), "segment_frames": self.segment_frames,
                "identity_every": self.identity_every, "min_face_px": self.min_face_px,
                "min_inside": self.min_inside, "max_frames_per_clip": self.max_frames_per_clip}


@dataclass
class ClipSummary:
    """What preparing one clip did."""

    clip_id: str
    split: str
    frames_decoded: int
    frames_kept: int
    skipped: dict[str, int]
    cached: bool
    error: str | None = None


@dataclass
class PrepareReport:
    """All clips of one :func:`prepare_dataset` run."""

    cache: Path
    clips: list[ClipSummary]

    def lines(self) -> list[str]:
        """Human-readable summary: totals, skipped frames by reason, failed clips."""
        done = [c for c in self.clips if not c.cached]
        skipped: Counter[str] = Counter()
        for c in self.clips:
            skipped.update(c.skipped)
        kept = sum(c.frames_kept for c in self.clips)
        decoded = sum(c.frames_decoded for c in self.clips)
        out = [f"{len(self.clips)} clips ({len(done)} prepared now, {len(self.clips) - len(done)} already cached) "
               f"in {self.cache}: {kept} of {decoded} frames kept"]
        for reason, n in sorted(skipped.items()):
            out.append(f"  skipped {n} frames: {reason}")
        for c in self.clips:
            if c.error:
                out.append(f"  clip {c.split}/{c.clip_id} failed: {c.error}")
            elif c.frames_kept == 0:
                out.append(f"  clip {c.split}/{c.clip_id}: no usable frame")
        return out


def _clip_dir(cache: Path, split: str, clip_id: str) -> Path:
    return cache / split / clip_id


def _is_cached(path: Path, config: PrepareConfig) -> dict | None:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    have, want = meta.get("options") or {}, config.signature()
    if meta.get("version") != CACHE_VERSION or not set(want["sizes"]) <= set(have.get("sizes", ())):
        return None
    cap_have, cap_want = have.get("max_frames_per_clip"), want["max_frames_per_clip"]
    if cap_have is not None and (cap_want is None or cap_have < cap_want):
        return None
    same = ("segment_frames", "identity_every", "min_face_px", "min_inside")
    return meta if all(have.get(k) == want[k] for k in same) else None


class _ClipPreparer:
    """Decodes one clip and builds its cache arrays (see the module docstring)."""

    def __init__(self, config: PrepareConfig, identity_encoder):
        self.config = config
        self.identity = identity_encoder

    def run(self, clip: ClipEntry, split: str, out_dir: Path) -> ClipSummary:
        cfg = self.config
        info = probe_video(clip.path)
        crops: dict[int, list[np.ndarray]] = {s: [] for s in cfg.sizes}
        lms: dict[int, list[np.ndarray]] = {s: [] for s in cfg.sizes}
        index, times, segment, skipped_frames = [], [], [], []
        segments: list[dict[str, float]] = []
        crop: FaceCrop | None = None
        in_segment = 0
        decoded = 0
        with LandmarkDetector(LandmarkConfig(smoothing=False), static=False) as det:
            for k, (rgb, t) in enumerate(iter_frames(clip.path, cfg.max_frames_per_clip)):
                decoded += 1
                pts = det.detect(rgb, t)
                if pts is None:
                    skipped_frames.append((k, "no_face"))
                    continue
                if face_extent(pts) < cfg.min_face_px:
                    skipped_frames.append((k, "small_face"))
                    continue
                if crop is None or in_segment >= cfg.segment_frames:
                    crop = crop_from_landmarks(pts, CropConfig(size=256))
                    segments.append({"start": len(index), "stop": len(index), "center_x": crop.center_x,
                                     "center_y": crop.center_y, "side": crop.side})
                    in_segment = 0
                p256 = crop.to_crop(pts)
                inside = np.mean((p256[:, 0] >= 0) & (p256[:, 0] <= 256) & (p256[:, 1] >= 0) & (p256[:, 1] <= 256))
                if inside < cfg.min_inside:
                    skipped_frames.append((k, "face_outside"))
                    continue
                for s in cfg.sizes:
                    c = crop.with_size(s)
                    crops[s].append(c.crop_image(rgb))
                    lms[s].append(c.to_crop(pts).astype(np.float32))
                index.append(k)
                times.append(t)
                segment.append(len(segments) - 1)
                segments[-1]["stop"] = len(index)
                in_segment += 1
        n = len(index)
        ident = np.full((n, ID_DIM), np.nan, np.float32)
        if self.identity is not None and n:
            seg = np.asarray(segment)
            first = np.r_[True, seg[1:] != seg[:-1]]
            pos = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
            for i in np.flatnonzero(first | ((pos % cfg.identity_every) == 0 if cfg.identity_every else first)):
                d = self.identity.embed(crops[256][i], lms[256][i])
                if d is not None:
                    ident[i] = d
        skipped = Counter(r for _, r in skipped_frames)
        meta = {"version": CACHE_VERSION, "clip_id": clip.clip_id, "identity": clip.identity, "split": split,
                "path": str(clip.path), "fps": info.fps, "width": info.width, "height": info.height,
                "frames_decoded": decoded, "frames_kept": n, "skipped": dict(skipped),
                "skipped_frames": [list(x) for x in skipped_frames], "segments": segments,
                "sizes": list(cfg.sizes), "options": cfg.signature()}
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if n:
            for s in cfg.sizes:
                np.save(tmp / f"frames_{s}.npy", np.stack(crops[s]))
                np.save(tmp / f"landmarks_{s}.npy", np.stack(lms[s]))
            np.save(tmp / "index.npy", np.asarray(index, np.int32))
            np.save(tmp / "time.npy", np.asarray(times, np.float64))
            np.save(tmp / "segment.npy", np.asarray(segment, np.int32))
            np.save(tmp / "identity.npy", ident)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        return ClipSummary(clip.clip_id, split, decoded, n, dict(skipped), cached=False)


def prepare_dataset(config: PrepareConfig) -> PrepareReport:
    """Prepare (or complete) the cache of every clip of ``config.splits`` (see the module docstring).

    Raises:
        InputFileError: no ``clips.csv`` in ``config.data``.
    """
    jobs: list[tuple[str, ClipEntry]] = []
    for split in config.splits:
        ds = load_dataset(config.data, split)
        jobs += [(split, c) for c in ds.clips if config.clip_ids is None or c.clip_id in config.clip_ids]
    if config.clip_ids is not None and not jobs:
        raise InputFileError(f"none of the clips {', '.join(config.clip_ids)} is in {config.data} "
                             f"({', '.join(config.splits)})")
    todo = [(s, c) for s, c in jobs if _is_cached(_clip_dir(config.cache, s, c.clip_id), config) is None]
    encoder = None
    if todo and config.identity_every:
        from avatar_engine.face.identity import IdentityEncoder
        encoder = IdentityEncoder()
    preparer = _ClipPreparer(config, encoder)
    summaries = []
    bar = tqdm(jobs, desc="prepare", unit="clip", disable=not config.progress)
    for split, clip in bar:
        out_dir = _clip_dir(config.cache, split, clip.clip_id)
        meta = _is_cached(out_dir, config)
        if meta is not None:
            summaries.append(ClipSummary(clip.clip_id, split, meta["frames_decoded"], meta["frames_kept"],
                                         meta["skipped"], cached=True))
            continue
        bar.set_postfix_str(clip.clip_id)
        try:
            summaries.append(preparer.run(clip, split, out_dir))
        except AvatarError as exc:
            log.warning("clip %s/%s skipped: %s", split, clip.clip_id, exc)
            summaries.append(ClipSummary(clip.clip_id, split, 0, 0, {}, cached=False, error=str(exc)))
    return PrepareReport(config.cache, summaries)


@dataclass
class PreparedClip:
    """One clip of the cache, arrays memory-mapped (see the module docstring for shapes)."""

    path: Path
    meta: dict
    frames: np.ndarray
    landmarks: np.ndarray
    segment: np.ndarray
    identity: np.ndarray

    @property
    def clip_id(self) -> str:
        return str(self.meta["clip_id"])

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def load_prepared(cache: str | Path, split: str, size: int = 256,
                  clip_ids: tuple[str, ...] | None = None) -> list[PreparedClip]:
    """The prepared clips of ``split`` with at least one kept frame, sorted by clip id.

    Raises:
        InputFileError: nothing prepared for ``split`` in ``cache`` (run ``avatar-engine prepare``).
    """
    root = Path(cache) / split
    clips = []
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        meta_path = d / "meta.json"
        if d.suffix == ".tmp" or not meta_path.is_file() or (clip_ids is not None and d.name not in clip_ids):
            continue
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION or meta["frames_kept"] == 0 or size not in meta["sizes"]:
            continue
        clips.append(PreparedClip(d, meta, np.load(d / f"frames_{size}.npy", mmap_mode="r"),
                                  np.load(d / f"landmarks_{size}.npy", mmap_mode="r"),
                                  np.load(d / "segment.npy"), np.load(d / "identity.npy")))
    if not clips:
        raise InputFileError(f"no prepared {split} clips at size {size} in {cache}: run avatar-engine prepare")
    return clips


@dataclass
class PairConfig:
    """How :class:`PairDataset` draws (source, driving) pairs.

    Attributes:
        min_gap: smallest kept-frame distance between source and driving frame (0 allows the same frame).
        length: nominal length (``len()``); any index >= 0 is valid, item ``i`` is a deterministic
            function of ``(seed, i)``, so a sampler can continue from any global sample number.
        seed: base seed.
    """

    min_gap: int = 1
    length: int = 1 << 30
    seed: int = 0


class PairDataset(torch.utils.data.Dataset):
    """Self-reenactment pairs from the cache.

    The source of a pair is a frame with an identity descriptor (so z_id is the source's own), the
    driving frame another frame of the same segment (same crop). Item ``i`` is a deterministic
    function of ``(seed, i)``: clip (uniform over clips, so long clips do not dominate), source
    frame, driving frame.

    An item is a dict: ``source (3, S, S) uint8``, ``driving (3, S, S) uint8``,
    ``source_points (478, 3) float32``, ``driving_points (478, 3) float32`` (crop px),
    ``z_id (128,) float32``.
    """

    def __init__(self, clips: list[PreparedClip], config: PairConfig | None = None):
        self.config = config or PairConfig()
        self.clips = []
        self._sources: list[np.ndarray] = []
        for c in clips:
            ok = np.flatnonzero(~np.isnan(c.identity[:, 0]))
            # a source needs another frame of its segment at least min_gap away
            seg_len = np.bincount(c.segment)
            ok = ok[seg_len[c.segment[ok]] > max(self.config.min_gap, 1)]
            if len(ok):
                self.clips.append(c)
                self._sources.append(ok)
        if not self.clips:
            raise InputFileError("no prepared clip has a usable (source, driving) pair")

    def __len__(self) -> int:
        return self.config.length

    def draw(self, index: int) -> tuple[int, int, int]:
        """``(clip number, source frame, driving frame)`` of item ``index``."""
        rng = np.random.default_rng((self.config.seed, int(index)))
        ci = int(rng.integers(len(self.clips)))
        clip = self.clips[ci]
        src = int(rng.choice(self._sources[ci]))
        same = np.flatnonzero(clip.segment == clip.segment[src])
        far = same[np.abs(same - src) >= self.config.min_gap]
        drv = int(rng.choice(far))
        return ci, src, drv

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ci, src, drv = self.draw(index)
        clip = self.clips[ci]
        return {"source": torch.from_numpy(np.array(clip.frames[src])).permute(2, 0, 1),
                "driving": torch.from_numpy(np.array(clip.frames[drv])).permute(2, 0, 1),
                "source_points": torch.from_numpy(np.array(clip.landmarks[src])),
                "driving_points": torch.from_numpy(np.array(clip.landmarks[drv])),
                "z_id": torch.from_numpy(np.array(clip.identity[src]))}
