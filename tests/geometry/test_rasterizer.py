"""Tests of avatar_engine.geometry.rasterizer against OpenCV, a dense reference, and on edge cases."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar_engine.face import topology as topo
from avatar_engine.geometry.rasterizer import ConnectivityRasterizer, RasterConfig, rasterize_connectivity

DATA = Path("/work/shared/data")
PHOTO = DATA / "images/val/P152/I036.png"  # a 256 x 256 val face crop


@pytest.fixture(scope="module")
def landmarks() -> np.ndarray:
    """(478, 2) float32 landmarks of a real val photo, in pixels of its 256 x 256 frame."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: no real face data to test on")
    import mediapipe as mp

    rgb = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    assert rgb.shape[:2] == (256, 256)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as mesh:
        result = mesh.process(rgb)
    assert result.multi_face_landmarks, "mediapipe found no face in the val photo"
    return np.array([[p.x * 256, p.y * 256] for p in result.multi_face_landmarks[0].landmark],
                    np.float32)


def _hwc(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) numpy."""
    return image[0].permute(1, 2, 0).numpy()


def _iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.25) -> float:
    lit_a, lit_b = a.max(axis=2) > threshold, b.max(axis=2) > threshold
    return float((lit_a & lit_b).sum() / (lit_a | lit_b).sum())


def _dense_reference(points: np.ndarray, height: int, width: int, line_width: float,
                     antialias: bool) -> np.ndarray:
    """The rasterizer's definition, computed densely (every edge x every pixel) in float64.

    Returns (H, W, 3): per pixel, the colour of the edge with the highest quantised coverage (ties
    to the later edge) times that coverage.
    """
    levels = 32767
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = points.astype(np.float32) - np.float32(0.5)  # corner origin -> pixel centres, as in float32
    p0 = points[topo.EDGES[:, 0]].astype(np.float64)[:, None, None, :]  # (E, 1, 1, 2)
    d = points[topo.EDGES[:, 1]].astype(np.float64)[:, None, None, :] - p0
    rx, ry = xs - p0[..., 0], ys - p0[..., 1]
    len2 = d[..., 0] ** 2 + d[..., 1] ** 2
    u = np.clip(np.where(len2 > 0, (rx * d[..., 0] + ry * d[..., 1]) / np.maximum(len2, 1e-12), 0),
                0, 1)
    dist = np.hypot(rx - u * d[..., 0], ry - u * d[..., 1])  # (E, H, W)
    if antialias:
        coverage = np.clip(line_width / 2 + 0.5 - dist, 0, 1)
    else:
        coverage = (dist <= max(line_width, 1.0) / 2).astype(np.float64)
    level = np.floor(coverage * levels + 0.5).astype(np.int64)
    key = np.where(level > 0, (level << 16) | np.arange(len(topo.EDGES))[:, None, None], 0)
    winner = key.argmax(axis=0)
    best_level = key.max(axis=0) >> 16
    return (best_level / levels)[..., None] * topo.EDGE_COLORS[winner]


def test_matches_opencv_line_aa_on_real_landmarks(landmarks):
    ref = topo.draw_edges_cv2(landmarks, 256)
    ours = _hwc(rasterize_connectivity(torch.from_numpy(landmarks)[None], 256))
    # Default 1 px lines: same strokes, ours a little thinner (OpenCV's LINE_AA spreads ~1.35 px
    # of ink across a 1 px line); measured: MAD 0.0019, IoU 0.81.
    assert np.abs(ours - ref).mean() < 0.003
    assert _iou(ours, ref) > 0.75
    # With the same amount of ink the two drawings agree closely; measured: MAD 0.00096, IoU 0.94.
    wide = _hwc(rasterize_connectivity(torch.from_numpy(landmarks)[None], 256,
                                       RasterConfig(line_width=1.35)))
    assert np.abs(wide - ref).mean() < 0.0015
    assert _iou(wide, ref) > 0.9
    # Sanity of the threshold: the drawing of a slightly different face is far from it.
    moved = landmarks + np.float32([3.0, 2.0])
    moved_img = _hwc(rasterize_connectivity(torch.from_numpy(moved)[None], 256))
    assert _iou(moved_img, ref) < 0.3


def test_edge_colors_at_midpoints_of_long_edges(landmarks):
    ours = _hwc(rasterize_connectivity(torch.from_numpy(landmarks)[None], 256))
    ref = topo.draw_edges_cv2(landmarks, 256)
    lengths = np.linalg.norm(landmarks[topo.EDGES[:, 1]] - landmarks[topo.EDGES[:, 0]], axis=1)
    checked_groups = set()
    for e in np.argsort(-lengths)[:12]:
        mid = landmarks[topo.EDGES[e]].mean(axis=0)
        x, y = np.floor(mid).astype(int)  # the pixel containing the midpoint
        color = topo.EDGE_COLORS[e]
        pixel = ours[y, x]
        coverage = pixel.max() / color.max()
        assert coverage > 0.25, f"edge {e}: midpoint pixel not lit"
        np.testing.assert_allclose(pixel, coverage * color, atol=1e-4, err_msg=f"edge {e}")
        # OpenCV draws the same colour there (up to anti-aliasing and 8-bit rounding).
        ref_pixel = ref[y, x]
        np.testing.assert_allclose(ref_pixel / ref_pixel.max(), color / color.max(), atol=0.05,
                                   err_msg=f"edge {e} (OpenCV)")
        checked_groups.add(next(g.name for g in topo.EDGE_GROUPS if g.index.start <= e < g.index.stop))
    assert len(checked_groups) >= 2


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("line_width", [1.0, 2.5])
def test_matches_dense_reference(antialias, line_width):
    """Random faces (including points far outside the image) on a small non-square canvas."""
    rng = np.random.default_rng(7)
    height, width = 40, 56
    points = rng.uniform(-15, 70, size=(topo.NUM_LANDMARKS, 2)).astype(np.float32)
    points[:5] = [[-1e4, 20], [1e4, 30], [25, 1e5], [10, -3e3], [28.5, 17.25]]
    points[topo.EDGES[3, 1]] = points[topo.EDGES[3, 0]]  # a degenerate (zero-length) edge
    config = RasterConfig(line_width=line_width, scale_with_size=False, antialias=antialias)
    ours = _hwc(rasterize_connectivity(torch.from_numpy(points)[None], (height, width), config))
    ref = _dense_reference(points, height, width, line_width, antialias)
    lit = ref.max(axis=2) > 0
    assert lit.mean() > 0.2
    diff = np.abs(ours - ref).max(axis=2)
    # Float32 vs float64 distances may flip an exact tie between edges on a handful of pixels.
    assert (diff > 1e-3).mean() < 0.01
    assert np.abs(ours - ref).mean() < 1e-4


def test_batch_equals_single_calls(landmarks):
    rng = np.random.default_rng(0)
    batch = np.stack([landmarks + rng.normal(0, 2.0, landmarks.shape).astype(np.float32)
                      for _ in range(3)])
    raster = ConnectivityRasterizer(256)
    together = raster(torch.from_numpy(batch))
    assert together.shape == (3, 3, 256, 256)
    for i in range(3):
        single = raster(torch.from_numpy(batch[i : i + 1]))
        assert torch.equal(together[i : i + 1], single)
    assert not torch.equal(together[0], together[1])


def test_deterministic_and_module_equals_function(landmarks):
    pts = torch.from_numpy(landmarks)[None].repeat(2, 1, 1)
    first = rasterize_connectivity(pts, 256)
    assert torch.equal(first, rasterize_connectivity(pts, 256))
    assert torch.equal(first, ConnectivityRasterizer(256)(pts))


def test_points_partly_outside_the_image(landmarks):
    """Drawing at 256 with the face shifted half out == the same window of a larger canvas."""
    pts = np.round(landmarks * 16) / 16  # on a 1/16 px grid so that shifting is exact
    shifted = pts - np.float32([128.0, 64.0])  # left half and top quarter of the face outside
    config = RasterConfig(scale_with_size=False)
    small = rasterize_connectivity(torch.from_numpy(shifted)[None], 256, config)
    big = rasterize_connectivity(torch.from_numpy(pts)[None], (384, 512), config)
    window = big[:, :, 64 : 64 + 256, 128 : 128 + 256]
    assert torch.allclose(small, window, atol=1e-6)
    assert small.sum() > 0.3 * big.sum()
    # Landmarks thrown far away (and all of them far away) still give a valid image.
    far = shifted.copy()
    far[::7] = [1e7, -1e7]
    image = rasterize_connectivity(torch.from_numpy(far)[None], 256)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    gone = rasterize_connectivity(torch.full((1, 478, 2), -5000.0), 256)
    assert gone.abs().sum() == 0


def test_size_512(landmarks):
    pts512 = torch.from_numpy(landmarks * 2.0)[None]  # corner-origin coordinates scale exactly
    config = RasterConfig()
    assert config.width_for_size(512) == 2.0 and config.width_for_size((512, 700)) == 2.0
    image = ConnectivityRasterizer(512, config)(pts512)
    assert image.shape == (1, 3, 512, 512) and image.dtype == torch.float32
    # A 2 px line at 512 is a 1 px line at 256 seen at twice the resolution.
    pooled = _hwc(torch.nn.functional.avg_pool2d(image, 2))
    at256 = _hwc(rasterize_connectivity(torch.from_numpy(landmarks)[None], 256))
    assert np.abs(pooled - at256).mean() < 0.002
    assert _iou(pooled, at256) > 0.8
    fixed = rasterize_connectivity(pts512, 512, RasterConfig(scale_with_size=False))
    assert 0.35 < fixed.sum() / image.sum() < 0.65


def test_dtypes_shapes_and_errors(landmarks):
    pts = torch.from_numpy(landmarks)[None]
    expected = rasterize_connectivity(pts, 256)
    assert expected.dtype == torch.float32 and expected.shape == (1, 3, 256, 256)
    assert expected.min() >= 0 and expected.max() <= 1 and expected.is_contiguous()
    assert torch.allclose(rasterize_connectivity(pts.double(), 256), expected, atol=1e-5)
    with_z = torch.cat([pts, torch.randn(1, 478, 1)], dim=2)
    assert torch.equal(rasterize_connectivity(with_z, 256), expected)
    half = rasterize_connectivity(pts.half(), 256)
    assert half.dtype == torch.float32 and _iou(_hwc(half), _hwc(expected)) > 0.8
    assert rasterize_connectivity(pts[:0], 64).shape == (0, 3, 64, 64)
    rect = rasterize_connectivity(pts, (200, 300))
    assert rect.shape == (1, 3, 200, 300)
    binary = rasterize_connectivity(pts, 256, RasterConfig(antialias=False))
    lit = binary[0].amax(dim=0) > 0
    colors = torch.from_numpy(topo.EDGE_COLORS.copy())
    on = binary[0].permute(1, 2, 0)[lit]
    gap = (on[:, None, :] - colors[None, :, :]).abs().amax(dim=2).min(dim=1).values
    assert gap.max() < 1e-6, "binary lines: every lit pixel is exactly one edge colour"
    for bad in (pts[0], pts[..., :1], pts[:, :468], pts.long()):
        with pytest.raises(ValueError):
            rasterize_connectivity(bad, 256)
    nan = pts.clone()
    nan[0, 5, 0] = float("nan")
    with pytest.raises(ValueError):
        rasterize_connectivity(nan, 256)
    for bad_config in (dict(line_width=0.0), dict(line_width=float("nan")), dict(reference_size=0)):
        with pytest.raises(ValueError):
            RasterConfig(**bad_config)
    with pytest.raises(ValueError):
        ConnectivityRasterizer((0, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(landmarks):
    pts = torch.from_numpy(landmarks)[None].repeat(4, 1, 1) + torch.randn(4, 478, 2)
    cpu = rasterize_connectivity(pts, 256)
    gpu = ConnectivityRasterizer(256, device="cuda")(pts.cuda())
    assert gpu.device.type == "cuda"
    diff = (gpu.cpu() - cpu).abs().amax(dim=1)
    assert (diff > 1e-3).float().mean() < 1e-4 and diff.mean() < 1e-5
