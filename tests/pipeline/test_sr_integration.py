"""The SR stage inside the driving pipeline: ``--size 512`` renders at 256 and lifts to 512."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.renderers import create_renderer
from avatar_engine.face.source import prepare_source, SourceConfig
from avatar_engine.models.sr_net import SRConfig, SRNet
from avatar_engine.pipeline.super_resolution import SuperResolutionConfig, save_sr_weights
from avatar_engine.io.video import iter_frames

PHOTO = "images/val/P152/I036.png"
CLIP = "clips/val/P004/C018.mp4"


@pytest.fixture(scope="module")
def sr_weights(tmp_path_factory) -> Path:
    """A small temporal network whose every weight is non-zero (so SR visibly differs from bicubic)."""
    torch.manual_seed(0)
    net = SRNet(SRConfig(frames=4, channels=(8, 12, 16)))
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.01)
    return save_sr_weights(net, tmp_path_factory.mktemp("sr") / "sr.safetensors")


def test_size_512_runs_the_sr_stage_and_resets_on_face_loss(data_dir: Path, sr_weights: Path) -> None:
    torch.set_num_threads(1)
    source = prepare_source(data_dir / PHOTO, SourceConfig(size=512))
    frames = [rgb for rgb, _ in iter_frames(data_dir / CLIP, max_frames=5)]
    cfg = ReenactConfig(super_resolution=SuperResolutionConfig(weights=sr_weights))
    with Reenactor(source, create_renderer("mesh"), cfg) as r:
        assert r.super_resolver is not None and r.render_source.size == 256
        assert r.render_source.crop.side == source.crop.side
        results = [r.step(f, i / 25) for i, f in enumerate(frames)]
        assert all(res.crop.shape == (512, 512, 3) and "sr" in res.timings_ms for res in results)
        assert results[-1].frame.shape == source.image.shape
        assert r.super_resolver.frames_seen == 5
        # target landmarks are reported in the 512 crop's pixels
        assert np.abs(results[0].target[:, :2] - source.landmarks[:, :2]).mean() < 0.1 * 512
        black = np.zeros_like(frames[0])
        lost = r.step(black, 5 / 25)
        assert not lost.face_found and r.super_resolver.frames_seen == 1  # history restarted
        r.step(black, 6 / 25)
        assert r.super_resolver.frames_seen == 2  # still lost: no further reset
    plain = ReenactConfig(super_resolution=None)
    with Reenactor(source, create_renderer("mesh"), plain) as r:
        assert r.super_resolver is None and r.render_source is source
        assert r.step(frames[0], 0.0).crop.shape == (512, 512, 3)
