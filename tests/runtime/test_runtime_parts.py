"""Live-engine building blocks: latest-value slots, stats, frame fitting, cameras, the neutral-pose step."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from avatar_engine.errors import CameraError
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames
from runtime.capture import CaptureThread, FileCamera, describe_cameras, list_cameras, open_camera
from runtime.neutral import NeutralConfig, NeutralPoseStep, neutral_problem
from runtime.sinks import fit_frame
from runtime.slots import Frame, LatestSlot, SlotClosed
from runtime.stats import LatencyHistogram, RateMeter

CLIP = "clips/val/P004/C018.mp4"  # 256x256, 25 fps, 104 frames, a centred talking face


def test_latest_slot_keeps_only_the_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.get(timeout=0.01) is None
    for i in range(5):
        slot.put(i)
    assert slot.get(timeout=0) == 4
    assert (slot.put_count, slot.taken_count, slot.dropped) == (5, 1, 4)
    slot.put(5)
    slot.close()
    slot.put(6)  # ignored after close
    assert slot.get(timeout=0) == 5  # a pending item survives close
    with pytest.raises(SlotClosed):
        slot.get(timeout=1.0)


def test_latest_slot_between_threads_never_queues():
    """A fast producer and a slow consumer: the consumer sees increasing, recent items; the rest are dropped."""
    slot: LatestSlot[int] = LatestSlot()
    seen: list[int] = []

    def consume():
        while True:
            try:
                item = slot.get(timeout=1.0)
            except SlotClosed:
                return
            if item is not None:
                seen.append(item)
                time.sleep(0.005)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(2000):
        slot.put(i)
        if i % 50 == 0:
            time.sleep(0.001)
    slot.close()
    t.join(timeout=5)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == 1999
    assert slot.dropped == 2000 - len(seen) > 0


def test_wait_empty_gives_backpressure():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    assert slot.wait_empty(timeout=0.05) is False
    threading.Timer(0.05, slot.get).start()
    assert slot.wait_empty(timeout=2.0) is True
    assert slot.dropped == 0


def test_latency_histogram_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.gamma(4.0, 10.0, size=5000)
    hist = LatencyHistogram(bin_ms=0.5)
    for v in values:
        hist.add(float(v))
    for q in (50, 99):
        assert hist.percentile(q) == pytest.approx(np.percentile(values, q), abs=0.6)
    assert hist.mean == pytest.approx(values.mean())
    assert np.isnan(LatencyHistogram().percentile(50))


def test_rate_meter_counts_totals():
    meter = RateMeter(window_s=10.0)
    for k in range(11):
        meter.tick(t=100.0 + k * 0.04, total=2 * k)  # 2 frames every 40 ms = 50 fps
    assert meter.rate(now=100.4) == pytest.approx(50.0)
    assert meter.rate(now=200.0) == 0.0  # stale: nothing in the window


def test_fit_frame_letterboxes_and_mirrors():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255  # left half white
    out = fit_frame(img, (320, 240))
    assert out.shape == (240, 320, 3)
    assert out[:40].max() == 0 and out[-40:].max() == 0  # black bars top and bottom (200x100 -> 320x160)
    assert out[120, 10].min() == 255 and out[120, 310].max() == 0
    mirrored = fit_frame(img, (320, 240), mirror=True)
    assert mirrored[120, 310].min() == 255 and mirrored[120, 10].max() == 0
    assert fit_frame(img, (200, 100)) is img


def test_no_cameras_here_gives_a_clear_error():
    if list_cameras():
        pytest.skip("this machine has cameras")
    assert describe_cameras() == "cameras found: none"
    with pytest.raises(CameraError) as err:
        open_camera("0").open()
    msg = str(err.value)
    assert "camera 0 not found" in msg and "cameras found: none" in msg and "--camera clip.mp4" in msg
    assert "\n" not in msg
    with pytest.raises(CameraError, match="neither a camera index nor a video file"):
        open_camera("no/such/clip.mp4")


def test_file_camera_plays_at_its_own_rate(data_dir):
    cam = FileCamera(data_dir / CLIP, realtime=True)
    with cam:
        assert cam.fps == pytest.approx(25.0)
        t0 = time.monotonic()
        frames = [cam.read() for _ in range(13)]
        elapsed = time.monotonic() - t0
    assert all(f.shape == (256, 256, 3) for f in frames)
    assert 0.44 <= elapsed <= 0.75  # 12 frame periods of 40 ms


def test_capture_thread_ends_with_the_file_and_does_not_drop_when_not_realtime(data_dir):
    slot: LatestSlot[Frame] = LatestSlot()
    cam = FileCamera(data_dir / CLIP, realtime=False, width=128, height=128)
    cam.open()
    thread = CaptureThread(cam, slot)
    thread.start()
    indices = []
    while True:
        try:
            frame = slot.get(timeout=5.0)
        except SlotClosed:
            break
        indices.append(frame.index)
        assert frame.image.shape == (128, 128, 3)
        time.sleep(0.002)  # a consumer slower than the decoder
    thread.join(timeout=5)
    assert indices == list(range(104))
    assert thread.state == "ended" and slot.dropped == 0


def _landmarks(data_dir, n: int, shift: int = 0) -> list[tuple[np.ndarray, float]]:
    """Tracked landmarks of the first ``n`` frames of the clip (x shifted by ``shift`` px), with times."""
    out = []
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for rgb, t in iter_frames(data_dir / CLIP, max_frames=n):
            pts = det.detect(rgb, t)
            assert pts is not None
            pts = pts.copy()
            pts[:, 0] += shift
            out.append((pts, t))
    return out


def test_neutral_pose_on_a_real_face(data_dir):
    frames = _landmarks(data_dir, 60)
    step = NeutralPoseStep(NeutralConfig(duration_s=1.0))
    step.start()
    neutral, used = None, 0
    for pts, t in frames:
        used += 1
        neutral = step.feed(pts, (256, 256), t)
        if neutral is not None:
            break
    assert neutral is not None and not step.active
    assert 26 <= used <= 50  # about 1 s of 25 fps frames, a few skipped while the head moves
    stack = np.stack([p for p, _ in frames[:used]])
    assert neutral.shape == (478, 3) and neutral.dtype == np.float32
    # the median lies within the spread of the collected frames
    assert np.all(neutral[:, :2] >= stack[:, :, :2].min(0) - 1e-3)
    assert np.all(neutral[:, :2] <= stack[:, :, :2].max(0) + 1e-3)


def test_a_user_who_talks_gets_a_closed_mouth_neutral(data_dir):
    """The quick-start driver talks through the whole second the neutral is taken: the median of all
    those frames has the mouth 0.13 IOD open, which the avatar would show as closed."""
    from avatar_engine.pipeline.neutral import mouth_opening

    step = NeutralPoseStep(NeutralConfig(duration_s=1.0))
    step.start()
    fed, neutral = [], None
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for rgb, t in iter_frames(data_dir / "clips/val/P048/C077.mp4", max_frames=90):
            pts = det.detect(rgb, t)
            fed.append(pts)
            neutral = step.feed(pts, (rgb.shape[1], rgb.shape[0]), t)
            if neutral is not None:
                break
    assert neutral is not None
    assert mouth_opening(np.median(np.stack(fed), axis=0)) > 0.1  # what a plain median would take
    assert mouth_opening(neutral) < 0.07


def test_neutral_pose_step_guides_an_off_centre_face_then_times_out(data_dir):
    frames = _landmarks(data_dir, 60, shift=120)  # the face at the right edge of a 256-px frame
    step = NeutralPoseStep(NeutralConfig(duration_s=1.0, timeout_s=1.5))
    step.start()
    results = []
    for pts, t in frames:
        results.append(step.feed(pts, (256, 256), t))
        if results[-1] is not None:
            break
        assert step.hint == "move your face into the box" and not step.ok and step.progress == 0.0
    assert results[-1] is not None  # settled for the recent frames after the timeout
    assert 37 <= len(results) <= 40  # 1.5 s at 25 fps
    step.start()
    assert step.feed(None, (256, 256), 10.0) is None and step.hint.startswith("no face")


def test_neutral_problem_judges_one_frame(data_dir):
    """One frame is acceptable as a neutral when the face is inside the guide box and of a sensible size."""
    [(pts, _)] = _landmarks(data_dir, 1)
    cfg = NeutralConfig()
    assert neutral_problem(pts, (256, 256), cfg) is None  # the val clip's centred face
    shifted = pts.copy()
    shifted[:, 0] += 120
    assert neutral_problem(shifted, (256, 256), cfg) == "move your face into the box"
    small = pts.copy()  # the same face in a frame 8 times larger, centred: too far away
    small[:, :2] += np.array([256 * 3.5, 256 * 3.5 - 0.05 * 256 * 8], np.float32)
    assert neutral_problem(small, (2048, 2048), NeutralConfig(max_offset_y=1.0)) == "come closer"
    big = pts.copy()
    big[:, :2] = (big[:, :2] - 128) * 3 + 128
    assert neutral_problem(big, (256, 256), NeutralConfig(max_offset_x=1.0, max_offset_y=1.0)) == "move back a little"


def test_preview_hotkeys_map_to_commands():
    from runtime.engine import LiveConfig, LiveEngine

    engine = LiveEngine(LiveConfig(source="unused.png"))
    assert engine.handle_key(-1) is None and engine.handle_key(ord("x")) is None
    assert engine.handle_key(ord("P")) == "pause" and engine.mode == "paused"
    assert engine.handle_key(ord(" ")) == "pause" and engine.mode == "avatar"
    assert engine.handle_key(ord("t")) == "passthrough" and engine.mode == "passthrough"
    assert engine.handle_key(ord("T")) == "passthrough" and engine.mode == "avatar"
    assert engine.handle_key(ord("s")) == "stats"
    assert engine.handle_key(ord("c")) == "neutral" and engine.controls.retake_neutral.is_set()
    assert engine.handle_key(27) == "quit"


def test_speed_advice_names_the_slow_stage_and_the_cheaper_options():
    from runtime.stats import StatsSnapshot, speed_advice

    def snap(cam: float, proc: float, **stages: float) -> StatsSnapshot:
        return StatsSnapshot(cam, proc, proc, stages, 50.0, 90.0, 0)

    assert speed_advice(snap(30, 29, render=20.0), 512, "neural", "cpu") is None  # keeps up
    assert speed_advice(snap(0, 0), 256, "neural", "cpu") is None  # nothing measured yet
    slow = speed_advice(snap(30, 10, landmarks=7.0, render=34.0, sr=54.0), 512, "neural", "cpu")
    assert slow is not None and "sr (54 ms" in slow and "--size 256" in slow and "--renderer mesh" in slow
    assert "--device cuda" in slow and "\n" not in slow
    gpu_mesh = speed_advice(snap(30, 12, render=70.0), 256, "mesh", "cuda")
    assert gpu_mesh is not None and "render (70 ms" in gpu_mesh and "try" not in gpu_mesh
