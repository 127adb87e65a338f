"""Shared test fixtures: the real talking-face corpus in ../shared/data (never copied into the repo)."""
from __future__ import annotations

import csv
import logging
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AVATAR_DATA", REPO.parent / "shared" / "data"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torch.distributed's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpus root (skips the test when it is absent)."""
    if not (DATA / "clips.csv").exists():
        pytest.skip(f"shared corpus not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def val_clips(data_dir: Path) -> list[dict[str, str]]:
    """Rows of clips.csv in the val split."""
    with open(data_dir / "clips.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "val"]


@pytest.fixture(scope="session")
def val_images(data_dir: Path) -> list[dict[str, str]]:
    """Rows of images.csv in the val split."""
    with open(data_dir / "images.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "val"]


@pytest.fixture(scope="session")
def c018_cache(data_dir: Path, tmp_path_factory) -> Path:
    """A prepare cache of val clip C018 (12 frames in segments of 6, descriptors every 3rd frame) holding
    it as both splits, train and val; shared by the training tests (read-only)."""
    import shutil

    from avatar_engine.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("c018_cache") / "prepared"
    prepare_dataset(PrepareConfig(data=data_dir, cache=root, splits=("val",), segment_frames=6,
                                  identity_every=3, max_frames_per_clip=12, clip_ids=("C018",)))
    shutil.copytree(root / "val", root / "train")
    return root


@pytest.fixture
def warns_once(caplog):
    """``warns_once(call, text)``: runs ``call()`` twice and checks that logger ``avatar_engine`` gave one
    warning containing ``text`` in all; returns the first call's result."""
    def check(call, text: str):
        with caplog.at_level(logging.WARNING, logger="avatar_engine"):
            caplog.clear()
            first = call()
            call()
        assert sum(text in r.getMessage() for r in caplog.records) == 1, [r.getMessage() for r in caplog.records]
        return first
    return check
