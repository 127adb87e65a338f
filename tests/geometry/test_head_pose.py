"""Absolute head pose and the neutral-pose check on real landmarks (val clips), turned by known angles."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.geometry.head_pose import head_pose, neutral_pose_problem
from media import read_frames


@pytest.fixture(scope="module")
def detector():
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        yield det


@pytest.fixture(scope="module")
def frontal(data_dir, detector):
    """A frontal face (MEAD front view, val)."""
    pts = detector.detect(read_frames(data_dir / "clips/val/P004/C021.mp4", 1)[0])
    assert pts is not None
    return pts


def _turn(points: np.ndarray, yaw=0.0, pitch=0.0, roll=0.0) -> np.ndarray:
    centre = points.mean(0)
    rot = Rotation.from_euler("yxz", [yaw, pitch, roll], degrees=True).as_matrix()
    return ((points - centre) @ rot.T + centre).astype(np.float32)


def test_frontal_face_is_frontal_and_a_good_neutral(frontal):
    pose = head_pose(frontal)
    assert abs(pose.yaw) < 5 and abs(pose.roll) < 5 and abs(pose.pitch) < 10
    assert neutral_pose_problem(frontal) is None


@pytest.mark.parametrize("yaw", [-45.0, -20.0, 20.0, 45.0])
def test_yaw_is_measured_and_a_turned_face_is_refused(frontal, yaw):
    base = head_pose(frontal).yaw
    pose = head_pose(_turn(frontal, yaw=yaw))
    assert pose.yaw - base == pytest.approx(yaw, abs=3.0)
    hint = neutral_pose_problem(_turn(frontal, yaw=yaw))
    assert hint is not None and hint.startswith("turn your head to face the camera")


def test_roll_and_pitch_hints(frontal):
    assert head_pose(_turn(frontal, roll=25)).roll - head_pose(frontal).roll == pytest.approx(25, abs=2.0)
    assert neutral_pose_problem(_turn(frontal, roll=25)).startswith("hold your head upright")
    down = _turn(frontal, pitch=40)
    assert head_pose(down).pitch > 25
    assert neutral_pose_problem(down) == f"look straight into the camera (head down {head_pose(down).pitch:.0f}°)"
    assert neutral_pose_problem(_turn(frontal, yaw=10)) is None, "small turns are fine"


def test_real_three_quarter_view_is_refused(data_dir, detector):
    """VoxCeleb crop filmed in a three-quarter view (train clip C050: yaw ~30°)."""
    pts = detector.detect(read_frames(data_dir / "clips/train/P025/C050.mp4", 1)[0])
    assert pts is not None
    assert abs(head_pose(pts).yaw) > 20
    assert neutral_pose_problem(pts).startswith("turn your head")
