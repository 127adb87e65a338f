"""Face signals, transfer statistics, blink / teeth events and the motion track of the evaluation."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from avatar_engine.eval import signals as sig
from avatar_engine.eval.motion import MOTION_METRICS, MotionTrack, aggregate_motion
from avatar_engine.face import topology
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames


@pytest.fixture(scope="module")
def face(data_dir):
    """``(frame, (478, 3) landmarks)`` of a real val frame with an open mouth (MEAD, 256 x 256)."""
    rgb, _ = next(iter(iter_frames(data_dir / "clips/val/P004/C018.mp4", 1)))
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        points = det.detect(rgb)
    assert points is not None
    return rgb, points


def _similar(points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    out = points.copy()
    out[:, :2] = scale * points[:, :2] @ np.array([[c, s], [-s, c]]) + np.asarray(shift)
    return out


def test_signals_ignore_head_position_scale_and_roll(face):
    _, p = face
    a = sig.face_signals(p)
    b = sig.face_signals(_similar(p, 0.3, 1.7, (40.0, -25.0)))
    assert set(a) == set(sig.SIGNALS)
    for k in sig.SIGNALS:
        assert b[k] == pytest.approx(a[k], abs=1e-6)
    assert a["mouth_open"] > 0.1 and a["brow_height"] > 0.1 and a["smile"] > 0.3
    assert 0.02 < a["eye_open_left"] < 0.2 and 0.02 < a["eye_open_right"] < 0.2


def test_gaze_follows_the_irises_and_lids_close(face):
    _, p = face
    base = sig.face_signals(p)
    iod = np.linalg.norm(p[263, :2] - p[33, :2])
    u = (p[263, :2] - p[33, :2]) / iod
    moved = p.copy()
    iris = np.concatenate([topology.LEFT_IRIS_IDX, topology.RIGHT_IRIS_IDX])
    moved[iris, :2] += 0.05 * iod * u
    assert sig.face_signals(moved)["gaze_x"] == pytest.approx(base["gaze_x"] + 0.05, abs=1e-6)
    assert sig.face_signals(moved)["gaze_y"] == pytest.approx(base["gaze_y"], abs=1e-6)
    closed = p.copy()
    for upper, lower in ((386, 374), (385, 380), (387, 373)):
        closed[upper] = closed[lower]
    values = sig.face_signals(closed)
    assert values["eye_open_left"] == pytest.approx(0.0, abs=1e-9)
    assert values["eye_open_right"] == pytest.approx(base["eye_open_right"])


def test_transfer_statistics():
    t = np.linspace(0, 4 * np.pi, 50)
    ref = 0.1 + 0.02 * np.sin(t)
    half = sig.transfer(ref, 0.3 + 0.5 * (ref - 0.1))
    assert half.corr == pytest.approx(1.0) and half.ratio == pytest.approx(0.5) and half.frames == 50
    frozen = sig.transfer(ref, np.full_like(ref, 0.2))
    assert frozen.ratio == 0.0 and math.isnan(frozen.corr)
    assert math.isnan(sig.transfer(np.full_like(ref, 0.1), ref).ratio)
    inverted = sig.transfer(ref, -ref)
    assert inverted.corr == pytest.approx(-1.0) and inverted.ratio == pytest.approx(1.0)
    gappy = ref.copy()
    gappy[::5] = np.nan
    assert sig.transfer(gappy, ref).frames == 40
    # pooled: per-sequence offsets do not count as motion
    pooled = sig.pooled_transfer([(ref, ref + 5.0), (ref + 1.0, ref)])
    assert pooled.corr == pytest.approx(1.0) and pooled.ratio == pytest.approx(1.0) and pooled.frames == 100
    assert sig.pooled_transfer([(ref, ref), (ref, 2 * ref)]).ratio == pytest.approx(math.sqrt((1 + 4) / 2))
    with pytest.raises(ValueError):
        sig.transfer(ref, ref[:-1])


def test_closed_eyes_relative_to_the_sequence_and_event_score():
    eye = np.array([0.10, 0.11, 0.10, 0.03, 0.02, 0.10, np.nan, 0.09, 0.12, 0.10])
    closed = sig.eyes_closed(eye)
    assert closed.tolist() == [False, False, False, True, True, False, False, False, False, False]
    assert sig.eyes_closed(eye * 0.3).tolist() == closed.tolist()  # small eyes: same blinks
    score, count = sig.event_score(closed, np.roll(closed, 1))
    assert count == 2 and score == 0.5
    assert math.isnan(sig.event_score(np.zeros(3, bool), np.ones(3, bool))[0])


def test_teeth_in_the_mouth_opening(face):
    rgb, p = face
    poly = np.round(p[topology.INNER_LIPS_LOOP, :2]).astype(np.int32)
    white, red = rgb.copy(), rgb.copy()
    cv2.fillPoly(white, [poly], (235, 230, 225))
    cv2.fillPoly(red, [poly], (150, 30, 40))
    share, area = sig.teeth_share(white, p)
    assert area > 100 and share > 0.9
    assert sig.teeth_visible(white, p) and not sig.teeth_visible(red, p)
    shut = p.copy()
    shut[topology.INNER_LIPS_IDX, 1] = p[14, 1]  # a closed mouth: no opening, no teeth
    assert not sig.teeth_visible(white, shut)


def test_motion_track_scores_and_moments(face):
    rgb, p = face
    iod = np.linalg.norm(p[263, :2] - p[33, :2])
    track = MotionTrack(("good", "frozen"))
    thumb = np.zeros((8, 8, 3), np.uint8)
    lower_lip = [i for i in topology.INNER_LIPS_IDX if p[i, 1] > p[13, 1] + 1]
    for k in range(12):
        frame_pts = p.copy()
        frame_pts[lower_lip, 1] += 0.02 * iod * (k % 4)  # the mouth opens and closes
        track.begin_frame(frame_pts, rgb, frame_pts, thumb + k)
        track.add_output("good", rgb, frame_pts, thumb + 100 + k)
        track.add_output("frozen", rgb, p if k != 5 else None, thumb)
    good, frozen = track.scores("good"), track.scores("frozen")
    assert set(good) == {k for k, _ in MOTION_METRICS}
    assert good["mouth_open_corr"] == pytest.approx(1.0) and good["mouth_open_ratio"] == pytest.approx(1.0)
    assert frozen["mouth_open_ratio"] == 0.0
    assert good["teeth_score"] == 1.0 and track.event_counts()["teeth_frames"] == 12
    assert frozen["teeth_score"] == pytest.approx(11 / 12)  # no face on one output frame
    mouth = track.moments["mouth"]
    assert mouth.frame == 3 and int(mouth.thumbs[0][0, 0, 0]) == 3 and int(mouth.thumbs[1][0, 0, 0]) == 103
    assert len(mouth.thumbs) == 3
    pooled = aggregate_motion([track, track], "good")
    assert pooled["mouth_open_ratio"] == pytest.approx(1.0) and pooled["teeth_score"] == 1.0


def test_closed_lips_score(face):
    """The driver's closed-lip frames (inner-lip gap under ``EventConfig.closed_mouth`` IOD): an output
    that closes its lips with the driver scores 1, one that keeps a photo's parted lips 0, and a frame
    without a face on the output counts as open."""
    rgb, p = face
    iod = np.linalg.norm(p[263, :2] - p[33, :2])
    upper = [i for i in topology.INNER_LIPS_IDX if p[i, 1] <= p[13, 1] + 1]
    lower = [i for i in topology.INNER_LIPS_IDX if i not in upper]

    def with_gap(g: float) -> np.ndarray:
        out = p.copy()
        out[lower, 1] = out[upper, 1].mean() + g * iod
        return out

    track = MotionTrack(("follows", "photo"))
    for k in range(10):
        driver = with_gap(0.0 if k % 2 else 0.15)  # closed on the odd frames
        track.begin_frame(driver, rgb, driver)
        track.add_output("follows", rgb, driver if k != 9 else None)
        track.add_output("photo", rgb, with_gap(0.15 + (0.0 if k % 2 else 0.1)))
    assert track.event_counts()["closed_lip_frames"] == 5
    assert track.scores("follows")["lips_closed_score"] == pytest.approx(4 / 5)
    assert track.scores("photo")["lips_closed_score"] == 0.0
    assert aggregate_motion([track], "follows")["lips_closed_score"] == pytest.approx(4 / 5)


def test_gaze_is_scored_only_while_the_drivers_eyes_are_open(face):
    """During a blink the reference's iris landmarks are guesses: an output that follows the driver's
    gaze on every open-eye frame scores a full correlation whatever its irises do behind closed lids,
    and one that does not follow it still scores low."""
    rgb, p = face
    iod = np.linalg.norm(p[263, :2] - p[33, :2])
    u = (p[263, :2] - p[33, :2]) / iod
    iris = np.concatenate([topology.LEFT_IRIS_IDX, topology.RIGHT_IRIS_IDX])
    lids = [(386, 374), (385, 380), (387, 373), (159, 145), (158, 153), (160, 144)]
    track = MotionTrack(("follows", "opposite"))
    thumb = np.zeros((8, 8, 3), np.uint8)
    blink = {9, 10, 11}
    for k in range(24):
        look = 0.02 * math.sin(k / 3.0)  # the driver's gaze, in IODs
        ref = p.copy()
        ref[iris, :2] += (look if k not in blink else -0.15) * iod * u  # a wild iris guess behind the lids
        if k in blink:
            for upper, lower in lids:
                ref[upper] = ref[lower]
        follows, opposite = ref.copy(), p.copy()
        follows[iris, :2] = p[iris, :2] + (look if k not in blink else 0.1) * iod * u
        opposite[iris, :2] += -look * iod * u
        track.begin_frame(ref, rgb, ref, thumb)
        track.add_output("follows", rgb, follows, thumb)
        track.add_output("opposite", rgb, opposite, thumb)
    assert track.event_counts()["closed_eye_frames"] == 3
    good, bad = track.scores("follows"), track.scores("opposite")
    assert good["gaze_x_corr"] == pytest.approx(1.0, abs=1e-6) and good["gaze_x_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert bad["gaze_x_corr"] == pytest.approx(-1.0, abs=1e-6)
    assert aggregate_motion([track], "follows")["gaze_x_corr"] == pytest.approx(1.0, abs=1e-6)
    # the contact sheet's "most sideways gaze" is a real glance, not the blink's guess
    assert track.moments["gaze"].frame not in blink and track.moments["blink"].frame in blink
    # the blink's frames still count for the eye opening
    assert good["eye_open_left_ratio"] > 0.5
