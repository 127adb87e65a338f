"""Live neutral step (runtime/neutral.py): a turned head is not taken as the neutral; the hint says why."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.io.video import iter_frames
from runtime.neutral import NeutralPoseStep, NeutralConfig


def test_turned_head_gets_a_face_the_camera_hint(data_dir):
    frames = []
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for rgb, t in iter_frames(data_dir / "clips/val/P004/C018.mp4", max_frames=40):
            frames.append((det.detect(rgb, t), t))
    rot = Rotation.from_euler("y", 30, degrees=True).as_matrix()
    cal = NeutralPoseStep(NeutralConfig(duration_s=0.5, timeout_s=100.0))
    cal.start()
    for pts, t in frames[:20]:  # turned by 30°: refused, with the hint in the overlay
        centre = pts.mean(0)
        assert cal.feed(((pts - centre) @ rot.T + centre).astype(np.float32), (256, 256), t) is None
        assert cal.hint.startswith("turn your head to face the camera") and not cal.ok
    neutral = None
    for pts, t in frames[20:]:  # facing the camera: taken
        neutral = cal.feed(pts, (256, 256), t)
        if neutral is not None:
            break
    assert neutral is not None
