"""`avatar-engine render` end to end on real val data, the mesh renderer's quality, and bad input."""
from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from avatar_engine.cli import main
from avatar_engine.io.image import read_image, write_image
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.renderers import create_renderer
from avatar_engine.face.source import prepare_source
from avatar_engine.io.video import VideoWriter, iter_frames, probe_video

PHOTO = "images/val/P152/I036.png"
CLIP = "clips/val/P004/C018.mp4"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _has_face(rgb: np.ndarray) -> bool:
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        return det.detect(rgb) is not None


def test_render_end_to_end(data_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", "--source", str(data_dir / PHOTO), "--driving", str(data_dir / CLIP),
               "--output", str(out), "--max-frames", "40"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    info = probe_video(out)
    driving = probe_video(data_dir / CLIP)
    assert info.frames == 40
    assert info.fps == pytest.approx(driving.fps, rel=1e-3)
    assert info.has_audio == driving.has_audio
    photo = read_image(data_dir / PHOTO)
    assert (info.width, info.height) == (photo.shape[1] + photo.shape[1] % 2, photo.shape[0] + photo.shape[0] % 2)
    frames = [f for f, _ in iter_frames(out)]
    assert len(frames) == 40
    assert _has_face(frames[-1])
    # the portrait moves: frames differ from each other
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5


def test_render_console_script_and_512(data_dir, tmp_path):
    exe = shutil.which("avatar-engine")
    assert exe, "console script avatar-engine is not installed"
    out = tmp_path / "o512.mp4"
    proc = subprocess.run([exe, "render", "--source", str(data_dir / PHOTO), "--driving", str(data_dir / CLIP),
                           "--output", str(out), "--max-frames", "5", "--size", "512", "--no-paste-back"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (512, 512, 5)


def test_mesh_self_reenactment_beats_unmoved_source(data_dir, val_clips):
    """Face-crop PSNR against the ground-truth frames, mesh vs the no-motion baseline."""
    wins = []
    for clip in ("clips/val/P004/C018.mp4", "clips/val/P029/C054.mp4", "clips/val/P048/C077.mp4"):
        frames = [f for f, _ in iter_frames(data_dir / clip, max_frames=60)][::3]
        source = prepare_source(frames[0])
        scores = {}
        for name in ("source", "mesh"):
            with Reenactor(source, create_renderer(name), ReenactConfig(paste_back=False)) as r:
                r.set_neutral(r.detector.detect(frames[0], 0.0))
                psnrs = [_psnr(r.step(f, i / 8.0).crop, source.crop.crop_image(f)) for i, f in enumerate(frames[1:], 1)]
            scores[name] = float(np.mean(psnrs))
        wins.append(scores["mesh"] > scores["source"])
        print(clip, scores)
    assert all(wins)


# ---------------------------------------------------------------- bad input


def _run(capsys, *args) -> tuple[int, str]:
    rc = main(list(map(str, args)))
    err = capsys.readouterr().err
    return rc, err


def test_missing_source(data_dir, tmp_path, capsys):
    rc, err = _run(capsys, "render", "--source", tmp_path / "nope.png", "--driving", data_dir / CLIP, "--output", tmp_path / "o.mp4")
    assert rc == 2 and err.startswith("error:") and "not found" in err and "Traceback" not in err


def test_corrupt_source(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all")
    rc, err = _run(capsys, "render", "--source", bad, "--driving", data_dir / CLIP, "--output", tmp_path / "o.mp4")
    assert rc == 2 and "not a readable image" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("length", [2000, 20000])  # OpenCV warns at the first cut, libpng at the second
def test_a_truncated_photo_gives_one_line_on_the_terminal(data_dir, tmp_path, length):
    """The whole process's stderr, native writes included: OpenCV's decoder warning about the damaged
    file is dropped, the tool's own error stays."""
    bad = tmp_path / "cut.png"
    bad.write_bytes((data_dir / PHOTO).read_bytes()[:length])  # a valid header, then nothing
    proc = subprocess.run([sys.executable, "-m", "avatar_engine.cli", "render", "--source", str(bad), "--driving",
                           str(data_dir / CLIP), "--output", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: not a readable image (corrupt or unsupported format): {bad}"]


def test_source_without_face(data_dir, tmp_path, capsys):
    wall = tmp_path / "wall.png"
    write_image(wall, np.full((300, 300, 3), 128, np.uint8))
    rc, err = _run(capsys, "render", "--source", wall, "--driving", data_dir / CLIP, "--output", tmp_path / "o.mp4")
    assert rc == 2 and "no face found" in err
    assert not (tmp_path / "o.mp4").exists()


def test_several_faces_takes_the_largest(data_dir, tmp_path, caplog):
    big = read_image(data_dir / PHOTO)
    small = cv2.resize(big, (128, 128))
    canvas = np.full((300, 460, 3), 255, np.uint8)
    canvas[20:276, 10:266] = big
    canvas[80:208, 320:448] = small
    source = prepare_source(canvas)
    assert source.faces_found == 2
    assert source.crop.center_x < 266  # the big face, on the left


def test_corrupt_driving(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    rc, err = _run(capsys, "render", "--source", data_dir / PHOTO, "--driving", bad, "--output", tmp_path / "o.mp4")
    assert rc == 2 and err.startswith("error:") and "Traceback" not in err


def test_driving_with_no_face_stretch(data_dir, tmp_path, capsys, caplog):
    """Grey frames in the middle: the render completes with every frame, the count is reported, and the
    avatar holds its last pose at the start of the gap instead of jumping."""
    clip = tmp_path / "gap.mp4"
    frames = [f for f, _ in iter_frames(data_dir / CLIP, max_frames=30)]
    with VideoWriter(clip, 25.0, (256, 256)) as w:
        for i, f in enumerate(frames):
            w.write(np.full_like(f, 120) if 10 <= i < 25 else f)
    out = tmp_path / "o.mp4"
    with caplog.at_level("WARNING", logger="avatar_engine"):
        rc, _ = _run(capsys, "render", "--source", data_dir / PHOTO, "--driving", clip, "--output", out,
                     "--renderer", "mesh")
    assert rc == 0
    assert "no face in 15 of 30 driving frames" in caplog.text
    got = [f.astype(np.int16) for f, _ in iter_frames(out)]
    assert len(got) == 30
    # within the hold (0.5 s = 12 frames at 25 fps) the output is the last driven frame (up to coding noise)
    held = [np.abs(got[i] - got[9]).mean() for i in range(10, 20)]
    assert max(held) < 1.0, held


def test_no_face_holds_the_pose_then_eases_to_neutral(data_dir):
    """Reenactor level: with no face, the target is held for ``hold_s``, then moves monotonically to the
    source's neutral landmarks, and is there (within a pixel) after a few ``ease_out_s``."""
    frames = [f for f, _ in iter_frames(data_dir / CLIP, max_frames=12)]
    source = prepare_source(read_image(data_dir / PHOTO))
    cfg = ReenactConfig(paste_back=False, hold_s=0.5, ease_out_s=0.5)
    fps = 25.0
    grey = np.full_like(frames[0], 120)
    with Reenactor(source, create_renderer("mesh"), cfg) as r:
        r.set_neutral(r.detector.detect(frames[0], 0.0))
        r.config.retarget.expression_scale = 2.0  # a clearly non-neutral last pose
        for i, f in enumerate(frames[1:], 1):
            last = r.step(f, i / fps)
        assert last.face_found
        neutral = r.render_source.landmarks
        start = np.abs(last.target - neutral).mean()
        assert start > 0.3  # the driven pose is not the neutral one
        t_last = (len(frames) - 1) / fps
        dists = []
        for k in range(1, 60):
            t = t_last + k / fps
            res = r.step(grey, t)
            assert not res.face_found
            if t - t_last <= cfg.hold_s:
                np.testing.assert_allclose(res.target, last.target, atol=1e-5)
            else:
                dists.append(np.abs(res.target - neutral).mean())
    assert all(b <= a + 1e-6 for a, b in zip(dists, dists[1:]))  # monotone approach
    assert dists[0] < start and dists[-1] < 0.05 * start


def test_driving_without_any_face(data_dir, tmp_path, capsys):
    clip = tmp_path / "grey.mp4"
    with VideoWriter(clip, 25.0, (128, 128)) as w:
        for _ in range(8):
            w.write(np.full((128, 128, 3), 90, np.uint8))
    out = tmp_path / "o.mp4"
    rc, err = _run(capsys, "render", "--source", data_dir / PHOTO, "--driving", clip, "--output", out)
    assert rc == 2 and "no face found in any frame" in err
    assert not out.exists()


def test_help_lists_every_command_and_its_shared_options():
    proc = subprocess.run([sys.executable, "-m", "avatar_engine.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for command in ("render", "start", "serve", "eval", "prepare", "train", "doctor"):
        assert f"    {command} " in proc.stdout
    for command in ("render", "start", "serve"):
        sub = subprocess.run([sys.executable, "-m", "avatar_engine.cli", command, "--help"], capture_output=True,
                             text=True, timeout=60)
        assert sub.returncode == 0
        for option in ("--source", "--renderer", "--size", "--device", "--threads", "--no-paste-back",
                       "--expression-scale"):
            assert option in sub.stdout, (command, option)
        assert "(default: neural:" in " ".join(sub.stdout.split())
