"""The per-frame graphs: eager equal to the model they wrap, and every installed backend equal to eager
on real val frames.

Tolerance (uint8 output images, 0..255): at most 2 levels anywhere and 0.05 levels on average. The
ONNX backends run float32 (different kernels and summation order, ~1e-5 in [0, 1]); one level of
rounding can flip, a second covers the few pixels that sit on a sharp edge of the connectivity lines.
What ``auto`` picks in bf16 (OpenVINO, CPUs with AVX512-BF16/AMX) is held to the same 2 levels
anywhere and 0.25 on average (bf16 rounding moves many pixels by one level).
``compile`` is covered by ``benchmarks/bench_backends.py`` (its first compile of these graphs takes
minutes on a loaded 2-core CPU), ``tensorrt`` needs CUDA.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_engine.backends import BackendOptions, available_backends
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.face.source import SourceConfig, SourceFace, prepare_source
from avatar_engine.geometry.rasterizer import ConnectivityRasterizer, RasterConfig
from avatar_engine.io.video import iter_frames
from avatar_engine.models.frame_graph import DetailTransfer, NeuralFrameGraph, SRStepGraph
from avatar_engine.models.sr_net import SRConfig, SRNet
from avatar_engine.pipeline.super_resolution import SuperResolver
from avatar_engine.renderers.neural import NeuralRenderer

CLIP = "clips/val/P004/C018.mp4"
ONNX_BACKENDS = [b for b in ("onnxruntime", "openvino") if not available_backends("cpu")[b]]
MAX_LEVELS, MEAN_LEVELS = 2, 0.05
BF16_MEAN_LEVELS = 0.25  # bf16 rounds everywhere: the same largest difference, more pixels one level off


@pytest.fixture(scope="module")
def clip(data_dir) -> tuple[SourceFace, list[np.ndarray], list[np.ndarray]]:
    """A real source (first frame of a val clip), target landmarks of 6 later frames in its crop, and
    those frames' 256 crops (the SR input)."""
    frames = [f for f, _ in iter_frames(data_dir / CLIP, max_frames=25)]
    source = prepare_source(frames[0], SourceConfig(size=256))
    later = frames[4::4]
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        targets = [source.crop.to_crop(det.detect(f, k / 25)).astype(np.float32) for k, f in enumerate(later)]
    crops = [prepare_source(f, SourceConfig(size=256)).crop_image for f in later[:3]]
    return source, targets, crops


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> BackendOptions:
    """One export per graph for the whole module, in a temporary cache."""
    return BackendOptions(cache_dir=tmp_path_factory.mktemp("graphs"), threads=1)


def _assert_close_images(got: np.ndarray, expected: np.ndarray, mean_levels: float = MEAN_LEVELS) -> None:
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert got.shape == expected.shape and diff.max() <= MAX_LEVELS and diff.mean() <= mean_levels, \
        (diff.max(), diff.mean())


def test_fixed_shape_rasterizer_draws_the_same_image(clip):
    _, targets, _ = clip
    points = torch.from_numpy(np.stack(targets)) * 0.25
    for size, width in ((64, 1.0), (97, 2.5)):
        cfg = RasterConfig(line_width=width, scale_with_size=False)
        sparse, fixed = (ConnectivityRasterizer(size, cfg, fixed_shape=f)(points) for f in (False, True))
        torch.testing.assert_close(fixed, sparse, rtol=0, atol=0)


def test_neural_graph_is_the_model(clip):
    source, targets, _ = clip
    renderer = NeuralRenderer()
    renderer.render(source, targets[0])
    graph = NeuralFrameGraph(renderer.model).eval()
    pts = torch.from_numpy(targets[1])[None]
    with torch.inference_mode():
        grid = renderer._mesh.grid(pts)
        expected = ((renderer.model(renderer._cache, pts, grid).image + 1) * 0.5).clamp(0, 1)
        got = graph(*graph.example_inputs(renderer._cache, pts, grid))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_neural_graph_with_detail_is_the_model_then_the_detail_transfer(clip):
    source, targets, _ = clip
    renderer = NeuralRenderer()
    renderer.render(source, targets[0])
    detail = DetailTransfer()
    graph = NeuralFrameGraph(renderer.model, detail).eval()
    pts = torch.from_numpy(targets[1])[None]
    with torch.inference_mode():
        grid = renderer._mesh.grid(pts)
        out = renderer.model(renderer._cache, pts, grid)
        expected = ((detail(out.image, out.warped) + 1) * 0.5).clamp(0, 1)
        got = graph(*graph.example_inputs(renderer._cache, pts, grid))
        plain = NeuralFrameGraph(renderer.model).eval()(*graph.example_inputs(renderer._cache, pts, grid))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - plain).abs().max() > 0.01  # the shipped renderer's output is not the network's as it is
    assert renderer.detail is not None and NeuralRenderer(detail=False).detail is None


def _high(x: torch.Tensor, detail: DetailTransfer) -> torch.Tensor:
    return x - detail.blur(x)


def test_detail_transfer_takes_the_warps_detail_where_the_two_agree():
    """A refined image that is the warped one blurred and a little brighter gets the warped image's
    fine detail back and keeps its own brightness; where it painted something else (a flat patch) it
    stays as it is."""
    g = torch.Generator().manual_seed(0)
    detail = DetailTransfer(sigma=1.0, tau=0.05)
    smooth = DetailTransfer(sigma=4.0).blur(torch.rand(1, 3, 48, 48, generator=g) * 2 - 1)  # shading
    warped = smooth + 0.05 * (torch.rand(1, 3, 48, 48, generator=g) * 2 - 1)  # + fine texture
    refined = detail.blur(warped) + 0.005
    refined[..., 30:, 30:] = 0.8  # the network filled this part in
    out = detail(refined, warped)
    inside, painted = (slice(None), slice(None), slice(4, 24), slice(4, 24)), (slice(None), slice(None), slice(34, 44), slice(34, 44))
    hf_in, hf_warp, hf_ref = (_high(t, detail)[inside] for t in (out, warped, refined))
    assert (hf_in - hf_warp).abs().mean() < 0.2 * (hf_ref - hf_warp).abs().mean()
    assert (detail.blur(out) - detail.blur(refined))[inside].abs().mean() < 0.01  # coarse content kept
    torch.testing.assert_close(out[painted], refined[painted], rtol=0, atol=1e-3)
    torch.testing.assert_close(DetailTransfer(sigma=0)(refined, warped), refined)


def test_sr_step_graph_is_the_streaming_network():
    torch.manual_seed(0)
    net = SRNet(SRConfig(frames=4, channels=(4, 8), body_convs=2, input_size=32)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    graph = SRStepGraph(net).eval()
    frames = torch.rand(7, 1, 3, 32, 32)
    state = net.new_state()
    past = graph.zero_state(frames[0])
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            if i == 4:  # a new stream: the graph is told by `fresh`, the network by a reset
                state.reset()
            expected = net.step(frame, state)
            fresh = torch.tensor([i in (0, 4)])
            got, *past = graph(frame, fresh, *past)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_neural_renderer_backend_matches_eager(clip, options, backend):
    source, targets, _ = clip
    eager = NeuralRenderer()
    other = NeuralRenderer(backend=backend, backend_options=options)
    for target in targets:
        _assert_close_images(other.render(source, target), eager.render(source, target))
    assert other.backend_choice.used == backend


@pytest.mark.slow
@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_sr_backend_matches_eager_over_a_stream(clip, options, backend):
    _, _, crops = clip
    eager, other = SuperResolver(), SuperResolver(backend=backend, backend_options=options)
    assert other.backend_choice.used == backend
    for key in ("a", "b"):  # a second stream: both restart their past
        for crop in crops:
            _assert_close_images(other(crop, key), eager(crop, key))
    assert other.frames_seen == eager.frames_seen == len(crops)


@pytest.mark.slow
def test_auto_matches_eager_on_both_graphs(clip, options):
    """Whatever ``auto`` picks here (backend and precision: bf16 only when its example is close
    enough), its output stays within the tolerance on real frames and streams."""
    source, targets, crops = clip
    eager, auto = NeuralRenderer(), NeuralRenderer(backend="auto", backend_options=options)
    for target in targets:
        got = auto.render(source, target)
        _assert_close_images(got, eager.render(source, target), _mean_levels(auto.backend_choice.precision))
    eager_sr, auto_sr = SuperResolver(), SuperResolver(backend="auto", backend_options=options)
    for crop in crops:
        got = auto_sr(crop, "a")
        _assert_close_images(got, eager_sr(crop, "a"), _mean_levels(auto_sr.backend_choice.precision))


def _mean_levels(precision: str) -> float:
    return BF16_MEAN_LEVELS if precision == "bf16" else MEAN_LEVELS
