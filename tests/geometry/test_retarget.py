"""Motion retargeting on real landmarks from val clips."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar_engine.face import topology
from avatar_engine.face.crop import CropConfig, crop_from_landmarks
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.geometry.retarget import MotionRetargeter, RetargetConfig, Similarity, fit_similarity


def _clip_landmarks(path, n: int, step: int = 1) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    with LandmarkDetector(LandmarkConfig(smoothing=False), static=False) as det:
        i = 0
        while len(out) < n:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % step == 0:
                pts = det.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i / 25.0)
                if pts is not None:
                    out.append(pts)
            i += 1
    cap.release()
    assert len(out) == n, f"expected {n} frames with a face in {path}"
    return out


@pytest.fixture(scope="module")
def driver(data_dir):
    """Landmarks of 40 frames of a talking val clip (every 2nd frame)."""
    return _clip_landmarks(data_dir / "clips/val/P004/C018.mp4", 40, step=2)


@pytest.fixture(scope="module")
def other_face(data_dir):
    return _clip_landmarks(data_dir / "clips/val/P048/C077.mp4", 1)[0]


def test_fit_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3)) * 50
    truth = Similarity(1.7, Rotation.from_euler("xyz", [10, -20, 5], degrees=True).as_matrix(), np.array([3.0, -4.0, 5.0]))
    fit = fit_similarity(pts, truth.apply(pts))
    assert fit.scale == pytest.approx(1.7, rel=1e-5)
    np.testing.assert_allclose(fit.rotation, truth.rotation, atol=1e-5)
    np.testing.assert_allclose(fit.compose(fit.inverse()).apply(pts), pts, atol=1e-3)


def test_self_reenactment_reproduces_driver_geometry(driver):
    """Source = crop of the neutral frame: target == driver landmarks in crop coordinates."""
    neutral = driver[0]
    crop = crop_from_landmarks(neutral, CropConfig(size=256))
    retarget = MotionRetargeter(crop.to_crop(neutral), RetargetConfig(lid_gain=1.0, brow_gain=1.0))
    retarget.set_neutral(neutral)
    errors = [np.abs(retarget(d)[:, :2] - crop.to_crop(d)[:, :2]).max() for d in driver]
    assert max(errors) < 0.05, f"max deviation {max(errors):.4f} px"
    # the default lid and brow gains move the lids and brows only, the lids further than the driver's
    from avatar_engine.geometry.eyes import EYES

    lids = sorted({i for opening, _, _ in EYES for chain in opening.chains() for i in chain[1:-1]})
    brows = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX])
    rest = np.setdiff1d(np.arange(driver[0].shape[0]), np.concatenate([lids, brows]))
    gained = MotionRetargeter(crop.to_crop(neutral))
    gained.set_neutral(neutral)

    def gap(p):  # right eye: upper and lower lid middles
        return p[145, 1] - p[159, 1]

    moved = []
    for d in driver:
        out, want = gained(d), crop.to_crop(d)
        assert np.abs(out[rest, :2] - want[rest, :2]).max() < 0.05
        moved.append((abs(gap(want) - gap(crop.to_crop(neutral))), abs(gap(out) - gap(crop.to_crop(neutral)))))
    drv, out = max(moved)
    assert drv > 0.3 and out > 1.2 * drv


def test_neutral_driver_keeps_source_shape(driver, other_face):
    """Cross-identity: a driver at its neutral gives exactly the source's own landmarks (no identity leak)."""
    crop = crop_from_landmarks(other_face, CropConfig(size=256))
    source = crop.to_crop(other_face)
    retarget = MotionRetargeter(source)
    retarget.set_neutral(driver[0])
    np.testing.assert_allclose(retarget(driver[0]), source, atol=1e-2)


def test_expression_change_transfers_scaled_to_source(driver, other_face):
    """Mouth opening of the driver shows up in the target, scaled by the face-size ratio."""
    crop = crop_from_landmarks(other_face, CropConfig(size=256))
    source = crop.to_crop(other_face)
    retarget = MotionRetargeter(source, RetargetConfig(pose=False, translation=False))
    retarget.set_neutral(driver[0])

    def mouth_gap(p):
        return np.linalg.norm(p[14, :2] - p[13, :2])

    def eye_dist(p):
        return np.linalg.norm(p[263, :2] - p[33, :2])

    widest = max(driver, key=lambda d: mouth_gap(d) - mouth_gap(driver[0]))
    driver_open = (mouth_gap(widest) - mouth_gap(driver[0])) / eye_dist(driver[0])
    assert driver_open > 0.05, "the test clip must open its mouth"
    target = retarget(widest)
    target_open = (mouth_gap(target) - mouth_gap(source)) / eye_dist(source)
    assert target_open == pytest.approx(driver_open, rel=0.3)
    # the rest of the face keeps the source's shape: the outer eye corners barely move
    assert np.abs(target[[33, 263], :2] - source[[33, 263], :2]).max() < 0.05 * eye_dist(source)


def test_head_rotation_is_transferred_and_clamped(other_face):
    crop = crop_from_landmarks(other_face, CropConfig(size=256))
    source = crop.to_crop(other_face)
    neutral = other_face
    centre = neutral.mean(0)

    def turned(deg: float) -> np.ndarray:
        rot = Rotation.from_euler("y", deg, degrees=True).as_matrix()
        return ((neutral - centre) @ rot.T + centre).astype(np.float32)

    retarget = MotionRetargeter(source, RetargetConfig(max_rotation_deg=30))
    retarget.set_neutral(neutral)
    for deg, expect in ((15, 15), (60, 30)):
        target = retarget(turned(deg))
        angle = np.degrees(np.arccos(np.clip((np.trace(fit_similarity(source, target).rotation) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(expect, abs=1.0)


def test_recalibration_takes_a_new_neutral(driver):
    crop = crop_from_landmarks(driver[0], CropConfig(size=256))
    source = crop.to_crop(driver[0])
    # (lip_zero=False: frame 0's lips are apart, and lip_zero would close them at frame 10's closed lips)
    retarget = MotionRetargeter(source, RetargetConfig(lip_zero=False))
    retarget(driver[10])  # first call becomes the neutral
    np.testing.assert_allclose(retarget(driver[10]), source, atol=1e-2)
    retarget.clear_neutral()
    assert not retarget.has_neutral
    retarget(driver[20])
    np.testing.assert_allclose(retarget.neutral, driver[20])
    assert topology.NUM_LANDMARKS == 478


def test_brow_gain_scales_the_brows_expression_only(driver):
    neutral = driver[0]
    crop = crop_from_landmarks(neutral, CropConfig(size=256))
    source = crop.to_crop(neutral)
    brows = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX])
    rest = np.setdiff1d(np.arange(source.shape[0]), brows)
    out = {}
    for gain in (1.0, 2.0):
        r = MotionRetargeter(source, RetargetConfig(pose=False, translation=False, crop_margin=None, brow_gain=gain,
                                                    brow_limit=None))
        r.set_neutral(neutral)
        out[gain] = np.stack([r(d) for d in driver])
    moved = out[1.0][:, brows, :2] - source[brows, :2]
    assert np.abs(moved).max() > 0.3  # the clip moves its brows
    np.testing.assert_allclose(out[2.0][:, brows, :2] - source[brows, :2], 2.0 * moved, atol=1e-3)
    np.testing.assert_allclose(out[2.0][:, rest], out[1.0][:, rest], atol=1e-4)


def test_brow_limit_eases_big_brow_raises_only(driver):
    """A brow raised far (0.3 IOD) is eased into the limit (inter-ocular distances of the neutral); the
    clip's own brow motion, under the knee, passes unchanged; nothing else moves."""
    neutral = driver[0]
    crop = crop_from_landmarks(neutral, CropConfig(size=256))
    source = crop.to_crop(neutral)
    iod = float(np.linalg.norm(neutral[263, :2] - neutral[33, :2]))
    knee, limit = 0.05, 0.08
    cfg = dict(pose=False, translation=False, crop_margin=None, brow_gain=1.0, lid_gain=1.0)
    free = MotionRetargeter(source, RetargetConfig(**cfg, brow_limit=None))
    held = MotionRetargeter(source, RetargetConfig(**cfg, brow_limit=(knee, limit)))
    for r in (free, held):
        r.set_neutral(neutral)
    raised = neutral.copy()
    raised[topology.LEFT_BROW_IDX, 1] -= 0.3 * iod
    scale = float(np.linalg.norm(source[263, :2] - source[33, :2])) / iod  # crop px per driver px
    for side in (topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX):
        lift = np.linalg.norm((held(raised)[side, :2] - source[side, :2]).mean(0)) / (iod * scale)
        assert lift < limit + 1e-4
    left = np.linalg.norm((held(raised)[topology.LEFT_BROW_IDX, :2] - source[topology.LEFT_BROW_IDX, :2]).mean(0))
    assert left / (iod * scale) > knee  # eased, not cut to the knee
    brows = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX])
    rest = np.setdiff1d(np.arange(source.shape[0]), brows)
    np.testing.assert_allclose(held(raised)[rest], free(raised)[rest], atol=1e-4)
    for d in driver:  # a talking clip's brows (under the knee here) are left alone
        small = np.linalg.norm((free(d)[brows, :2] - source[brows, :2]).reshape(2, -1, 2).mean(1), axis=1).max()
        if small / (iod * scale) < knee:
            np.testing.assert_allclose(held(d), free(d), atol=1e-4)
