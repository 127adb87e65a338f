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
from avatar_engine.eval.signals import face_signals
from avatar_engine.face import topology
from avatar_engine.pipeline.neutral import (TYPICAL_S, choose_neutral_frame, eye_openings, mouth_opening, neutral_at,
                                            with_typical_brows_and_lids)
from avatar_engine.pipeline.render_job import RenderJobConfig, choose_neutral, track_start

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


def _track(path, max_frames):
    times, points = [], []
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for rgb, t in iter_frames(path, max_frames=max_frames):
            times.append(t)
            points.append(det.detect(rgb, t))
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
    times, points = _track(cfg.driving, None)
    typical = [p for t, p in zip(times, points) if p is not None and t <= TYPICAL_S]
    ratio = eye_openings(choice.points) / np.median(np.array([eye_openings(p) for p in typical]), axis=0)
    assert np.all(np.abs(ratio - 1.0) < 0.02), ratio
    # her brows: the chosen frame's are raised (0.04 IOD above her median over the clip), the neutral's
    # are her typical ones; with the frame's own brows the avatar frowned all along
    brows = np.median([_brow(p) for p in points if p is not None])
    frame_points = choose_neutral_frame(times, points, typical_s=0.0).points
    assert _brow(frame_points) - brows > 0.03
    assert abs(_brow(choice.points) - brows) < 0.015


def _brow(points: np.ndarray) -> float:
    return face_signals(points)["brow_height"]


def test_the_neutral_takes_the_typical_brows_and_lids_not_the_chosen_frames(tracked):
    """Every frame but one has brows 0.05 IOD lower than the tracked ones: wherever the choice falls, the
    neutral's brows are the typical (lowered) ones, and its mouth, irises and pose are the chosen frame's."""
    times, points = tracked
    brows = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX])
    iod = float(np.linalg.norm(points[0][263, :2] - points[0][33, :2]))
    lowered = []
    for p in points:
        q = p.copy()
        q[brows, 1] += 0.05 * iod
        lowered.append(q)
    frame = choose_neutral_frame(times, points, typical_s=0.0).index
    driving = [p if i == frame else q for i, (p, q) in enumerate(zip(points, lowered))]
    choice = choose_neutral_frame(times, driving)
    chosen = driving[choice.index]
    typical = np.median([_brow(q) for q in lowered])
    assert abs(_brow(choice.points) - typical) < 0.005
    if choice.index == frame:  # the raised frame was chosen: its brows did not come along
        assert _brow(chosen) - typical > 0.045
    keep = np.setdiff1d(np.arange(len(chosen)), np.concatenate(
        [brows, topology.LEFT_EYE_IDX, topology.RIGHT_EYE_IDX]))
    np.testing.assert_array_equal(choice.points[keep], chosen[keep])
    # frames past typical_s do not count; with typical_s 0 the neutral is the frame itself
    only_first = choose_neutral_frame(times, driving, window_s=0.0, typical_s=0.0)
    np.testing.assert_array_equal(only_first.points, driving[only_first.index])


def test_typical_brows_follow_the_head_not_the_image(tracked):
    """Frames of the same face moved and scaled in the image give the chosen frame's own brows back."""
    _, points = tracked
    p = points[5]
    centre = p.mean(0)
    moved = [((p - centre) * s + centre + np.array([dx, dy, 0.0])).astype(np.float32)
             for s, dx, dy in ((1.0, 0, 0), (1.1, 12, -5), (0.9, -8, 9), (1.05, 3, 14))]
    out = with_typical_brows_and_lids(p, moved)
    np.testing.assert_allclose(out, p, atol=1e-3)


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


def test_the_render_pass_goes_on_with_the_neutral_pass_tracker(data_dir, tmp_path):
    """The start of the clip is tracked once: the render pass gets the same landmarks, frame for frame,
    as one uninterrupted tracking pass over the whole clip."""
    cfg = RenderJobConfig(source=data_dir / PHOTO, driving=data_dir / CLIP, output=tmp_path / "o.mp4",
                          neutral_window_s=0.5, neutral_typical_s=1.0)
    choice, tracked = track_start(cfg)
    try:
        replayed = [tracked.detect(rgb, t) for rgb, t in iter_frames(cfg.driving)]
    finally:
        tracked.close()
    _, fresh = _track(cfg.driving, None)
    assert 1.0 * 20 < len(tracked._points) < len(fresh)  # it stopped tracking after about a second
    assert len(replayed) == len(fresh)
    for a, b in zip(replayed, fresh):
        np.testing.assert_array_equal(a, b)
    assert choice.index < len(tracked._points)
