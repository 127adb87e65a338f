"""Tests of the dense-landmark (mesh) warp on real face landmarks (mediapipe on val photos / clips)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar_engine.face import topology
from avatar_engine.geometry.mesh_warp import (MeshWarp, WarpConfig, flow_to_grid, grid_to_flow, grid_to_pixels, identity_grid,
                                pixels_to_grid, warp_image)

S = 256
PHOTO = "images/val/P152/I036.png"  # a 256 x 256 face crop, mouth closed
TURN_CLIP = "clips/val/P029/C054.mp4"  # 224 x 224, the head turns from one side to the other
TURN_FRAMES = (40, 105)  # yaw about -0.3 and +0.3 (nose offset / face width)


def _mediapipe_points(rgb: np.ndarray) -> np.ndarray:
    """``(478, 3) float32``: x, y in pixels, z = z * width."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        result = fm.process(rgb)
    assert result.multi_face_landmarks, "mediapipe found no face in the test image"
    lms = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in lms], dtype=np.float32)


@pytest.fixture(scope="module")
def face(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb = cv2.cvtColor(cv2.imread(str(data_dir / PHOTO)), cv2.COLOR_BGR2RGB)
    assert rgb.shape == (S, S, 3)
    return rgb, _mediapipe_points(rgb)


@pytest.fixture(scope="module")
def turn(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source frame, source points, target frame, target points), frames resized to S x S."""
    import av

    frames = {}
    with av.open(str(data_dir / TURN_CLIP)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in TURN_FRAMES:
                frames[i] = cv2.resize(frame.to_ndarray(format="rgb24"), (S, S), interpolation=cv2.INTER_AREA)
            if i >= max(TURN_FRAMES):
                break
    a, b = (frames[i] for i in TURN_FRAMES)
    return a, _mediapipe_points(a), b, _mediapipe_points(b)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: np.ndarray | None = None) -> float:
    err = ((a - b) ** 2).mean(dim=1)[0].numpy()
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-20)))


def _poly_mask(points: np.ndarray, size: int = S) -> np.ndarray:
    """Pixels whose centres lie inside a polygon given in crop px (centre of pixel j at j + 0.5)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round((points - 0.5) * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def _chains(loop: np.ndarray, a: int, b: int, upper_marker: int) -> tuple[list[int], list[int]]:
    """A closed lip loop split at its corners a, b into (upper, lower) chains, each from a to b."""
    loop = [int(v) for v in loop]
    i = loop.index(a)
    loop = loop[i:] + loop[:i]
    j = loop.index(b)
    first, second = loop[: j + 1], [a] + loop[:j:-1] + [b]
    return (first, second) if upper_marker in first else (second, first)


def _lip_chains() -> tuple[list[int], list[int]]:
    """Upper and lower inner-lip chains, each from corner 78 to corner 308."""
    return _chains(topology.INNER_LIPS_LOOP, 78, 308, 13)


def _similarity(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]):
    """Apply ``p -> c + A (p - c) + t`` to x, y (z scaled); returns (moved points, A, b) with p' = A p + b."""
    th = np.deg2rad(degrees)
    a = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    c = points[:, :2].mean(axis=0)
    b = c - a @ c + np.asarray(shift)
    moved = points.copy()
    moved[:, :2] = points[:, :2] @ a.T + b
    moved[:, 2] = points[:, 2] * scale
    return moved.astype(np.float32), a, b


def _mouth_open(points: np.ndarray, drop: float = 10.0) -> np.ndarray:
    """Move the lower lip and every landmark below the upper inner lip down by ``drop`` px."""
    upper, lower = _lip_chains()
    outer_upper, outer_lower = _chains(topology.OUTER_LIPS_LOOP, 61, 291, 0)
    moved = points.copy()
    lower_lip = np.concatenate([points[lower, :2], points[outer_lower[::-1], :2]]).astype(np.float32)
    inside = np.array([cv2.pointPolygonTest(lower_lip, (float(x), float(y)), False) > 0
                       for x, y in points[:, :2]])
    jaw = inside | (points[:, 1] > points[upper, 1].max() + 0.5)
    jaw[lower[1:-1] + outer_lower[1:-1]] = True
    jaw[upper + outer_upper] = False
    moved[jaw, 1] += drop
    return moved


def _inside_first_ring(mw: MeshWarp, target: torch.Tensor) -> np.ndarray:
    """Pixels inside the target polygon of the first exterior ring (eroded by one pixel)."""
    n_ring = mw.num_exterior - 4 * mw.config.border_points_per_side
    ring1 = mw.exterior_points(target)[0, : n_ring // len(mw.config.ring_scales)].numpy()
    return cv2.erode(_poly_mask(ring1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _grid_px_error(grid: torch.Tensor, expected_px: np.ndarray) -> np.ndarray:
    """``|grid - expected|`` in source pixels, ``(S, S)`` (max over x and y)."""
    return np.abs(grid_to_pixels(grid[0], S).numpy() - expected_px).max(axis=-1)


def _pixel_centres(size: int = S) -> np.ndarray:
    c = np.arange(size) + 0.5
    return np.stack(np.meshgrid(c, c, indexing="xy"), axis=-1)  # (S, S, 2) as (x, y)


# ----------------------------------------------------------------------------------------------- identity
def test_identity_target_returns_source(face):
    rgb, pts = face
    mw = MeshWarp(pts, S)
    grid = mw.grid(torch.from_numpy(pts)[None])
    assert grid.shape == (1, S, S, 2)
    err = (grid - identity_grid(S, S)).abs().max().item() * S / 2
    assert err < 1e-3, f"identity grid off by {err} px"
    assert (mw.triangle_map(torch.from_numpy(pts)[None]) >= 0).all()
    x = _tensor(rgb)
    assert _psnr(mw.warp(x, grid), x) > 45.0


def test_identity_at_512_and_without_z(face):
    _, pts = face
    pts512 = pts * 2
    mw = MeshWarp(pts512[:, :2], 512)
    grid = mw.grid(torch.from_numpy(pts512[:, :2])[None])
    assert grid.shape == (1, 512, 512, 2)
    assert (grid - identity_grid(512, 512)).abs().max().item() * 256 < 1e-3


# ------------------------------------------------------------------------------------------ affine motion
def test_global_similarity_is_reproduced(face):
    rgb, pts = face
    moved, a, b = _similarity(pts, degrees=4.0, scale=1.05, shift=(5.0, -3.0))
    mw = MeshWarp(pts, S)
    target = torch.from_numpy(moved)[None]
    grid = mw.grid(target)
    owner = mw.triangle_map(target)[0]
    face_px = mw.is_face_triangle[owner.clamp_min(0)].numpy() & (owner >= 0).numpy()
    assert face_px.sum() > 15000
    expected = (_pixel_centres() - b) @ np.linalg.inv(a).T  # inverse map target -> source
    err = _grid_px_error(grid, expected)
    assert err[face_px].max() < 5e-3, f"face region off by {err[face_px].max()} px"
    # The first exterior ring follows the fitted head motion fully, so everything inside it is exact too.
    inside = _inside_first_ring(mw, target)
    assert inside.sum() > face_px.sum() + 5000
    assert err[inside].max() < 5e-3

    # Warping the real photo matches OpenCV's warpAffine of it (cv2 puts pixel centres on integers).
    m_cv = np.concatenate([a, (a @ [0.5, 0.5] + b - 0.5)[:, None]], axis=1)
    ref = cv2.warpAffine(rgb.astype(np.float32) / 255.0, m_cv, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    ours = mw.warp(_tensor(rgb), grid)
    assert _psnr(ours, torch.from_numpy(ref).permute(2, 0, 1)[None], face_px) > 40.0


# ------------------------------------------------------------------------------------------ mouth opening
def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of each point ``(N, 2)`` to a polyline ``(M, 2)``."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def test_mouth_opening_fills_the_gap_from_the_lip_line(face):
    rgb, pts = face
    upper, lower = _lip_chains()
    assert np.abs(pts[13, :2] - pts[14, :2]).max() < 2.0, "test photo should have a closed mouth"
    target = _mouth_open(pts, 10.0)
    mw = MeshWarp(pts, S)
    t = torch.from_numpy(target)[None]
    grid = mw.grid(t)
    assert torch.isfinite(grid).all()
    assert (mw.triangle_map(t) >= 0).all()

    gap_poly = np.concatenate([target[upper, :2], target[lower[::-1], :2]])
    gap = cv2.erode(_poly_mask(gap_poly).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert gap.sum() > 250, "the opened mouth should leave a sizeable gap"
    sampled = grid_to_pixels(grid[0], S).numpy()[gap]
    dist = _polyline_distance(sampled, pts[upper, :2])
    assert dist.max() < 1.0, f"gap pixels sample up to {dist.max():.2f} px away from the lip line"
    # ... while the same pixels sample lip / chin texture far from the lip line when nothing moves
    ident = grid_to_pixels(mw.grid(torch.from_numpy(pts)[None])[0], S).numpy()[gap]
    assert _polyline_distance(ident, pts[upper, :2]).max() > 5.0

    # The forehead stays put.
    fx, fy = pts[151, :2]
    forehead = np.zeros((S, S), bool)
    forehead[int(fy) - 6: int(fy) + 6, int(fx) - 15: int(fx) + 15] = True
    err = _grid_px_error(grid, _pixel_centres())
    assert err[forehead].max() < 1e-3
    out = mw.warp(_tensor(rgb), grid)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ exterior
def test_exterior_falloff_under_a_head_shift(face):
    _, pts = face
    shift = np.array([12.0, 6.0], np.float32)
    moved = pts.copy()
    moved[:, :2] += shift
    cfg = WarpConfig()
    mw = MeshWarp(pts, S, cfg)
    t = torch.from_numpy(moved)[None]

    ext_src = mw.source_vertices[-mw.num_exterior:].numpy()
    ext = mw.exterior_points(t)[0].numpy()
    n_border = 4 * cfg.border_points_per_side
    disp = ext - ext_src
    assert np.abs(disp[-n_border:]).max() == 0.0  # crop border points are fixed
    rings = disp[:-n_border].reshape(len(cfg.ring_scales), -1, 2)
    for ring, weight in zip(rings, cfg.ring_weights):
        np.testing.assert_allclose(ring, np.broadcast_to(weight * shift, ring.shape), atol=1e-3)

    flow = grid_to_flow(mw.grid(t))[0].permute(1, 2, 0).numpy()  # source = pixel + flow
    frame = np.ones((S, S), bool)
    frame[1:-1, 1:-1] = False
    assert np.linalg.norm(flow[frame], axis=-1).max() < 0.1 * np.linalg.norm(shift)
    band = _inside_first_ring(mw, t) & ~_poly_mask(moved[topology.FACE_OVAL_LOOP, :2])
    assert band.sum() > 1000  # hair, ears and neck just outside the face oval
    np.testing.assert_allclose(flow[band], np.broadcast_to(-shift, flow[band].shape), atol=1e-2)


# ------------------------------------------------------------------------------------------ folds / turns
def _covering(verts: np.ndarray, tris: np.ndarray, px: np.ndarray) -> np.ndarray:
    """``(P, T)`` bool: pixel centre strictly inside the (non-degenerate) triangle."""
    t0, t1, t2 = (verts[tris[:, k]] for k in range(3))
    e1, e2 = t1 - t0, t2 - t0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    q = px[:, None, :] - t0[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = (q[..., 0] * e2[:, 1] - q[..., 1] * e2[:, 0]) / det
        l2 = (e1[:, 0] * q[..., 1] - e1[:, 1] * q[..., 0]) / det
    eps = 1e-4
    return (np.abs(det) > 1e-3) & (l1 > eps) & (l2 > eps) & (1 - l1 - l2 > eps)


@pytest.mark.parametrize("with_z", [True, False])
def test_folds_are_resolved_by_layer_and_depth(turn, with_z):
    _, src_pts, _, tgt_pts = turn
    cols = 3 if with_z else 2
    mw = MeshWarp(src_pts, S)
    target = torch.from_numpy(tgt_pts[:, :cols])[None]
    owner = mw.triangle_map(target)[0].numpy()
    assert (owner >= 0).all()
    verts = mw.target_vertices(target)[0].double().numpy()
    tris = mw.triangles.numpy()
    surface_set = {tuple(t) for t in np.sort(topology.TRIANGLES, axis=1).tolist()}
    is_surface = np.array([tuple(t) in surface_set for t in np.sort(tris, axis=1).tolist()])
    is_face = mw.is_face_triangle.numpy()
    depth = (tgt_pts if with_z else src_pts)[:, 2]
    zmean = np.where(is_surface, depth[np.minimum(tris, len(depth) - 1)].mean(axis=1), np.inf)

    ys, xs = np.mgrid[0:S:2, 0:S:2]
    px = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=-1)
    cover = _covering(verts, tris, px)
    own = owner[ys.ravel(), xs.ravel()]
    has = cover.any(axis=1)
    assert cover[np.arange(len(px))[has], own[has]].all(), "a pixel's owner does not cover it"
    face_cov = (cover & is_face).any(axis=1)
    assert is_face[own[face_cov]].all(), "an exterior triangle won over a face triangle"
    surf_cov = cover & is_surface
    folded = surf_cov.sum(axis=1) > 1
    assert folded.sum() > 20, "the head turn should fold the face surface"
    nearest = np.where(surf_cov, zmean, np.inf).argmin(axis=1)
    hit = surf_cov.any(axis=1)
    assert (own[hit] == nearest[hit]).all(), "a farther surface triangle won a fold"


def test_head_turn_moves_the_source_towards_the_target(turn):
    src_rgb, src_pts, tgt_rgb, tgt_pts = turn
    mw = MeshWarp(src_pts, S)
    out = mw(_tensor(src_rgb), torch.from_numpy(tgt_pts)[None])
    assert torch.isfinite(out).all()
    face_mask = _poly_mask(tgt_pts[topology.FACE_OVAL_LOOP, :2])
    target = _tensor(tgt_rgb)
    before = (_tensor(src_rgb) - target).abs().mean(dim=1)[0].numpy()[face_mask].mean()
    after = (out - target).abs().mean(dim=1)[0].numpy()[face_mask].mean()
    assert after < 0.75 * before, f"warp did not get closer to the target: {before:.4f} -> {after:.4f}"


# ------------------------------------------------------------------------------------- batch / robustness
def test_batch_matches_single_items(face):
    _, pts = face
    targets = [pts, _similarity(pts, -6.0, 0.95, (-4.0, 7.0))[0], _mouth_open(pts, 8.0)]
    mw = MeshWarp(pts, S)
    batch = mw.grid(torch.from_numpy(np.stack(targets)))
    assert batch.shape == (3, S, S, 2)
    owners = mw.triangle_map(torch.from_numpy(np.stack(targets)))
    for i, t in enumerate(targets):
        single = torch.from_numpy(t)[None]
        assert torch.equal(owners[i], mw.triangle_map(single)[0])
        assert torch.allclose(batch[i], mw.grid(single)[0], atol=1e-6, rtol=0)  # batched matmul rounding
    image = _tensor(face[0]).expand(3, -1, -1, -1)
    warped = warp_image(image, batch)
    assert torch.equal(warped[1:2], warp_image(image[:1], batch[1:2]))


def test_degenerate_targets_give_finite_output(face):
    rgb, pts = face
    mw = MeshWarp(pts, S)
    collapsed = np.broadcast_to(np.array([128.0, 128.0, 0.0], np.float32), pts.shape)
    mirrored = pts.copy()
    mirrored[:, 0] = S - mirrored[:, 0]
    far = pts.copy()
    far[::2, :2] += 1e5
    rng = np.random.default_rng(0)
    jitter = pts + rng.normal(0, 25, pts.shape).astype(np.float32)
    nan = pts.copy()
    nan[100:200] = np.nan
    nan[300, 0] = np.inf
    rotated = _similarity(pts, 180.0, 1.0, (0.0, 0.0))[0]
    targets = np.stack([collapsed, mirrored, far, jitter, nan, rotated]).astype(np.float32)
    grid = mw.grid(torch.from_numpy(targets))
    assert torch.isfinite(grid).all()
    lim = pixels_to_grid(mw.source_vertices, S).abs().max().item()
    assert grid.abs().max().item() <= lim + 1e-4  # inside the source triangles' boxes
    out = mw.warp(_tensor(rgb).expand(len(targets), -1, -1, -1), grid)
    assert torch.isfinite(out).all()
    # NaN points fall back to their source positions: only the NaN part differs from identity.
    assert (mw.triangle_map(torch.from_numpy(targets[4:5])) >= 0).all()


def test_degenerate_source_gives_finite_output(face):
    _, pts = face
    collapsed = np.full_like(pts, 100.0)
    mw = MeshWarp(collapsed, S)
    grid = mw.grid(torch.from_numpy(pts)[None])
    assert torch.isfinite(grid).all()
    closed = pts.copy()
    closed[:, 1] = 120.0  # every point on one line
    assert torch.isfinite(MeshWarp(closed, S).grid(torch.from_numpy(pts)[None])).all()


# ---------------------------------------------------------------------------------------- helpers / config
def test_flow_helpers_roundtrip_and_units(face):
    rgb, pts = face
    moved, _, _ = _similarity(pts, 3.0, 1.02, (2.0, 1.0))
    grid = MeshWarp(pts, S).grid(torch.from_numpy(moved)[None])
    assert torch.allclose(flow_to_grid(grid_to_flow(grid)), grid, atol=1e-6)
    # A flow of (+3, -2) px samples 3 px to the right and 2 px up: an integer image shift.
    flow = torch.zeros(1, 2, S, S)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out = warp_image(_tensor(rgb), flow_to_grid(flow))
    x = _tensor(rgb)
    assert torch.allclose(out[..., 2:, :-3], x[..., :-2, 3:], atol=1e-5)
    assert grid_to_flow(identity_grid(S, S)).abs().max() < 1e-5


def test_low_resolution_flow_stays_close(face):
    rgb, pts = face
    target = torch.from_numpy(_similarity(_mouth_open(pts, 8.0), 5.0, 1.03, (3.0, -2.0))[0])[None]
    full = MeshWarp(pts, S).grid(target)
    low = MeshWarp(pts, S, WarpConfig(flow_size=S // 2)).grid(target)
    assert low.shape == full.shape
    err = (low - full).abs() * S / 2
    assert err.mean() < 0.05 and torch.quantile(err.flatten(), 0.99) < 1.0
    x = _tensor(rgb)
    assert _psnr(warp_image(x, low), warp_image(x, full)) > 38.0


@pytest.mark.parametrize("kwargs", [dict(ring_scales=(0.9,), ring_weights=(1.0,), ring_local_weights=(0.0,)),
                                    dict(ring_weights=(1.0,)), dict(ring_weights=(1.5, 0.5)),
                                    dict(head_motion="projective"), dict(flow_size=1), dict(iris_scale=0.0),
                                    dict(ring_scales=(1.7, 1.25))])
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        WarpConfig(**kwargs)


def test_bad_point_shapes_are_rejected(face):
    _, pts = face
    with pytest.raises(ValueError):
        MeshWarp(pts[:468], S)
    with pytest.raises(ValueError):
        MeshWarp(pts, S).grid(torch.from_numpy(pts))  # missing batch dimension


def test_head_motion_fit(face):
    _, pts = face
    a = np.array([[1.03, 0.04], [-0.02, 0.98]])
    sheared = pts.copy()
    sheared[:, :2] = pts[:, :2] @ a.T + [3.0, -1.0]
    m, t = MeshWarp(pts, S, WarpConfig(head_motion="affine")).head_motion(torch.from_numpy(sheared)[None])
    assert m.shape == (1, 2, 2) and t.shape == (1, 2)
    np.testing.assert_allclose(m[0].numpy(), a, atol=1e-4)
    np.testing.assert_allclose(t[0].numpy(), [3.0, -1.0], atol=1e-2)
    rotated, a, b = _similarity(pts, 7.0, 1.1, (4.0, 2.0))
    m, t = MeshWarp(pts, S, WarpConfig(head_motion="similarity")).head_motion(torch.from_numpy(rotated)[None])
    np.testing.assert_allclose(m[0].numpy(), a, atol=1e-4)
    np.testing.assert_allclose(t[0].numpy(), b, atol=1e-2)
