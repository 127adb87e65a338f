"""Temporal super-resolution: causality, streaming == offline, ring buffer, inflation, training step.

Real frames from the val clip P048/C077 (512x512 talking face): the central 256 x 256 region is the
"512" ground truth of these small tests, its 2x box downscale the input.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar_engine.errors import WeightsError
from avatar_engine.models.sr_net import CausalConv3d, SRConfig, SRNet, count_flops, inflate, temporal_kernels
from avatar_engine.pipeline.super_resolution import (DEFAULT_WEIGHTS, SuperResolutionConfig, SuperResolver, load_sr_net,
                                            save_sr_weights)
from avatar_engine.io.video import iter_frames
from avatar_engine.models.streaming import RingBuffer, StreamState

TOL = 1e-5
"""Streaming vs offline tolerance (float32, max abs difference on a [0, 1] image)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on the shared 2-core machine extra threads only fight for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_clip(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inp (1, 3, 12, 128, 128), gt (1, 3, 12, 256, 256))`` float in [0, 1] from val C077."""
    frames = [rgb for rgb, _ in iter_frames(data_dir / "clips/val/P048/C077.mp4", max_frames=12)]
    gt = np.stack([f[128:384, 128:384] for f in frames])
    inp = np.stack([cv2.resize(g, (128, 128), interpolation=cv2.INTER_AREA) for g in gt])

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(3, 0, 1, 2)[None].float() / 255.0

    return t(inp), t(gt)


def _random_net(frames: int, seed: int = 0, **kw) -> SRNet:
    """A network with every weight random (tail included), so no path is trivially zero."""
    torch.manual_seed(seed)
    net = SRNet(SRConfig(frames=frames, channels=(8, 12, 16), **kw)).eval()
    with torch.no_grad():
        for conv in net.convs:
            conv.weight.normal_(0, 0.1)
            conv.bias.normal_(0, 0.02)
    return net


def test_temporal_kernels_cover_the_window() -> None:
    for frames in range(1, 10):
        k = temporal_kernels(frames, 5, 3)
        assert 1 + sum(x - 1 for x in k) == frames and max(k) <= 3
    with pytest.raises(ValueError):
        temporal_kernels(12, 5, 3)
    assert [c.kt for c in SRNet(SRConfig(frames=1)).convs] == [1] * len(SRNet(SRConfig(frames=1)).convs)


@pytest.mark.parametrize("kt,stride", [(1, 1), (3, 1), (2, 2)])
def test_causal_conv_matches_conv3d(real_clip, kt: int, stride: int) -> None:
    inp, _ = real_clip
    torch.manual_seed(kt)
    conv = CausalConv3d(3, 5, kt, stride=stride)
    with torch.no_grad():
        ref = torch.nn.functional.conv3d(inp, conv.weight, conv.bias, (1, stride, stride), (0, 1, 1))
        out = conv(inp)
    assert out.shape == ref.shape == (1, 5, 12 - kt + 1, 128 // stride, 128 // stride)
    assert (out - ref).abs().max() < TOL


def test_untrained_network_is_bicubic(real_clip) -> None:
    inp, _ = real_clip
    out = SRNet(SRConfig(frames=4)).eval()(inp[:, :, :3])
    ref = torch.nn.functional.interpolate(inp[0, :, :3].transpose(0, 1), scale_factor=2, mode="bicubic",
                                          align_corners=False)
    assert torch.allclose(out[0].transpose(0, 1), ref, atol=1e-6)


@pytest.mark.parametrize("frames", [4, 8])
def test_causal_future_frames_never_change_past_outputs(real_clip, frames: int) -> None:
    inp, _ = real_clip
    net = _random_net(frames)
    with torch.no_grad():
        out = net(inp)
        changed = inp.clone()
        changed[:, :, 7:] = changed[:, :, 7:].flip(-1) * 0.5  # rewrite frames 7..11
        out2 = net(changed)
    assert torch.equal(out[:, :, :7], out2[:, :, :7])
    assert (out[:, :, 7] - out2[:, :, 7]).abs().max() > 1e-2  # the test can see a change
    # and the temporal field is T frames: frame 7 + T - 1 is the last output it reaches
    with torch.no_grad():
        one = inp.clone()
        one[:, :, 3] = 0.0
        out3 = net(one)
    diff = (out3 - out).abs().flatten(3).amax((0, 1, 3))
    assert (diff[:3] == 0).all() and (diff[3: 3 + frames] > 0).all() and (diff[3 + frames:] == 0).all()


@pytest.mark.parametrize("frames", [1, 4, 8])
def test_streaming_equals_offline(real_clip, frames: int) -> None:
    inp, _ = real_clip
    net = _random_net(frames, seed=frames)
    state = net.new_state()
    with torch.no_grad():
        offline = net(inp)
        stream = torch.stack([net.step(inp[:, :, i], state) for i in range(inp.shape[2])], dim=2)
        tail = net(inp, n_out=3)
    assert (stream - offline).abs().max() < TOL
    assert (tail - offline[:, :, -3:]).abs().max() < TOL
    # a reset starts a new clip: the same outputs as a fresh stream
    state.reset()
    with torch.no_grad():
        again = torch.stack([net.step(inp[:, :, i], state) for i in range(5, 9)], dim=2)
        fresh = net(inp[:, :, 5:9])
    assert (again - fresh).abs().max() < TOL


def test_superresolver_window_mode_equals_streaming(real_clip) -> None:
    inp, _ = real_clip
    net = _random_net(4, seed=3, input_size=128)
    frames = [(inp[0, :, i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in range(10)]
    stream = SuperResolver(net, SuperResolutionConfig(mode="stream"))
    window = SuperResolver(net, SuperResolutionConfig(mode="window"))
    outs_s = [stream(f, key="a") for f in frames]
    outs_w = [window(f, key="a") for f in frames]
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs_s, outs_w))
    assert len(window.window) == 4 and stream.frames_seen == 10
    # a new source key resets: frame 9 as the first of a stream equals frame 0 of a fresh resolver
    first = stream(frames[9], key="b")
    assert stream.frames_seen == 1
    assert np.array_equal(first, SuperResolver(net)(frames[9], key="c"))
    assert not np.array_equal(first, outs_s[9])
    with pytest.raises(ValueError):
        stream(frames[0][:64])


def test_ring_buffer_wraps_and_resets() -> None:
    ring = RingBuffer(3)
    with pytest.raises(ValueError):
        ring.ordered()
    for i in range(2):
        ring.push(torch.full((2,), float(i)))
    assert ring.ordered()[:, 0].tolist() == [0, 1] and not ring.full
    storage = ring.storage
    for i in range(2, 8):  # wraps around twice
        ring.push(torch.full((2,), float(i)))
        assert ring.ordered()[:, 0].tolist() == [i - 2, i - 1, i] and ring.latest()[0] == i
    assert ring.storage is storage  # no reallocation per frame
    with pytest.raises(ValueError):
        ring.push(torch.zeros(3))
    ring.reset()
    assert len(ring) == 0
    ring.push(torch.zeros(3))  # an empty ring takes a new shape
    assert ring.ordered().shape == (1, 3)
    ring.fill(torch.ones(3))
    assert ring.full and ring.ordered().sum() == 9
    state = StreamState([1, 3, 2])
    assert [c is None for c in state.caches] == [True, False, False]
    state.caches[1].push(torch.zeros(4))
    assert state.nbytes() == 2 * 4 * 4
    state.reset()
    assert len(state.caches[1]) == 0 and state.steps == 0
    with pytest.raises(ValueError):
        RingBuffer(0)


def test_inflation_reproduces_the_2d_network(real_clip) -> None:
    inp, _ = real_clip
    net2d = _random_net(1, seed=5)
    net3d = inflate(net2d, 6)
    assert [c.kt for c in net3d.convs] != [1] * len(net3d.convs)
    static = inp[:, :, :1].expand(-1, -1, 6, -1, -1)
    with torch.no_grad():
        assert (net3d(static) - net2d(static)).abs().max() < TOL
        assert (net3d(inp) - net2d(inp)).abs().max() < TOL  # current-frame tap only: any clip
        # once the past taps move, a moving clip differs but a static clip still does not
        for c in net3d.convs:
            if c.kt > 1:
                c.weight[:, :, :-1].normal_(0, 0.05)
                c.weight[:, :, -1:] -= c.weight[:, :, :-1].sum(2, keepdim=True)
        assert (net3d(static) - net2d(static)).abs().max() < 1e-4
        assert (net3d(inp) - net2d(inp)).abs().max() > 1e-3
    with pytest.raises(ValueError):
        inflate(net3d, 4)


def test_weights_roundtrip_and_errors(tmp_path: Path, real_clip) -> None:
    inp, _ = real_clip
    net = _random_net(4, seed=7)
    path = save_sr_weights(net, tmp_path / "sr.safetensors", {"note": "test"})
    loaded = load_sr_net(path)
    assert loaded.config == net.config
    with torch.no_grad():
        assert torch.equal(loaded(inp[:, :, :4]), net(inp[:, :, :4]))
    with pytest.raises(WeightsError):
        load_sr_net(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError):
        load_sr_net(tmp_path / "bad.safetensors")


def test_shipped_weights_load_offline_and_beat_bicubic(real_clip) -> None:
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped SR weights at {DEFAULT_WEIGHTS}")
    inp, gt = real_clip
    net = load_sr_net()
    assert net.frames > 1 and count_flops(net, size=128) < count_flops(net, "window", size=128) * 1.01
    with torch.no_grad():
        out = net(inp).clamp(0, 1)
    bicubic = torch.nn.functional.interpolate(inp[0].transpose(0, 1), scale_factor=2, mode="bicubic",
                                              align_corners=False).clamp(0, 1).transpose(0, 1)[None]
    assert ((out - gt) ** 2).mean() < ((bicubic - gt) ** 2).mean()


def test_one_training_step_on_real_val_frames_lowers_the_loss(real_clip) -> None:
    from avatar_engine.geometry.flow import optical_flow
    from avatar_engine.training.sr import SRTrainConfig, sr_losses, training_step

    inp, gt = real_clip[0][..., 32:96, 32:96], real_clip[1][..., 64:192, 64:192]
    cfg = SRTrainConfig(model=SRConfig(frames=4, channels=(8, 12, 16)), stage="3d", lr=1e-5)
    torch.manual_seed(0)
    net = SRNet(cfg.model)
    gt_u8 = np.ascontiguousarray((gt[0, :, 3:5].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8))
    flow = torch.from_numpy(optical_flow(gt_u8[1], gt_u8[0])).permute(2, 0, 1)[None]
    batch = {"inp": inp[:, :, :5], "gt": gt[:, :, :5], "flow": flow}
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    first = training_step(net, batch, opt, cfg)
    with torch.no_grad():
        after = sr_losses(net(batch["inp"], n_out=2), gt[:, :, 3:5], flow, cfg)
    assert set(first) == {"l1", "ssim", "temporal", "total"}
    assert float(after["total"]) < first["total"]
