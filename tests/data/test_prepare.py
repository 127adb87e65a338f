"""`prepare`: cache of aligned crops, landmarks and identity codes on real val clips; incremental re-runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from avatar_engine.face.crop import CropConfig, FaceCrop, crop_from_landmarks
from avatar_engine.data.prepare import PairConfig, PairDataset, PrepareConfig, load_prepared, prepare_dataset
from avatar_engine.errors import InputFileError
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames

CLIPS = ("C018", "C122")  # 256x256 face crop at 25 fps; 1280x720 with a small face


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("prepared")
    config = PrepareConfig(data=data_dir, cache=cache, splits=("val",), sizes=(256, 512), segment_frames=6,
                           identity_every=4, max_frames_per_clip=14, clip_ids=CLIPS)
    return config, prepare_dataset(config)


def test_prepare_two_val_clips(prepared, data_dir):
    config, report = prepared
    assert {c.clip_id for c in report.clips} == set(CLIPS)
    for c in report.clips:
        assert not c.cached and c.error is None
        assert c.frames_decoded == 14
        assert c.frames_kept + sum(c.skipped.values()) == c.frames_decoded
        d = config.cache / "val" / c.clip_id
        meta = json.loads((d / "meta.json").read_text())
        n = meta["frames_kept"]
        assert n == c.frames_kept > 0
        f256 = np.load(d / "frames_256.npy", mmap_mode="r")
        f512 = np.load(d / "frames_512.npy", mmap_mode="r")
        l256 = np.load(d / "landmarks_256.npy")
        l512 = np.load(d / "landmarks_512.npy")
        assert f256.shape == (n, 256, 256, 3) and f256.dtype == np.uint8
        assert f512.shape == (n, 512, 512, 3) and f512.dtype == np.uint8
        assert l256.shape == (n, 478, 3) and l256.dtype == np.float32
        np.testing.assert_allclose(l512, 2 * l256, rtol=1e-5, atol=1e-3)
        seg = np.load(d / "segment.npy")
        ident = np.load(d / "identity.npy")
        assert ident.shape == (n, 128)
        assert np.isfinite(ident[0]).all()  # each segment's first frame has a descriptor
        assert np.isnan(ident[1]).all()  # identity_every = 4: frame 1 has none
        assert (np.bincount(seg) <= config.segment_frames).all()
        # every frame of a segment is cut with the crop of the segment's first frame
        for s in meta["segments"]:
            crop = FaceCrop(s["center_x"], s["center_y"], s["side"], 256)
            idx = np.load(d / "index.npy")
            frames = [f for f, _ in iter_frames(meta["path"], max_frames=int(idx[s["stop"] - 1]) + 1)]
            k = s["stop"] - 1
            assert np.abs(crop.crop_image(frames[idx[k]]).astype(int) - f256[k]).max() == 0
        # the first segment's crop is the eval framing of its first frame
        with LandmarkDetector(LandmarkConfig(smoothing=False), static=False) as det:
            first = next(iter_frames(meta["path"]))[0]
            pts = det.detect(first, 0.0)
        ref = crop_from_landmarks(pts, CropConfig(size=256))
        assert abs(ref.side - meta["segments"][0]["side"]) < 1e-3 * ref.side
        # landmarks sit on the face inside the crop
        assert (l256[..., :2] > 0).all() and (l256[..., :2] < 256).all()


def test_prepare_is_incremental(prepared):
    config, _ = prepared
    stamps = {p: p.stat().st_mtime_ns for p in config.cache.rglob("*.npy")}
    again = prepare_dataset(config)
    assert all(c.cached for c in again.clips)
    assert {p: p.stat().st_mtime_ns for p in config.cache.rglob("*.npy")} == stamps
    assert "already cached" in again.lines()[0]


def test_pairs_share_a_segment(prepared):
    config, _ = prepared
    clips = load_prepared(config.cache, "val")
    pairs = PairDataset(clips, PairConfig(min_gap=1, seed=3))
    for i in range(20):
        ci, src, drv = pairs.draw(i)
        seg = pairs.clips[ci].segment
        assert seg[src] == seg[drv] and src != drv
        assert np.isfinite(pairs.clips[ci].identity[src]).all()
    item = pairs[0]
    assert item["source"].shape == (3, 256, 256) and item["z_id"].shape == (128,)
    assert pairs.draw(5) == PairDataset(clips, PairConfig(min_gap=1, seed=3)).draw(5)


def test_load_prepared_without_cache(tmp_path):
    with pytest.raises(InputFileError, match="avatar-engine prepare"):
        load_prepared(tmp_path, "train")
