"""Per-frame degradations (noise + JPEG) of SR training inputs, on real val frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_engine.data.degrade import DegradeConfig, Degradation, degrade_clip, sample_degradation
from avatar_engine.errors import AvatarError
from avatar_engine.training.sr import load_train_config
from avatar_engine.io.video import iter_frames

from conftest import REPO


@pytest.fixture(scope="module")
def still_clip(data_dir: Path) -> np.ndarray:
    """``(4, 128, 128, 3) uint8``: one real val frame's face region repeated (a perfectly still clip)."""
    frame = next(iter_frames(data_dir / "clips/val/P048/C077.mp4", max_frames=1))[0]
    return np.repeat(frame[None, 192:320, 192:320], 4, axis=0)


def test_identity_leaves_the_clip_alone(still_clip) -> None:
    out = degrade_clip(still_clip, Degradation(), np.random.default_rng(0))
    assert np.array_equal(out, still_clip)


def test_noise_changes_from_frame_to_frame_and_is_seeded(still_clip) -> None:
    d = Degradation(sigma=5.0, quality=60)
    out = degrade_clip(still_clip, d, np.random.default_rng(1))
    again = degrade_clip(still_clip, d, np.random.default_rng(1))
    other = degrade_clip(still_clip, d, np.random.default_rng(2))
    assert out.shape == still_clip.shape and out.dtype == np.uint8
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    # the input frames are identical, the degraded ones are not: noise is drawn per frame
    for i in range(1, len(out)):
        assert np.abs(out[i].astype(int) - out[0].astype(int)).mean() > 1.0
    # ... but it is noise around the same picture, not a different one
    err = np.abs(out.astype(int) - still_clip.astype(int)).mean()
    assert 1.0 < err < 8.0


def test_jpeg_keeps_the_channel_order() -> None:
    red = np.zeros((1, 64, 64, 3), np.uint8)
    red[..., 0] = 200
    out = degrade_clip(red, Degradation(quality=30), np.random.default_rng(0))
    assert out[..., 0].mean() > 180 and out[..., 2].mean() < 20


def test_sampling_follows_the_config() -> None:
    rng = np.random.default_rng(0)
    assert all(sample_degradation(DegradeConfig(probability=0.0), rng).is_identity for _ in range(20))
    cfg = DegradeConfig(probability=1.0, noise_sigma=(2.0, 4.0), jpeg_probability=1.0, jpeg_quality=(40, 45))
    draws = [sample_degradation(cfg, rng) for _ in range(50)]
    assert all(2.0 <= d.sigma <= 4.0 and 40 <= d.quality <= 45 for d in draws)
    assert len({d.quality for d in draws}) > 1


def test_bad_configs_and_inputs_are_refused(still_clip, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DegradeConfig(probability=1.5)
    with pytest.raises(ValueError):
        DegradeConfig(jpeg_quality=(50, 120))
    with pytest.raises(ValueError):
        degrade_clip(still_clip.astype(np.float32), Degradation(sigma=1.0), np.random.default_rng(0))
    bad = tmp_path / "bad.toml"
    bad.write_text("[degrade]\nprobabilty = 0.5\n")
    with pytest.raises(AvatarError, match="bad SR config"):
        load_train_config(bad)


def test_shipped_config_degrades_inputs() -> None:
    cfg = load_train_config(REPO / "configs/sr_light.toml")
    assert 0.0 < cfg.degrade.probability <= 1.0 and cfg.degrade.noise_sigma[1] > 0
