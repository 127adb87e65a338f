"""The evaluation corpus index: ``clips.csv`` and ``images.csv`` of a data folder.

Layout (that of ``../shared/data``): ``DIR/clips.csv`` with at least the columns
``clip_id, split, identity, path`` and ``DIR/images.csv`` with ``image_id, split, identity, path``;
``path`` is relative to ``DIR``. ``images.csv`` is optional (no cross-reenactment without it).
Rows are sorted by id so every selection made from them is deterministic.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from avatar_engine.errors import InputFileError

__all__ = ["ClipEntry", "ImageEntry", "EvalDataset", "load_dataset"]


@dataclass(frozen=True)
class ClipEntry:
    """One video of the corpus."""

    clip_id: str
    identity: str
    path: Path


@dataclass(frozen=True)
class ImageEntry:
    """One still portrait of the corpus."""

    image_id: str
    identity: str
    path: Path


@dataclass(frozen=True)
class EvalDataset:
    """The clips and photos of one split, sorted by id."""

    root: Path
    split: str
    clips: tuple[ClipEntry, ...]
    images: tuple[ImageEntry, ...]

    def cross_sources(self) -> tuple[ImageEntry, ...]:
        """Photos whose identity has no clip in this split (cross-reenactment sources)."""
        with_clips = {c.identity for c in self.clips}
        return tuple(i for i in self.images if i.identity not in with_clips)

    def cross_drivers(self, count: int) -> tuple[ClipEntry, ...]:
        """The first clip (by id) of each of the first ``count`` identities (sorted by id)."""
        first: dict[str, ClipEntry] = {}
        for c in self.clips:
            first.setdefault(c.identity, c)
        return tuple(first[k] for k in sorted(first)[:count])


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise InputFileError(f"{path} lacks the column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_dataset(root: str | Path, split: str) -> EvalDataset:
    """Index the clips and photos of ``split`` under ``root``.

    Raises:
        InputFileError: ``root/clips.csv`` is missing or malformed.
    """
    root = Path(root)
    clips_csv = root / "clips.csv"
    if not clips_csv.is_file():
        raise InputFileError(f"no clips.csv in {root}: --data must be a folder laid out like ../shared/data")
    rows = _read_rows(clips_csv, ("clip_id", "split", "identity", "path"))
    clips = sorted((ClipEntry(r["clip_id"], r["identity"], root / r["path"]) for r in rows if r["split"] == split),
                   key=lambda c: c.clip_id)
    images: list[ImageEntry] = []
    images_csv = root / "images.csv"
    if images_csv.is_file():
        rows = _read_rows(images_csv, ("image_id", "split", "identity", "path"))
        images = sorted((ImageEntry(r["image_id"], r["identity"], root / r["path"])
                         for r in rows if r["split"] == split), key=lambda i: i.image_id)
    return EvalDataset(root, split, tuple(clips), tuple(images))
