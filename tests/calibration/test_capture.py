"""Capture quality checks and the guided capture loop, with fakes only at the camera and window."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar_engine.errors import AvatarError
from avatar_engine.face.landmarks import LandmarkDetector
from avatar_engine.io.image import read_image
from avatar_engine.io.video import iter_frames, probe_video
from calibration.capture import SCRIPT, CaptureCancelled, CaptureConfig, draw_capture_overlay, run_capture, script_step
from calibration.quality import HINTS, check_frame, frame_pose


@pytest.fixture(scope="module")
def photo(data_dir):
    rgb = read_image(data_dir / "images" / "val" / "P029" / "I023.jpg")
    with LandmarkDetector(static=True) as det:
        faces = det.detect_all(rgb)
    assert len(faces) == 1
    return rgb, faces[0]


def test_a_good_photo_passes(photo):
    rgb, face = photo
    assert check_frame(rgb, [face]) is None
    pose = frame_pose(face)
    assert abs(pose.yaw) < 0.3 and pose.eyes > 0.05


def test_each_problem_has_its_hint(photo):
    rgb, face = photo
    h, w = rgb.shape[:2]
    assert check_frame(rgb, []) == "no_face"
    assert check_frame(rgb, [face, face + 5]) == "several_faces"
    assert check_frame((rgb * 0.12).astype(np.uint8), [face]) == "too_dark"
    canvas = np.zeros((h * 4, w * 4, 3), np.uint8) + 128
    canvas[:h, :w] = rgb
    assert check_frame(canvas, [face]) == "too_small"
    x0 = int(face[:, 0].min() + 0.3 * (face[:, 0].max() - face[:, 0].min()))
    shifted = face.copy()
    shifted[:, 0] -= x0
    assert check_frame(np.ascontiguousarray(rgb[:, x0:]), [shifted]) == "cut_off"
    assert check_frame(cv2.GaussianBlur(rgb, (0, 0), 6), [face]) == "blurry"
    assert set(HINTS) == {"no_face", "several_faces", "too_dark", "too_small", "cut_off", "blurry"}


def test_two_real_faces_are_found_as_several(photo):
    rgb, _ = photo
    two = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
    with LandmarkDetector(static=True) as det:
        faces = det.detect_all(two)
    assert check_frame(two, faces) == "several_faces"


def test_script_covers_the_capture():
    assert sum(s.share for s in SCRIPT) == pytest.approx(1.0)
    names = [script_step(f / 100)[1].name for f in range(100)]
    assert names[0] == "look" and names[-1] == "brows"
    assert {"turn", "nod", "read", "smile", "blink"} <= set(names)


class FakeCamera:
    """A camera fed from a real clip (the hardware boundary)."""

    realtime = False

    def __init__(self, path, transform=None):
        self.frames = iter_frames(path)
        self.fps = probe_video(path).fps
        self.transform = transform or (lambda x: x)

    def read(self):
        item = next(self.frames, None)
        return None if item is None else self.transform(item[0])


class FakeWindow:
    """Records what the preview shows; presses a key after ``quit_after`` frames."""

    def __init__(self, quit_after=None):
        self.shown, self.quit_after = [], quit_after

    def show(self, rgb):
        self.shown.append(rgb)
        return ord("q") if self.quit_after is not None and len(self.shown) >= self.quit_after else -1


def test_capture_writes_usable_frames_and_picks_a_source(data_dir, tmp_path):
    clip = data_dir / "clips" / "val" / "P004" / "C018.mp4"
    window = FakeWindow()
    res = run_capture(FakeCamera(clip), tmp_path / "cap.mp4", CaptureConfig(seconds=2.0), window)
    assert res.frames_seen == 50 and res.frames_kept > 40
    assert probe_video(res.video).frames == res.frames_kept
    assert res.source_frame.shape == (256, 256, 3) and res.source_landmarks.shape == (478, 3)
    assert len(window.shown) == 50 and window.shown[0].shape == (256, 256, 3)
    assert not np.array_equal(window.shown[0], next(iter_frames(clip))[0])  # the overlay is drawn
    assert set(res.steps_kept) <= {s.name for s in SCRIPT}


def test_capture_cancelled_from_the_window(data_dir, tmp_path):
    clip = data_dir / "clips" / "val" / "P004" / "C018.mp4"
    with pytest.raises(CaptureCancelled, match="cancelled"):
        run_capture(FakeCamera(clip), tmp_path / "cap.mp4", CaptureConfig(seconds=2.0), FakeWindow(quit_after=5))


def test_dark_capture_fails_with_the_hint(data_dir, tmp_path):
    clip = data_dir / "clips" / "val" / "P004" / "C018.mp4"
    dark = FakeCamera(clip, transform=lambda f: (f * 0.1).astype(np.uint8))
    with pytest.raises(AvatarError, match="too dark"):
        run_capture(dark, tmp_path / "cap.mp4", CaptureConfig(seconds=1.0))
    assert not (tmp_path / "cap.mp4").exists()


def test_overlay_shows_progress_and_hint(photo):
    rgb, face = photo
    _, step = script_step(0.5)
    ok = draw_capture_overlay(rgb, 0.5, step, None, face)
    bad = draw_capture_overlay(rgb, 0.5, step, "blurry", face)
    assert ok.shape == rgb.shape and not np.array_equal(ok, bad) and not np.array_equal(ok, rgb)
