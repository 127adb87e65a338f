"""The ID-preserving refinement network on its own: shapes, fusion masks, the zero-initialised head
(= the warped image), source-cache broadcasting, and gradients that reach every parameter group."""
from __future__ import annotations

import pytest
import torch

from avatar_engine.models.refine_net import FusionBlock, RefineNet, RefineNetConfig, downsample_grid, resize

from grad_check import parameters_without_gradient

S = 32


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(1, 3, S, S, generator=g) * 2 - 1
    z_id = torch.randn(1, 128, generator=g)
    warped = torch.rand(b, 3, S, S, generator=g) * 2 - 1
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    grid = torch.stack([xs, ys], -1)[None].repeat(b, 1, 1, 1) + 0.02 * torch.randn(b, S, S, 2, generator=g)
    occlusion = torch.rand(b, 1, S // 4, S // 4, generator=g)
    lines = torch.rand(b, 3, S // 4, S // 4, generator=g) * 2 - 1
    return source, z_id, warped, grid, occlusion, lines


@pytest.mark.parametrize("mid_block, head_scale", [(False, 2), (True, 1)])
def test_shapes_and_mask_ranges(mid_block, head_scale):
    cfg = RefineNetConfig(low_channels=8, mid_channels=4, head_channels=4, blocks=2, mid_block=mid_block,
                          head_scale=head_scale, id_code_dim=16)
    net = RefineNet(cfg)
    source, z_id, warped, grid, occ, lines = _inputs(b=3)
    out = net(net.encode_source(source, z_id), warped, grid, occ, lines)
    assert out.image.shape == (3, 3, S, S)
    assert len(out.masks) == cfg.blocks + int(mid_block)
    assert out.masks[0].shape == (3, 1, S // 4, S // 4)
    if mid_block:
        assert out.masks[-1].shape == (3, 1, S // 2, S // 2)
    assert all(((m > 0) & (m < 1)).all() for m in out.masks)


def test_untrained_network_returns_the_warped_image():
    net = RefineNet(RefineNetConfig(low_channels=8, mid_channels=4, head_channels=4, id_code_dim=16))
    source, z_id, warped, grid, occ, lines = _inputs()
    out = net(net.encode_source(source, z_id), warped, grid, occ, lines)
    assert torch.equal(out.image, warped)


def test_batch_one_source_cache_is_broadcast():
    torch.manual_seed(0)
    net = RefineNet(RefineNetConfig(low_channels=8, mid_channels=4, head_channels=4, id_code_dim=16))
    with torch.no_grad():
        net.head2.weight.normal_(0, 0.1)
    source, z_id, warped, grid, occ, lines = _inputs(b=2)
    cache = net.encode_source(source, z_id)
    both = net(cache, warped, grid, occ, lines).image
    one = net(cache, warped[1:], grid[1:], occ[1:], lines[1:]).image
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_fusion_mask_selects_identity_or_motion_branch():
    torch.manual_seed(0)
    block = FusionBlock(4, 3, 5)
    with torch.no_grad():
        block.id_affine.bias.copy_(torch.cat([torch.zeros(4), torch.full((4,), 1.0)]))  # identity: beta = 1
        block.film.bias.copy_(torch.cat([torch.zeros(4), torch.full((4,), -1.0)]))  # motion: beta = -1
        block.conv.weight.zero_()
        block.conv.bias.zero_()
    h, m, z = torch.randn(1, 4, 6, 6), torch.randn(1, 3, 6, 6), torch.randn(1, 5)
    for bias, expected_sign in ((20.0, -1.0), (-20.0, 1.0)):  # mask -> 1: motion branch; -> 0: identity branch
        with torch.no_grad():
            block.mask.weight.zero_()
            block.mask.bias.fill_(bias)
        out, mask = block(h, m, z)
        fused = torch.nn.functional.instance_norm(h) + expected_sign
        assert torch.allclose(out, h, atol=1e-6)  # the zeroed residual conv leaves h
        assert torch.allclose(mask, torch.full_like(mask, float(torch.sigmoid(torch.tensor(bias)))))
        # the branch the mask picks is the one whose beta shows in the pre-conv activation
        g_id, b_id = block.id_affine(z)[:, :, None, None].chunk(2, dim=1)
        g_m, b_m = block.film(m).chunk(2, dim=1)
        n = torch.nn.functional.instance_norm(h)
        pre = mask * (n * (1 + g_m) + b_m) + (1 - mask) * (n * (1 + g_id) + b_id)
        assert torch.allclose(pre, fused, atol=1e-4)


def test_resize_and_downsample_grid():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resize(x, 4), x)
    assert torch.allclose(resize(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    grid = torch.rand(1, 8, 8, 2)
    assert downsample_grid(grid, 4).shape == (1, 4, 4, 2)
    assert torch.allclose(downsample_grid(grid, 4)[0, 0, 0], grid[0, :2, :2].mean(dim=(0, 1)))


def test_gradients_reach_every_parameter_group():
    torch.manual_seed(0)
    net = RefineNet(RefineNetConfig(low_channels=8, mid_channels=4, head_channels=4, id_code_dim=16,
                                    mid_block=True))
    source, z_id, warped, grid, occ, lines = _inputs()
    target = torch.rand(2, 3, S, S) * 2 - 1

    def loss() -> torch.Tensor:
        out = net(net.encode_source(source, z_id), warped, grid, occ, lines)
        return (out.image - target).abs().mean()

    assert parameters_without_gradient(net, loss) == []


def test_config_validation():
    with pytest.raises(ValueError):
        RefineNetConfig(head_scale=3)
    with pytest.raises(ValueError):
        RefineNetConfig(blocks=0)
