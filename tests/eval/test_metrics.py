"""Evaluation metrics and identity embeddings on cases with known answers (real val clips)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from avatar_engine.eval import metrics
from avatar_engine.face.identity import SAME_PERSON_THRESHOLD, IdentityEncoder
from avatar_engine.face.landmarks import LandmarkDetector
from avatar_engine.geometry.retarget import rigid_indices
from avatar_engine.io.video import iter_frames

FRAMES = 12
SHIFT = 8  # px, horizontal


def _frames(path) -> list[np.ndarray]:
    return [rgb for rgb, _ in iter_frames(path, max_frames=FRAMES)]


def _shift(rgb: np.ndarray, dx: int) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def clip(data_dir) -> list[np.ndarray]:
    """First frames of a 256x256 MEAD clip (P004)."""
    return _frames(data_dir / "clips/val/P004/C018.mp4")


@pytest.fixture(scope="module")
def detector():
    with LandmarkDetector(static=True) as det:
        yield det


@pytest.fixture(scope="module")
def encoder() -> IdentityEncoder:
    return IdentityEncoder()


def _flicker(frames: list[np.ndarray]) -> float:
    return float(np.mean([metrics.warp_error(a, b) for a, b in zip(frames, frames[1:])]))


def test_psnr_known_values():
    a = np.full((32, 32, 3), 100, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    assert metrics.psnr_from_mse(0.0) == math.inf


def test_clip_against_itself(clip, detector):
    psnr = metrics.psnr_from_mse(np.mean([metrics.mse(f, f) for f in clip]))
    assert psnr == math.inf
    assert all(metrics.ssim(f, f) == pytest.approx(1.0, abs=1e-12) for f in clip)
    flicker = _flicker(clip)
    assert flicker > 0  # a real talking face moves and has compression noise
    assert flicker / _flicker([f.copy() for f in clip]) == pytest.approx(1.0, abs=1e-12)
    pts = detector.detect(clip[5])
    assert metrics.expression_error(pts, pts.copy()) == pytest.approx(0.0, abs=1e-6)
    assert max(metrics.pose_error_deg(pts, pts.copy())) == pytest.approx(0.0, abs=1e-4)
    masks = metrics.region_masks(pts, clip[5].shape[:2])
    assert metrics.masked_l1(clip[5], clip[5], masks["mouth"]) == 0.0


def test_horizontally_shifted_copy(clip, detector, encoder):
    shifted = [_shift(f, SHIFT) for f in clip]
    psnr = metrics.psnr_from_mse(np.mean([metrics.mse(a, b) for a, b in zip(shifted, clip)]))
    assert 15.0 < psnr < 28.0
    ssim = np.mean([metrics.ssim(a, b) for a, b in zip(shifted, clip)])
    assert 0.5 < ssim < 0.85
    # the shift is constant over time: as steady as the original
    assert _flicker(shifted) / _flicker(clip) == pytest.approx(1.0, abs=0.05)
    # a translation is a pose change only: expression and rotation errors stay near zero
    exprs, rots = [], []
    for a, b in zip(shifted[::4], clip[::4]):
        pa, pb = detector.detect(a), detector.detect(b)
        assert np.median(pa[:, 0] - pb[:, 0]) == pytest.approx(SHIFT, abs=1.0)
        exprs.append(metrics.expression_error(pa, pb))
        rots.append(max(metrics.pose_error_deg(pa, pb)))
        ea, eb = encoder.embed(a, pa), encoder.embed(b, pb)
        assert encoder.distance(ea, eb) < 0.2
    assert max(exprs) < 0.015
    assert max(rots) < 1.5
    # but the pixels around the mouth and eyes do not match any more
    pts = detector.detect(clip[0])
    masks = metrics.region_masks(pts, clip[0].shape[:2])
    assert metrics.masked_l1(shifted[0], clip[0], masks["mouth"]) > 0.01
    assert metrics.masked_l1(shifted[0], clip[0], masks["eyes"]) > 0.01


def test_other_identity_is_far_same_identity_is_near(data_dir, clip, detector, encoder):
    def embed(frame):
        e = encoder.embed(frame, detector.detect(frame))
        assert e is not None and e.shape == (128,) and e.dtype == np.float32
        return e

    mine = embed(clip[0])
    same_person = embed(_frames(data_dir / "clips/val/P004/C019.mp4")[0])  # same woman, other clip
    other = embed(_frames(data_dir / "clips/val/P048/C077.mp4")[0])  # another woman
    assert encoder.distance(mine, same_person) < SAME_PERSON_THRESHOLD
    assert encoder.distance(mine, other) > SAME_PERSON_THRESHOLD
    # dlib's own detector finds the same face: the landmark box does not change the answer much
    assert encoder.distance(mine, encoder.embed(clip[0])) < 0.1
    assert encoder.embed(np.full((200, 200, 3), 128, np.uint8)) is None


def test_known_rotation_is_pose_error_not_expression(clip, detector):
    pts = detector.detect(clip[0]).astype(np.float64)
    for axis, expected in ((1, (15.0, 0.0, 0.0)), (0, (0.0, 10.0, 0.0)), (2, (0.0, 0.0, 20.0))):
        angle = math.radians(max(expected))
        rot = cv2.Rodrigues(np.eye(3)[axis] * angle)[0]
        centre = pts.mean(0)
        moved = ((pts - centre) @ rot.T * 1.1 + centre + [5.0, -3.0, 0.0]).astype(np.float32)
        assert metrics.pose_error_deg(moved, pts.astype(np.float32)) == pytest.approx(expected, abs=1e-3)
        assert metrics.expression_error(moved, pts.astype(np.float32)) < 1e-5


def test_euler_angles_of_known_rotations():
    yaw = cv2.Rodrigues(np.array([0.0, math.radians(30), 0.0]))[0]
    assert metrics.rotation_to_euler_deg(yaw) == pytest.approx((30.0, 0.0, 0.0), abs=1e-9)
    roll = cv2.Rodrigues(np.array([0.0, 0.0, math.radians(-12)]))[0]
    assert metrics.rotation_to_euler_deg(roll) == pytest.approx((0.0, 0.0, -12.0), abs=1e-9)


def test_expression_change_is_measured(clip, detector):
    pts = detector.detect(clip[0])
    opened = pts.copy()
    lower_lip = np.array([14, 87, 178, 88, 95, 317, 402, 318, 324, 17, 84, 181, 91, 146, 314, 405, 321, 375])
    iod = metrics.interocular_distance(pts)
    opened[lower_lip, 1] += 0.3 * iod  # drop the lower lip by 0.3 inter-ocular distances
    err = metrics.expression_error(opened, pts)
    n_mobile = 478 - len(rigid_indices(pts))
    assert err == pytest.approx(0.3 * len(lower_lip) / n_mobile, rel=0.05)


def test_region_masks_and_masked_l1(clip, detector):
    frame = clip[0]
    pts = detector.detect(frame)
    masks = metrics.region_masks(pts, frame.shape[:2])
    mouth, eyes = masks["mouth"], masks["eyes"]
    assert mouth[int(pts[13, 1]), int(pts[13, 0])] and not mouth[int(pts[468, 1]), int(pts[468, 0])]
    assert eyes[int(pts[468, 1]), int(pts[468, 0])] and eyes[int(pts[473, 1]), int(pts[473, 0])]
    assert not (mouth & eyes).any()
    assert 0.005 < mouth.mean() < 0.1 and 0.005 < eyes.mean() < 0.1
    painted = frame.copy()
    painted[mouth] = 255 - painted[mouth]
    assert metrics.masked_l1(painted, frame, eyes) == 0.0
    expected = np.abs(painted[mouth].astype(float) - frame[mouth]).mean() / 255
    assert metrics.masked_l1(painted, frame, mouth) == pytest.approx(expected)
    assert math.isnan(metrics.masked_l1(frame, frame, np.zeros(frame.shape[:2], bool)))


def test_flicker_detects_temporal_noise(clip):
    rng = np.random.default_rng(0)
    flickering = [np.clip(f.astype(int) + (rng.integers(-12, 13, f.shape) if i % 2 else 0), 0, 255).astype(np.uint8)
                  for i, f in enumerate(clip)]
    assert _flicker(flickering) / _flicker(clip) > 2.0
    # motion compensation: a moving (shifted) frame pair is not flicker
    moved = _shift(clip[0], 3)
    assert metrics.warp_error(clip[0], moved) < 0.5 * np.abs(moved.astype(float) - clip[0]).mean() / 255


def test_ssim_orders_degradations(clip):
    frame = clip[0]
    blurred = [cv2.GaussianBlur(frame, (0, 0), s) for s in (0.5, 1.5, 4.0)]
    values = [metrics.ssim(b, frame) for b in blurred]
    assert values == sorted(values, reverse=True)
    assert values[0] < 1.0 and values[-1] > 0.0
    assert metrics.ssim(255 - frame, frame) < 0.1
    # flat images: only the luminance term remains, (2 p q + c1) / (p^2 + q^2 + c1)
    p, q, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    flat = metrics.ssim(np.full((40, 40, 3), 100, np.uint8), np.full((40, 40, 3), 120, np.uint8))
    assert flat == pytest.approx((2 * p * q + c1) / (p * p + q * q + c1), rel=1e-9)
    with pytest.raises(ValueError):
        metrics.ssim(frame, frame[:, :100])
