"""`avatar-engine eval` end to end on real val clips: report files, rerun identity, failures, bad options."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math

import numpy as np
import pytest

from avatar_engine.cli import main
from avatar_engine.eval import EvalConfig, run_evaluation
from avatar_engine.data.corpus import load_dataset
from avatar_engine.errors import AvatarError
from avatar_engine.io.image import read_image
from avatar_engine.io.video import VideoWriter
from avatar_engine.pipeline.render_job import RenderJobConfig, choose_neutral

CLIPS = ["C018", "C054"]  # 256x256 MEAD (P004) and 224x224 VoxCeleb (P029)
FRAMES = 8


def _eval_args(data_dir, out) -> list[str]:
    return ["eval", "--data", str(data_dir), "--split", "val", "--renderer", "source", "mesh",
            "--output", str(out), "--max-frames-per-clip", str(FRAMES), "--clips", *CLIPS,
            "--images", "I036", "--cross-drivers", "1", "--identity-every", "4"]


@pytest.fixture(scope="module")
def two_runs(data_dir, tmp_path_factory):
    """The same report, run twice into two folders: (json paths, console output of the first run)."""
    outs, printed = [], []
    for k in range(2):
        out = tmp_path_factory.mktemp(f"run{k}") / "val.json"
        console = io.StringIO()
        with contextlib.redirect_stdout(console):
            assert main(_eval_args(data_dir, out)) == 0
        outs.append(out)
        printed.append(console.getvalue())
    return outs, printed[0]


def test_report_on_two_val_clips(two_runs):
    out = two_runs[0][0]
    report = json.loads(out.read_text())
    selfr = report["self_reenactment"]
    assert [c["clip"] for c in selfr["clips"]] == CLIPS
    assert selfr["frames_evaluated"] == 2 * FRAMES
    assert report["failures"] == []
    assert report["config"]["renderers"] == ["source", "mesh"]
    for clip in selfr["clips"]:
        assert clip["frames"] == FRAMES and clip["source_frame"] == 0
        src, mesh = clip["metrics"]["source"], clip["metrics"]["mesh"]
        # the no-motion baseline: its own crop, never changes
        assert src["identity_source"] == 0.0 and src["flicker"] == 0.0 and src["flicker_ratio"] == 0.0
        assert src["output_no_face"] == 0.0 and mesh["output_no_face"] == 0.0
        for m in (src, mesh):
            assert 15.0 < m["psnr"] < 45.0 and 0.5 < m["ssim"] <= 1.0
            assert 0.0 <= m["identity_gt"] < 0.6 and m["same_person_gt"] == 1.0
            assert m["flicker_gt"] > 0.0
        # the mesh renderer follows the clip's head pose and expression better than a still frame
        assert mesh["expression_error"] < src["expression_error"]
        assert mesh["yaw_error"] + mesh["pitch_error"] + mesh["roll_error"] < \
            src["yaw_error"] + src["pitch_error"] + src["roll_error"]
    agg = selfr["aggregate"]
    assert set(agg) == {"source", "mesh"}
    assert agg["mesh"]["psnr"] == pytest.approx(np.mean([c["metrics"]["mesh"]["psnr"] for c in selfr["clips"]]),
                                                abs=1e-4)
    cross = report["cross_reenactment"]
    assert [p["pair"] for p in cross["pairs"]] == ["I036/C018"]  # first clip of the first identity (P004)
    pair = cross["pairs"][0]
    assert pair["frames"] == FRAMES and pair["driver_identity"] == "P004"
    assert pair["metrics"]["source"]["identity_source"] == 0.0
    assert pair["metrics"]["mesh"]["identity_source"] < 0.6
    # motion transfer: the still photo is frozen, the mesh follows the mouth
    for clip in selfr["clips"]:
        src, mesh = clip["metrics"]["source"], clip["metrics"]["mesh"]
        assert src["mouth_open_ratio"] == 0.0 and src["mouth_open_corr"] is None
        assert mesh["mouth_open_corr"] > 0.8 and mesh["mouth_open_ratio"] > 0.5
        assert clip["teeth_frames"] >= 0 and clip["closed_eye_frames"] >= 0
    assert agg["mesh"]["mouth_open_corr"] > 0.8 and agg["source"]["mouth_open_ratio"] == 0.0
    assert pair["metrics"]["mesh"]["mouth_open_corr"] > 0.8
    # markdown: renderers side by side; contact sheet: 2 clips x (3 rows + 3 moments) + 1 pair x (3 + 3)
    md = out.with_suffix(".md").read_text()
    assert "| metric | source | mesh |" in md and "## Cross-reenactment" in md
    assert "## Motion transfer, self-reenactment" in md and "| mouth opening (inner lips) | – / 0.00 |" in md
    sheet = read_image(out.with_suffix(".png"))
    assert sheet.shape[0] == 18 * 96 + 2 * 6 and sheet.shape[1] == 200 + 6 * 96
    printed = two_runs[1]
    assert "mesh: self: PSNR" in printed and "wrote" in printed


def test_cross_reenactment_takes_the_neutral_render_takes(data_dir):
    """Cross-reenactment drives the photo from the neutral `render` would choose for that driver (its
    first face frame with --cross-neutral first), and the choice changes what the avatar does."""
    clip = data_dir / "clips/val/P004/C018.mp4"
    expected = choose_neutral(RenderJobConfig(clip, clip, clip, progress=False)).index
    pairs = {}
    for mode in ("chosen", "first"):
        result = run_evaluation(EvalConfig(data=data_dir, renderers=("mesh",), self_reenactment=False,
                                           max_frames_per_clip=4, image_ids=("I036",), cross_drivers=1,
                                           identity_every=100, cross_neutral=mode))
        (report,) = result.cross_reports
        pairs[mode] = report
    assert pairs["chosen"].info["neutral_frame"] == expected and expected > 0  # C018 opens its mouth at frame 0
    assert pairs["first"].info["neutral_frame"] is None
    assert pairs["chosen"].metrics["mesh"]["expression_error"] != pairs["first"].metrics["mesh"]["expression_error"]


def test_lip_zero_closes_a_grinning_photos_lips_with_the_driver(data_dir):
    """A photo smiling with its lips apart (I070) driven by a driver whose lips are closed (C054, frames
    6-9): with the default lip zero the output's lips close on the driver's closed-lip frames, with
    --keep-photo-mouth they stay apart (closed-lips score)."""
    scores = {}
    for zero in (True, False):
        config = EvalConfig(data=data_dir, renderers=("mesh",), self_reenactment=False, max_frames_per_clip=10,
                            image_ids=("I070",), cross_drivers=2, identity_every=100, lip_zero=zero)
        assert config.describe()["lip_zero"] is zero
        report = next(r for r in run_evaluation(config).cross_reports if r.info["driver"] == "C054")
        assert report.info["closed_lip_frames"] > 0
        scores[zero] = report.metrics["mesh"]["lips_closed_score"]
    assert scores[True] >= 0.25 and scores[False] == 0.0, scores


def test_rerun_is_identical(two_runs):
    a, b = two_runs[0]
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".md").read_text() == b.with_suffix(".md").read_text()


def test_partial_report_after_every_clip(data_dir, tmp_path, monkeypatch):
    """The JSON is rewritten (atomically, marked incomplete) after each finished item: a killed run keeps them."""
    import avatar_engine.eval as ev

    seen, write = [], ev.write_report

    def recording(result, output, partial=False):
        paths = write(result, output, partial)
        seen.append(json.loads(paths.json.read_text()))  # valid JSON at every step
        return paths

    monkeypatch.setattr(ev, "write_report", recording)
    out = tmp_path / "partial.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", "--data", str(data_dir), "--renderer", "mesh", "--output", str(out), "--no-cross",
                     "--max-frames-per-clip", "3", "--identity-every", "10", "--clips", *CLIPS]) == 0
    assert [(r["complete"], [c["clip"] for c in r["self_reenactment"]["clips"]]) for r in seen] == \
        [(False, CLIPS[:1]), (False, CLIPS), (True, CLIPS)]
    assert seen[0]["failures"] == [] and seen[0]["self_reenactment"]["clips"][0]["frames"] == 3
    assert json.loads(out.read_text()) == seen[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.json", "partial.md", "partial.png"]


def test_failures_are_reported_not_silent(data_dir, tmp_path, caplog):
    """A missing clip and a clip without a face are excluded with their reason; the rest is scored."""
    noface = tmp_path / "noface.mp4"
    with VideoWriter(noface, 25, (128, 128)) as w:
        for i in range(6):
            w.write(np.full((128, 128, 3), 40 * i, np.uint8))
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["clip_id", "split", "identity", "path"])
        wr.writerow(["A1", "val", "X1", str(data_dir / "clips/val/P004/C018.mp4")])
        wr.writerow(["A2", "val", "X2", "missing/clip.mp4"])
        wr.writerow(["A3", "val", "X3", "noface.mp4"])
        wr.writerow(["B1", "train", "X4", "missing/other_split.mp4"])
    ds = load_dataset(tmp_path, "val")
    assert [c.clip_id for c in ds.clips] == ["A1", "A2", "A3"] and ds.images == ()
    with caplog.at_level(logging.INFO, logger="avatar_engine"):
        result = run_evaluation(EvalConfig(data=tmp_path, renderers=("source",), max_frames_per_clip=3,
                                           identity_every=3))
    # without a progress bar (stderr not a terminal), one log line per item
    assert "eval: 1/3 self A1" in caplog.text and "eval: 3/3 self A3" in caplog.text
    assert [r.item for r in result.self_reports] == ["A1"]
    reasons = {f.item: f.reason for f in result.failures}
    assert set(reasons) == {"A2", "A3"}
    assert "not found" in reasons["A2"] or "missing" in reasons["A2"]
    assert "no face" in reasons["A3"]
    assert not math.isnan(result.self_reports[0].metrics["source"]["psnr"])


def test_bad_options(data_dir, tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path), "--output", str(tmp_path / "r.json")]) == 2
    assert "clips.csv" in capsys.readouterr().err
    assert main(["eval", "--data", str(data_dir), "--renderer", "nope", "--output", str(tmp_path / "r.json")]) == 2
    assert "unknown renderer" in capsys.readouterr().err
    assert main(["eval", "--data", str(data_dir), "--clips", "C999", "--output", str(tmp_path / "r.json")]) == 2
    assert "C999" in capsys.readouterr().err
    with pytest.raises(AvatarError):
        EvalConfig(data=data_dir, max_frames_per_clip=1)
    with pytest.raises(AvatarError, match="nothing to evaluate"):
        run_evaluation(EvalConfig(data=data_dir, self_reenactment=False, cross=False))
    assert EvalConfig(data=data_dir, face_layers=False).describe()["face_layers"] is False
    with pytest.raises(AvatarError, match="cross_neutral"):
        EvalConfig(data=data_dir, cross_neutral="middle")
    assert not (tmp_path / "r.json").exists()
