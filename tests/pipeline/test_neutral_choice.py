"""The offline neutral: the most frontal, still frame of the first seconds, or ``--neutral-frame N``."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar_engine.cli import main
from avatar_engine.errors import NoFaceError
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames
from avatar_engine.pipeline.neutral import choose_neutral_frame, eye_openings, mouth_opening, neutral_at
from avatar_engine.pipeline.render_job import RenderJobConfig, choose_neutral

CLIP = "clips/val/P004/C021.mp4"
PHOTO = "images/val/P152/I036.png"


@pytest.fixture(scope="module")
def tracked(data_dir):
    """(times, landmarks) of the first 20 frames of a frontal val clip, tracked as the pipeline does."""
    times, points = [], []
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for rgb, t in iter_frames(data_dir / CLIP, max_frames=20):
            times.append(t)
            points.append(det.detect(rgb, t))
    assert all(p is not None for p in points)
    return times, points


def _turn(points: np.ndarray, yaw: float) -> np.ndarray:
    centre = points.mean(0)
    rot = Rotation.from_euler("y", yaw, degrees=True).as_matrix()
    return ((points - centre) @ rot.T + centre).astype(np.float32)


def test_a_turned_start_is_skipped_for_the_frontal_frames(tracked):
    """The speaker starts turned 35° (first 8 frames), then faces the camera."""
    times, points = tracked
    driving = [_turn(p, 35.0) if i < 8 else p for i, p in enumerate(points)]
    choice = choose_neutral_frame(times, driving)
    assert choice.index >= 9, "a frontal, still frame (not the turned start, not the turn itself)"
    assert choice.problem is None and abs(choice.pose.yaw) < 10
    assert choice.describe().startswith(f"frame {choice.index} (")


def test_all_turned_is_reported_and_frames_without_face_are_skipped(tracked):
    times, points = tracked
    driving = [None, None] + [_turn(p, 35.0) for p in points[2:]]
    choice = choose_neutral_frame(times, driving)
    assert choice.index >= 2 and choice.problem is not None and "turn your head" in choice.problem
    with pytest.raises(NoFaceError):
        choose_neutral_frame(times, [None] * len(times))


def test_window_limits_the_choice(tracked):
    times, points = tracked
    driving = [_turn(p, 35.0) if i < 15 else p for i, p in enumerate(points)]
    assert choose_neutral_frame(times, driving, window_s=0.3).index <= 8  # 0.3 s at 25 fps


def test_a_talking_start_gets_a_closed_mouth_and_resting_eyes(data_dir, tmp_path):
    """The quick-start driver talks from the first frame; her mouth is closed only now and then, and
    she widens her eyes as she speaks. A neutral with the mouth open would keep the avatar's mouth shut
    while she talks (MOUTH_WEIGHT), one with wide eyes would half close the avatar's (EYE_WEIGHT)."""
    cfg = RenderJobConfig(source=data_dir / PHOTO, driving=data_dir / "clips/val/P048/C077.mp4",
                          output=tmp_path / "o.mp4")
    choice = choose_neutral(cfg)
    assert mouth_opening(choice.points) < 0.03
    assert choice.problem is None
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        eyes = [eye_openings(det.detect(rgb, t)) for rgb, t in iter_frames(cfg.driving, max_frames=91)]
    ratio = eye_openings(choice.points) / np.median(np.array(eyes), axis=0)
    assert np.all(np.abs(ratio - 1.0) < 0.1), ratio


def test_neutral_at(tracked):
    times, points = tracked
    assert neutral_at(times, points, 7).index == 7
    with pytest.raises(NoFaceError, match="has 20 frames"):
        neutral_at(times, points, 20)
    with pytest.raises(NoFaceError, match="no face in that frame"):
        neutral_at(times, [None] * 20, 3)


def test_render_job_takes_the_neutral_frame_asked_for(data_dir, tmp_path, caplog):
    cfg = RenderJobConfig(source=data_dir / PHOTO, driving=data_dir / CLIP, output=tmp_path / "o.mp4", neutral_frame=12)
    choice = choose_neutral(cfg)
    assert choice.index == 12
    with caplog.at_level(logging.INFO, logger="avatar_engine"):
        rc = main(["render", "--source", str(data_dir / PHOTO), "--driving", str(data_dir / CLIP), "--output",
                   str(tmp_path / "o.mp4"), "--max-frames", "6", "--renderer", "mesh"])
    assert rc == 0 and "neutral pose: frame" in caplog.text


def test_bad_neutral_frame_is_a_one_line_error(data_dir, tmp_path, capsys):
    for value, message in (("-1", "--neutral-frame must be >= 0"), ("100000", "--neutral-frame 100000")):
        rc = main(["render", "--source", str(data_dir / PHOTO), "--driving", str(data_dir / CLIP), "--output",
                   str(tmp_path / "o.mp4"), "--neutral-frame", value])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "o.mp4").exists()
