"""The mouth bank: exemplars chosen from real frames, its file, and the mouth layer drawing a person's
own interior into a target opening."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar_engine.data.prepare import load_prepared
from avatar_engine.errors import WeightsError
from avatar_engine.face import topology
from avatar_engine.face.source import crop_source
from avatar_engine.geometry.mouth import MouthLayer
from avatar_engine.geometry.mouth_bank import MouthBankConfig, build_mouth_bank, load_mouth_bank, mouth_shape
from avatar_engine.renderers import create_renderer


@pytest.fixture(scope="module")
def clip(c018_cache):
    (c,) = load_prepared(c018_cache, "val", clip_ids=("C018",))
    return c


def _frames(clip):
    return [(np.asarray(clip.frames[i]), np.asarray(clip.landmarks[i])) for i in range(len(clip))]


def _inside(points: np.ndarray, shape) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points[topology.INNER_LIPS_LOOP, :2] - 0.5).astype(np.int32)], 1)
    return cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)  # away from the anti-aliased lip edge


def test_exemplars_spread_over_the_shapes_seen_and_round_trip(clip, tmp_path):
    frames = _frames(clip)
    shapes = np.stack([mouth_shape(p) for _, p in frames])
    bank = build_mouth_bank(frames, MouthBankConfig(exemplars=4))
    assert bank is not None and 2 <= len(bank) <= 4
    assert bank.shapes[0, 0] == pytest.approx(shapes[:, 0].max())  # the widest opening comes first
    assert len({tuple(s) for s in np.round(bank.shapes, 4)}) == len(bank)  # no exemplar twice
    for block, pts in zip(bank.blocks, bank.points):
        assert block.dtype == np.uint8 and block.shape[2] == 3
        lips = pts[topology.OUTER_LIPS_IDX]
        assert (lips >= 0).all() and (lips[:, 0] <= block.shape[1]).all() and (lips[:, 1] <= block.shape[0]).all()
    bank.save(tmp_path / "bank.safetensors", {"profile": "ann"})
    again = load_mouth_bank(tmp_path / "bank.safetensors")
    np.testing.assert_allclose(again.shapes, bank.shapes, rtol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(again.blocks, bank.blocks))
    # a capture whose mouth never opens gives no bank
    assert build_mouth_bank(frames, MouthBankConfig(min_gap=10.0)) is None


def test_bad_bank_files(clip, tmp_path):
    with pytest.raises(WeightsError, match="mouth bank not found"):
        load_mouth_bank(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="corrupt mouth bank"):
        load_mouth_bank(tmp_path / "junk.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"), metadata={"kind": "mouth_net"})
    with pytest.raises(WeightsError, match="not a version-1 mouth bank"):
        load_mouth_bank(tmp_path / "other.safetensors")


def test_the_layer_draws_the_persons_own_interior(clip):
    frames = _frames(clip)
    bank = build_mouth_bank(frames)
    gaps = [mouth_shape(p)[0] for _, p in frames]
    closed = int(np.argmin(gaps))
    image, target = frames[int(np.argmax(gaps))]  # the widest-open frame is an exemplar of its own bank
    inside = _inside(target, image.shape)
    assert inside.sum() > 50
    hollow = image.copy()
    hollow[inside] = 128  # a rendered frame whose mouth interior is missing
    src_img, src_pts = frames[closed]
    own = MouthLayer(src_img, src_pts, bank=bank).apply(hollow, target)
    procedural = MouthLayer(src_img, src_pts).apply(hollow, target)
    err_own = np.abs(own[inside].astype(float) - image[inside]).mean()
    err_proc = np.abs(procedural[inside].astype(float) - image[inside]).mean()
    assert err_own < 12.0 and err_own < 0.5 * err_proc
    # the same source's own (closed) shape draws nothing
    assert np.array_equal(MouthLayer(src_img, src_pts, bank=bank).apply(hollow, src_pts), hollow)


def test_renderers_take_a_bank_file_and_fall_back_with_one_warning(clip, tmp_path, warns_once):
    frames = _frames(clip)
    path = tmp_path / "bank.safetensors"
    build_mouth_bank(frames).save(path)
    gaps = [mouth_shape(p)[0] for _, p in frames]
    source = crop_source(*frames[int(np.argmin(gaps))], key="c018-closed")
    target = np.asarray(frames[int(np.argmax(gaps))][1], np.float32)
    plain = create_renderer("mesh").render(source, target)
    own = create_renderer("mesh", mouth_bank=path).render(source, target)
    assert not np.array_equal(plain, own)
    broken = create_renderer("mesh", mouth_bank=tmp_path / "nothing.safetensors")
    out = warns_once(lambda: broken.render(source, target), "procedural mouth interior")
    assert np.array_equal(out, plain)
