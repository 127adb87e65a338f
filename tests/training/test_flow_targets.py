"""Flow supervision of the warping network: targets recover a known misalignment of the mesh warp,
occluded pixels get no weight, the loss reaches the warping network, and batches carry the targets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar_engine.data.prepare import load_prepared
from avatar_engine.geometry.mesh_warp import identity_grid
from avatar_engine.models.warp_net import apply_residual
from avatar_engine.training.batches import BatchConfig, PairBatches, to_device
from avatar_engine.training.flow_targets import flow_loss, residual_flow_targets
from avatar_engine.training.step import StepOptions, build_step
from avatar_engine.training.trainer import load_train_config

from conftest import REPO


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture ``(S, S, 3) uint8`` (Farneback needs structure at several scales)."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 3, size // 8, size // 8), dtype=np.float32))
    img = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def test_targets_recover_a_known_shift_of_the_mesh_warp():
    s, r = 256, 64
    src = _texture(s)
    # the driving frame is the source moved by (+4, -3) px: a perfect warp samples the source at p - shift
    drv = np.roll(src, (-3, 4), axis=(0, 1))
    grid = identity_grid(s, s, torch.device("cpu"), torch.float32)  # the mesh warp says: no motion
    target, weight = residual_flow_targets(_batch(src), _batch(drv), grid, r)
    assert target.shape == (1, 2, r, r) and weight.shape == (1, 1, r, r)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert weight[inner].mean() > 0.5  # a textured image: most of it is supervised
    keep = weight[inner][:, 0] > 0.5
    assert abs(float(target[inner][:, 0][keep].median()) - (-4.0)) < 0.5
    assert abs(float(target[inner][:, 1][keep].median()) - 3.0) < 0.5
    # applying the target as the residual brings the warped source onto the driving frame
    srcf, drvf = _batch(src).float(), _batch(drv).float()
    before = (F.grid_sample(srcf, grid, align_corners=False) - drvf)[..., 16:-16, 16:-16].abs().mean()
    after = (F.grid_sample(srcf, apply_residual(grid, target), align_corners=False) - drvf)[..., 16:-16, 16:-16].abs().mean()
    assert after < 0.3 * before


def test_flat_regions_get_no_weight():
    s = 256
    src = _texture(s, 3)
    src[:, :128] = 120  # the left half is a plain wall
    grid = identity_grid(s, s, torch.device("cpu"), torch.float32)
    _, weight = residual_flow_targets(_batch(src), _batch(np.roll(src, 2, axis=1)), grid, 64)
    assert float(weight[0, 0, 4:-4, 4:24].max()) == 0.0
    assert float(weight[0, 0, 4:-4, 40:-4].mean()) > 0.5


def test_occluded_pixels_get_no_weight():
    s = 256
    src = _texture(s, 1)
    drv = src.copy()
    drv[96:160, 96:160] = _texture(64, 2)  # new content the source does not have
    grid = identity_grid(s, s, torch.device("cpu"), torch.float32)
    target, weight = residual_flow_targets(_batch(src), _batch(drv), grid, 64)
    assert weight[0, 0, 28:36, 28:36].mean() < weight[0, 0, :16, :16].mean() - 0.3
    assert target[0, :, :16, :16].abs().max() < 1.0  # unchanged content: nothing to correct


def test_flow_loss_is_weighted_mean_px_error():
    res = torch.zeros(1, 2, 4, 4)
    tgt = torch.full((1, 2, 4, 4), 2.0)
    w = torch.zeros(1, 1, 4, 4)
    w[..., :2, :] = 1.0
    assert float(flow_loss(res, tgt, w)) == pytest.approx(2.0)
    tgt[..., 2:, :] = 100.0  # unweighted pixels do not count
    assert float(flow_loss(res, tgt, w)) == pytest.approx(2.0)
    assert float(flow_loss(res, tgt, torch.zeros_like(w))) == 0.0


@pytest.fixture(scope="module")
def cache(c018_cache):
    return c018_cache


def test_batches_carry_targets_and_the_flow_loss_trains_the_warp_net(cache):
    cfg = load_train_config(REPO / "configs/neural_lite.toml")
    loss = dataclasses.replace(cfg.loss, flow=0.2, gan=0.0, feature_matching=0.0)
    cfg = dataclasses.replace(cfg, loss=loss, step=StepOptions(compile=False), drivings=1)
    assert cfg.batch_config().flow_targets
    batches = PairBatches(load_prepared(cache, "val"), cfg.model, dataclasses.replace(cfg.batch_config(), groups=2))
    b = batches[0]
    r = cfg.model.flow_size
    assert b["flow_target"].shape == (2, 2, r, r) and b["flow_weight"].shape == (2, 1, r, r)
    assert torch.isfinite(b["flow_target"]).all() and 0 <= float(b["flow_weight"].min()) <= float(b["flow_weight"].max()) <= 1
    from avatar_engine.models.base_model import NeuralAvatar

    torch.manual_seed(0)
    model = NeuralAvatar(cfg.model)
    step = build_step(model, cfg.loss, cfg.optim, options=cfg.step)
    head = model.warp_net.head.weight.detach().clone()
    parts = step(to_device(b, "cpu", cfg.model), full=False)
    assert parts["flow_px"] > 0
    assert not torch.equal(model.warp_net.head.weight, head)
    # off by default: no targets built, no flow term
    plain = load_train_config(REPO / "configs/neural_lite.toml")
    assert not plain.batch_config().flow_targets and "flow_target" not in PairBatches(
        load_prepared(cache, "val"), plain.model, dataclasses.replace(plain.batch_config(), groups=1))[0]
