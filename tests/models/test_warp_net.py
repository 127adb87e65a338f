"""The warping network on its own: shapes, the zero-initialised residual (= the mesh warp), source-cache
broadcasting, and gradients that reach every parameter once the head has moved."""
from __future__ import annotations

import pytest
import torch

from avatar_engine.models.warp_net import AdaIN, WarpNet, WarpNetConfig, apply_residual

from grad_check import parameters_without_gradient

R = 32


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(1, 3, R, R, generator=g) * 2 - 1
    src_lines = torch.rand(1, 3, R, R, generator=g) * 2 - 1
    lines = torch.rand(b, 3, R, R, generator=g) * 2 - 1
    flow = (torch.rand(b, 2, R, R, generator=g) - 0.5) * 0.1
    return src, src_lines, lines, flow


def test_shapes_ranges_and_unit_motion_code():
    net = WarpNet(WarpNetConfig(channels=4, code_dim=8))
    src, src_lines, lines, flow = _inputs(b=3)
    out = net(net.encode_source(src, src_lines), lines, flow)
    assert out.residual.shape == (3, 2, R, R)
    assert out.occlusion.shape == (3, 1, R, R)
    assert out.code.shape == (3, 8)
    assert torch.allclose(out.code.norm(dim=1), torch.ones(3), atol=1e-5)
    assert ((out.occlusion > 0) & (out.occlusion < 1)).all()


def test_untrained_network_is_the_mesh_warp():
    net = WarpNet(WarpNetConfig(channels=4, code_dim=8, occlusion_bias=3.0))
    src, src_lines, lines, flow = _inputs()
    out = net(net.encode_source(src, src_lines), lines, flow)
    assert torch.count_nonzero(out.residual) == 0
    assert torch.allclose(out.occlusion, torch.sigmoid(torch.tensor(3.0)).expand_as(out.occlusion))
    mesh_grid = torch.rand(2, 4 * R, 4 * R, 2) * 2 - 1
    assert torch.equal(apply_residual(mesh_grid, out.residual), mesh_grid)


def test_apply_residual_converts_crop_pixels_to_grid_units():
    s = 16
    grid = torch.zeros(1, s, s, 2)
    residual = torch.zeros(1, 2, 4, 4)
    residual[:, 0] = 2.0  # two crop pixels to the right, everywhere
    out = apply_residual(grid, residual)
    assert torch.allclose(out[..., 0], torch.full((1, s, s), 2.0 * 2.0 / s))
    assert torch.count_nonzero(out[..., 1]) == 0


def test_batch_one_source_cache_is_broadcast():
    torch.manual_seed(0)
    net = WarpNet(WarpNetConfig(channels=4, code_dim=8))
    with torch.no_grad():
        net.head.weight.normal_(0, 0.1)
    src, src_lines, lines, flow = _inputs(b=2)
    cache = net.encode_source(src, src_lines)
    both = net(cache, lines, flow)
    one = net(cache, lines[1:], flow[1:])
    assert torch.allclose(both.residual[1:], one.residual, atol=1e-5)


def test_adain_starts_as_plain_instance_norm():
    layer = AdaIN(4, 3)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(layer(x, torch.randn(2, 3)), torch.nn.functional.instance_norm(x), atol=1e-6)


def test_gradients_reach_every_parameter_group():
    torch.manual_seed(0)
    net = WarpNet(WarpNetConfig(channels=4, code_dim=8))
    src, src_lines, lines, flow = _inputs()
    target = torch.randn(2, 2, R, R)

    def loss() -> torch.Tensor:
        out = net(net.encode_source(src, src_lines), lines, flow)
        return (out.residual - target).pow(2).mean() + out.occlusion.mean()

    assert parameters_without_gradient(net, loss) == []


def test_config_validation():
    with pytest.raises(ValueError):
        WarpNetConfig(channels=0)
