"""Motion limits of the retargeting and the fold-free exterior of the mesh warp, on real landmarks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from avatar_engine.face.crop import CropConfig, crop_from_landmarks, face_extent
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.geometry.mesh_warp import MeshWarp, WarpConfig
from avatar_engine.geometry.retarget import MotionRetargeter, RetargetConfig, soft_limit
from media import read_frames


@pytest.fixture(scope="module")
def face(data_dir):
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        pts = det.detect(read_frames(data_dir / "clips/val/P092/C122.mp4", 1)[0])  # news footage, 1280x720
    assert pts is not None
    return pts


@pytest.fixture(scope="module")
def source(face):
    return crop_from_landmarks(face, CropConfig(size=256)).to_crop(face)


def _move(points, yaw=0.0, scale=1.0, dx=0.0):
    centre = points.mean(0)
    rot = Rotation.from_euler("y", yaw, degrees=True).as_matrix()
    return ((points - centre) @ rot.T * scale + centre + np.array([dx, 0, 0])).astype(np.float32)


def test_soft_limit():
    assert soft_limit(10.0, 25.0, 35.0) == 10.0
    values = [soft_limit(v, 25.0, 35.0) for v in np.linspace(0, 200, 401)]
    assert np.all(np.diff(values) >= 0) and max(values) < 35.0
    assert soft_limit(25.5, 25.0, 35.0) == pytest.approx(25.5, abs=0.02), "slope 1 at the knee"
    with pytest.raises(ValueError):
        RetargetConfig(soft_rotation_deg=40.0, max_rotation_deg=35.0)


def test_a_clamped_rotation_keeps_the_head_in_place(face, source):
    """The face sits far from the driver frame's origin: turning past the limit must not move the head."""
    retarget = MotionRetargeter(source)
    retarget.set_neutral(face)
    rigid = retarget.rigid
    for yaw in (-70.0, 70.0):
        target = retarget(_move(face, yaw=yaw))
        shift = np.linalg.norm(target[rigid, :2].mean(0) - source[rigid, :2].mean(0))
        assert shift < 0.1 * face_extent(source), f"yaw {yaw}: the head centre moved {shift:.1f} px"


def test_translation_and_scale_are_bounded(face, source):
    cfg = RetargetConfig()
    retarget = MotionRetargeter(source, cfg)
    retarget.set_neutral(face)
    extent = face_extent(source)
    centre = source[retarget.rigid, :2].mean(0)
    for dx in (-1000.0, -300.0, 300.0, 1000.0):  # up to ~5 face widths in the 1280 frame
        moved = retarget(_move(face, dx=dx))[retarget.rigid, :2].mean(0) - centre
        assert np.linalg.norm(moved) <= cfg.max_translation * extent + 0.01
    small = retarget(_move(face, dx=5.0))[retarget.rigid, 0].mean() - centre[0]
    assert small == pytest.approx(5.0 * retarget._to_source.scale, rel=0.02), "small moves pass unchanged"
    for s in (0.4, 2.5):
        target = retarget(_move(face, scale=s))
        ratio = np.ptp(target[:, 0]) / np.ptp(source[:, 0])
        assert abs(math.log(ratio)) < cfg.max_scale + 0.02


def test_face_is_kept_inside_the_crop(face, source):
    retarget = MotionRetargeter(source, RetargetConfig(max_translation=2.0, soft_translation=1.0), crop_size=256)
    retarget.set_neutral(face)
    target = retarget(_move(face, dx=600.0))
    assert target[:, :2].max() <= 256 - 0.04 * 256 + 1e-3


def test_exterior_bands_do_not_fold(source):
    """The face moved towards a corner of the crop (as far as the retargeting lets it: the face oval stays
    4 % inside the border): the background rings would cross the border."""
    for shift in ((40.0, 30.0), (-33.0, 25.0)):
        target = source.copy()
        target[:, :2] += np.array(shift)
        folds = {}
        for fold_free in (False, True):
            warp = MeshWarp(source, 256, WarpConfig(fold_free=fold_free))
            flipped = warp.flipped_triangles(torch.from_numpy(target)[None])[0, ~warp.is_face_triangle]
            folds[fold_free] = int(flipped.sum())
        assert folds[False] > 0 and folds[True] == 0, f"shift {shift}: {folds}"
    # motions that fold nothing are unchanged
    small = source.copy()
    small[:, 0] += 6.0
    grids = [MeshWarp(source, 256, WarpConfig(fold_free=f)).grid(small[None]) for f in (False, True)]
    assert torch.equal(grids[0], grids[1])
