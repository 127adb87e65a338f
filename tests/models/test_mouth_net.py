"""The learned mouth stage: patch geometry, the network and its weight file, the renderer wiring, and
its training on pairs built from a real prepared clip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_engine.errors import WeightsError
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.geometry.mouth_patch import (MouthPatchConfig, cut_patch, feather, lip_masks, mouth_affine,
                                                paste_delta, to_patch)
from avatar_engine.io.video import iter_frames
from avatar_engine.models.mouth_net import DEFAULT_MOUTH_WEIGHTS, MouthNet, MouthStage, load_mouth_net, save_mouth_net
from avatar_engine.renderers import create_renderer
from avatar_engine.training.mouth import (MouthDataConfig, MouthTrainConfig, build_mouth_pairs, load_mouth_pairs,
                                          mouth_batch, train_mouth)


@pytest.fixture(scope="module")
def frames(data_dir):
    return [rgb for rgb, _ in iter_frames(data_dir / "clips/val/P048/C077.mp4", 40)]


@pytest.fixture(scope="module")
def source(frames):
    return prepare_source(frames[0], SourceConfig(size=256, max_side=max(frames[0].shape[:2])))


def _rotated(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = points.copy()
    out[:, :2] = (points[:, :2] - centre) @ rot.T + centre
    return out


def test_patch_is_upright_centred_and_the_same_size_whatever_the_head_roll(source):
    cfg = MouthPatchConfig()
    pts = source.landmarks.astype(np.float64)
    for roll in (0.0, 25.0, -40.0):
        p = _rotated(pts, roll, np.array([128.0, 128.0]))
        q = to_patch(p, mouth_affine(p, cfg))
        left, right = q[61], q[291]
        assert abs(left[1] - right[1]) < 1e-3  # corners on one row
        assert np.linalg.norm(right - left) == pytest.approx(cfg.size / cfg.span, rel=1e-4)
        assert left[0] < right[0]
        centre = q[[61, 291, 0, 17]].mean(axis=0)
        np.testing.assert_allclose(centre, [cfg.size / 2, cfg.size / 2], atol=1e-3)
    # cut_patch samples what to_patch says: a bright dot at the upper-lip landmark lands on its patch point
    img = np.zeros((256, 256, 3), np.uint8)
    x, y = pts[0, :2]
    img[int(y), int(x)] = 255
    a = mouth_affine(pts, cfg)
    patch = cut_patch(img, a, cfg.size).astype(np.float32).sum(axis=2)
    peak = np.unravel_index(np.argmax(patch), patch.shape)
    px, py = to_patch(np.array([[int(x) + 0.5, int(y) + 0.5]]), a)[0]
    assert abs(peak[1] + 0.5 - px) <= 1.0 and abs(peak[0] + 0.5 - py) <= 1.0


def test_masks_feather_and_paste(source):
    cfg = MouthPatchConfig()
    a = mouth_affine(source.landmarks, cfg)
    inner, outer = lip_masks(to_patch(source.landmarks, a), cfg.size)
    assert outer.sum() > 200 and (inner <= outer + 1e-6).all()  # the opening lies inside the lips
    w = feather(cfg)
    assert w[cfg.size // 2, cfg.size // 2] == 1.0 and w[0, 0] == 0.0 and w[0, cfg.size // 2] < 0.05
    img = source.crop_image
    assert np.array_equal(paste_delta(img, np.zeros((cfg.size, cfg.size, 3), np.float32), a), img)
    out = paste_delta(img, np.full((cfg.size, cfg.size, 3), 40.0, np.float32) * w[..., None], a)
    changed = np.abs(out.astype(int) - img.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    mouth = source.landmarks[[61, 291, 0, 17], :2].mean(axis=0)
    assert changed.any() and np.hypot(xs - mouth[0], ys - mouth[1]).max() < cfg.span * 0.5 * np.linalg.norm(
        source.landmarks[291, :2] - source.landmarks[61, :2]) * 1.5


def test_untrained_stage_changes_nothing_and_a_trained_one_moves_the_mouth_only(source, frames):
    net = MouthNet().eval()
    stage = MouthStage(net, source.crop_image, source.landmarks)
    img = source.crop_image.copy()
    assert np.array_equal(stage.apply(img, source.landmarks), img)
    torch.manual_seed(0)
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight, std=0.05)
    out = stage.apply(img, source.landmarks)
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
    assert diff.max() > 0
    assert diff[:60].max() == 0  # the eyes and forehead are untouched
    nan = source.landmarks.copy()
    nan[5] = np.nan
    assert np.array_equal(stage.apply(img, nan), img)  # unusable landmarks: left as rendered


def test_weight_file_roundtrip_and_bad_files(tmp_path):
    torch.manual_seed(1)
    net = MouthNet()
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight, std=0.05)
    path = tmp_path / "m.safetensors"
    save_mouth_net(net, path, half=False)
    again = load_mouth_net(path)
    x = torch.randn(1, 9, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="corrupt mouth weight file"):
        load_mouth_net(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="mouth weights not found"):
        load_mouth_net(tmp_path / "missing.safetensors")


def test_the_stage_is_opt_in_drawn_with_the_face_layers_and_falls_back_with_one_warning(source, frames, tmp_path,
                                                                                         warns_once):
    assert DEFAULT_MOUTH_WEIGHTS.is_file(), "the shipped mouth weights are part of the package"
    from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector

    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        target = det.detect(frames[30])  # another frame of the clip, same framing
    target = source.crop.to_crop(target)
    off = create_renderer("mesh")
    assert off.mouth_weights is None  # off by default
    on = create_renderer("mesh", mouth_weights=DEFAULT_MOUTH_WEIGHTS)
    a, b = on.render(source, target), off.render(source, target)
    assert not np.array_equal(a, b)
    # a neural renderer that falls back to the mesh keeps the stage
    fallback = create_renderer("neural", weights=tmp_path / "none.safetensors", mouth_weights=DEFAULT_MOUTH_WEIGHTS)
    assert fallback.name == "mesh" and np.array_equal(fallback.render(source, target), a)
    # the stage belongs to the face layers: without them (and for the source baseline) it is not drawn
    plain_on = create_renderer("mesh", mouth_weights=DEFAULT_MOUTH_WEIGHTS)
    plain_off = create_renderer("mesh")
    plain_on.layers = plain_off.layers = None
    assert np.array_equal(plain_on.render(source, target), plain_off.render(source, target))
    src = create_renderer("source", mouth_weights=DEFAULT_MOUTH_WEIGHTS)
    assert np.array_equal(src.render(source, target), source.crop_image)
    broken = create_renderer("mesh", mouth_weights=tmp_path / "nothing.safetensors")
    assert np.array_equal(warns_once(lambda: broken.render(source, target), "learned stage"), b)


def test_pairs_from_a_prepared_clip_and_training_lowers_the_mouth_error(c018_cache, tmp_path):
    cfg = MouthTrainConfig(steps=30, batch=8, lr=2e-3, val_every=30, save_every=15, log_every=5, gan=0.02,
                           feature_matching=0.5,
                           train=MouthDataConfig(stride=1), val=MouthDataConfig(stride=2))
    folder = build_mouth_pairs(c018_cache, "train", cfg.train, cfg.model.patch)
    pairs = load_mouth_pairs(folder)
    assert len(pairs) == 10 and pairs.sources.shape[0] == 2  # 2 segments of 6 frames: 1 source + 5 drivers each
    assert folder == build_mouth_pairs(c018_cache, "train", cfg.train, cfg.model.patch)  # reused, not rebuilt
    b = mouth_batch(pairs, np.array([0, 1]), 96, flip=np.array([False, True]))
    assert b["x"].shape == (2, 9, 96, 96) and b["target"].shape == (2, 3, 96, 96)
    plain = mouth_batch(pairs, np.array([1]), 96)
    torch.testing.assert_close(b["x"][1], plain["x"][0].flip(-1))
    report = train_mouth(cfg, c018_cache, tmp_path / "run", steps=15)
    assert report.steps == 15 and (tmp_path / "run" / "checkpoint.pt").is_file()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"model", "disc", "d_optimizer"} <= set(state)  # the discriminator is checkpointed too
    report = train_mouth(cfg, c018_cache, tmp_path / "run")  # resumes at 15
    assert report.steps == 30 and report.steps_this_run == 15
    val = report.last_val
    assert val["l1_corrected"] < val["l1_rendered"]
    net = load_mouth_net(tmp_path / "run" / "mouth.safetensors")
    assert isinstance(net, MouthNet)
