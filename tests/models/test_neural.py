"""Neural base model: shapes, the fusion mask, zero-residual = mesh warp, weights round trip, renderer fallback."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from avatar_engine.errors import WeightsError
from avatar_engine.models.base_model import NeuralAvatar, NeuralConfig, count_cost, load_model, save_weights
from avatar_engine.renderers.neural import NeuralRenderer
from avatar_engine.io.image import image_to_tensor
from avatar_engine.renderers import create_renderer
from avatar_engine.renderers.mesh import MeshRenderer
from avatar_engine.face.source import SourceConfig, SourceFace, prepare_source
from avatar_engine.training.trainer import load_train_config
from avatar_engine.io.video import iter_frames
from avatar_engine.geometry.mesh_warp import MeshWarp, warp_image

from conftest import REPO


@pytest.fixture(scope="module")
def pair(data_dir) -> tuple[SourceFace, np.ndarray]:
    """A real source (first frame of a val clip) and the landmarks of a later frame in its crop."""
    frames = [f for f, _ in iter_frames(data_dir / "clips/val/P004/C018.mp4", max_frames=13)]
    source = prepare_source(frames[0], SourceConfig(size=256))
    later = prepare_source(frames[12], SourceConfig(size=256))
    target = source.crop.to_crop(later.crop.to_image(later.landmarks)).astype(np.float32)
    return source, target


def _inputs(source: SourceFace, target: np.ndarray, model: NeuralAvatar):
    src = image_to_tensor(source.crop_image)
    src_pts = torch.from_numpy(source.landmarks)[None]
    tgt = torch.from_numpy(target)[None]
    mesh = MeshWarp(source.landmarks, 256, model.config.mesh_warp_config())
    return src, src_pts, tgt, mesh.grid(tgt)


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_shapes_dtypes_and_mask_range(pair):
    source, target = pair
    torch.manual_seed(0)
    model = NeuralAvatar(NeuralConfig()).eval()
    _randomise(model)
    src, src_pts, tgt, grid = _inputs(source, target, model)
    with torch.no_grad():
        cache = model.encode_source(src, src_pts, torch.randn(1, 128))
        out = model(cache, tgt.expand(2, -1, -1), grid.expand(2, -1, -1, -1))  # batch-1 cache broadcast
    r = model.config.flow_size
    assert out.image.shape == out.warped.shape == (2, 3, 256, 256)
    assert out.grid.shape == (2, 256, 256, 2)
    assert out.residual.shape == (2, 2, r, r) and out.occlusion.shape == (2, 1, r, r)
    for t in (out.image, out.warped, out.grid, out.residual, out.occlusion):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert ((out.occlusion > 0) & (out.occlusion < 1)).all()
    assert len(out.masks) == model.config.refine.blocks + int(model.config.refine.mid_block)
    for m in out.masks:
        assert ((m > 0) & (m < 1)).all()
        assert m.std() > 0  # spatially varying, not a constant


def test_untrained_model_is_the_mesh_warp(pair):
    source, target = pair
    model = NeuralAvatar(NeuralConfig()).eval()
    src, src_pts, tgt, grid = _inputs(source, target, model)
    with torch.no_grad():
        out = model(model.encode_source(src, src_pts, torch.randn(1, 128)), tgt, grid)
    assert torch.equal(out.grid, grid)
    assert torch.equal(out.residual, torch.zeros_like(out.residual))
    mesh = warp_image(src * 2 - 1, grid)
    assert torch.equal(out.warped, mesh)
    assert torch.equal(out.image, out.warped)  # the refinement's correction starts at zero
    # and the mesh warp really moved the face (the test is not trivially about an identity warp)
    assert (mesh - (src * 2 - 1)).abs().mean() > 1e-3


def test_weights_round_trip_and_renderer(pair, tmp_path):
    source, target = pair
    model = NeuralAvatar(NeuralConfig()).eval()
    _randomise(model, seed=1, scale=0.02)
    path = tmp_path / "m.safetensors"
    save_weights(model, path, {"note": "test"})
    with pytest.raises(ValueError, match="reserved"):
        save_weights(model, tmp_path / "x.safetensors", {"config": "mine"})
    loaded = load_model(path)
    src, src_pts, tgt, grid = _inputs(source, target, model)
    z = torch.randn(1, 128)
    with torch.no_grad():
        a = model(model.encode_source(src, src_pts, z), tgt, grid)
        b = loaded(loaded.encode_source(src, src_pts, z), tgt, grid)
    assert torch.equal(a.image, b.image)
    renderer = NeuralRenderer(weights=path)
    out = renderer.render(source, target)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert renderer.render(source, target).tobytes() == out.tobytes()  # cached source, deterministic
    # fp16 storage: same outputs within half precision
    save_weights(model, tmp_path / "h.safetensors", half=True)
    half = load_model(tmp_path / "h.safetensors")
    with torch.no_grad():
        c = half(half.encode_source(src, src_pts, z), tgt, grid)
    assert (c.image - a.image).abs().max() < 0.05


def test_missing_or_corrupt_weights_fall_back_to_mesh(tmp_path, caplog):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(WeightsError, match="corrupt"):
        load_model(bad)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with caplog.at_level(logging.WARNING, logger="avatar_engine"):
        r = create_renderer("neural", "cpu", weights=bad)
    assert isinstance(r, MeshRenderer)
    assert "falling back to the mesh renderer" in caplog.text


def test_configs_and_cost_budgets():
    lite = load_train_config(REPO / "configs/neural_lite.toml").model
    full = load_train_config(REPO / "configs/neural_full.toml").model
    costs = {}
    for cfg in (lite, full):
        costs[cfg.name] = count_cost(NeuralAvatar(cfg))
        c = costs[cfg.name]
        assert c["warp_net"]["gflop"] > 0 and c["refine_net"]["gflop"] > 0
        assert c["total_per_frame"]["gflop"] >= c["warp_net"]["gflop"] + c["refine_net"]["gflop"] - 1e-6
    assert costs["lite"]["total_per_frame"]["gflop"] <= 10
    assert costs["full"]["total_per_frame"]["gflop"] <= 60
    assert costs["full"]["total_per_frame"]["gflop"] > 3 * costs["lite"]["total_per_frame"]["gflop"]


def test_shipped_weights_load():
    path = REPO / "avatar_engine/weights/neural_lite.safetensors"
    if not path.is_file():
        pytest.skip("no shipped neural weights in this checkout")
    model = load_model(path)
    assert model.config.name == "lite"
    assert path.stat().st_size < 8 * 1024 * 1024


@pytest.mark.parametrize("name", ["mesh", "neural"])
def test_plan_then_draw_is_render_and_a_stale_plan_is_planned_again(pair, data_dir, name):
    """``render`` = ``draw(plan)`` (the live engine plans in one thread and draws in another); a plan
    made for another source is not drawn with this one's geometry."""
    source, target = pair
    renderer = create_renderer(name)
    plan = renderer.plan(source, target)
    assert plan.source_key == source.key and plan.geometry is not None
    expected = create_renderer(name).render(source, target)
    assert np.array_equal(renderer.draw(source, plan), expected)
    other = prepare_source(data_dir / "images/val/P144/I045.jpg", SourceConfig(size=256))
    stale = renderer.plan(other, target)
    assert stale.source_key != source.key
    assert np.array_equal(renderer.draw(source, stale), expected)
