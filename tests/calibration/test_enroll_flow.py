"""The whole flow on a short val clip: enroll --video, profile written, render --profile uses it, delete."""
from __future__ import annotations

import tomllib

import numpy as np
import pytest

import avatar_engine.pipeline.render_job as render_job
from avatar_engine.cli.main import main
from avatar_engine.io.image import read_image
from avatar_engine.io.video import probe_video


@pytest.fixture(scope="module")
def enrolled(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    clip = data_dir / "clips" / "val" / "P004" / "C018.mp4"
    photo = data_dir / "images" / "val" / "P029" / "I023.jpg"
    rc = main(["enroll", "--name", "ann", "--video", str(clip), "--seconds", "3", "--steps", "2", "--mouth-steps", "3",
               "--source", str(photo), "--profiles-dir", str(root), "--threads", "1"])
    assert rc == 0
    return root, clip, photo


def _spy_renderer_factory(monkeypatch, module) -> dict:
    """Wrap ``module.create_renderer`` (the real factory still builds the renderer); returns what it got."""
    seen = {}
    real = module.create_renderer

    def spy(name, device="cpu", **kw):
        seen.update(kw, name=name)
        return real(name, device, **kw)

    monkeypatch.setattr(module, "create_renderer", spy)
    return seen


def test_profile_written(enrolled, capsys):
    root, _, photo = enrolled
    folder = root / "ann"
    assert np.array_equal(read_image(folder / "source.png"), read_image(photo))  # --source: the photo shown
    meta = tomllib.loads((folder / "profile.toml").read_text())
    assert meta["format_version"] == 1 and meta["capture"] == "video C018.mp4"
    assert meta["adapt"]["steps"] == 2 and meta["adapt"]["frames_held_back"] > 0
    for when in ("before", "after"):
        assert {"psnr", "mouth_l1", "identity_distance", "heldout_loss"} <= set(meta["metrics"][when])
    assert meta["mouth"]["steps"] == 3 and meta["mouth"]["held_back_mouth_l1"]["after"] > 0
    bank = meta["mouth_bank"]  # C018 opens the mouth wide: her own interiors are kept
    assert bank["exemplars"] >= 2 and bank["held_back"]["frames"] > 0
    assert bank["held_back"]["mouth_l1_bank"] > 0 and bank["held_back"]["mouth_l1_procedural"] > 0
    assert 0 <= bank["held_back"]["teeth_match_bank"] <= 1
    assert meta["mouth_bank_sha256"] and meta["mouth_sha256"]
    assert {p.name for p in folder.iterdir()} == {"profile.toml", "weights.safetensors", "mouth.safetensors",
                                                 "mouth_bank.safetensors", "neutral_landmarks.npy", "source.png",
                                                 "contact_sheet.png"}
    assert main(["profiles", "list", "--profiles-dir", str(root)]) == 0
    assert "ann" in capsys.readouterr().out


def test_render_uses_the_profile(enrolled, tmp_path, monkeypatch):
    root, clip, _ = enrolled
    seen = _spy_renderer_factory(monkeypatch, render_job)
    out = tmp_path / "out.mp4"
    rc = main(["render", "--source", str(root / "ann" / "source.png"), "--driving", str(clip), "--output", str(out),
               "--max-frames", "3", "--no-audio", "--profile", "ann", "--profiles-dir", str(root)])
    assert rc == 0 and probe_video(out).frames == 3
    assert seen["name"] == "neural" and seen["weights"] == root / "ann" / "weights.safetensors"
    assert seen["mouth_weights"] == root / "ann" / "mouth.safetensors"
    assert seen["mouth_bank"] == root / "ann" / "mouth_bank.safetensors"


def test_start_uses_the_profile(enrolled, tmp_path, monkeypatch):
    import runtime.engine as engine

    root, clip, _ = enrolled
    seen = _spy_renderer_factory(monkeypatch, engine)
    out = tmp_path / "live.mp4"
    rc = main(["start", "--source", str(root / "ann" / "source.png"), "--camera", str(clip), "--no-realtime",
               "--no-preview", "--no-virtual-camera", "--no-calibrate", "--max-frames", "3", "--output", str(out),
               "--profile", "ann", "--profiles-dir", str(root)])
    assert rc == 0 and out.is_file()
    assert seen["name"] == "neural" and seen["weights"] == root / "ann" / "weights.safetensors"


def test_profile_errors_are_one_line(enrolled, tmp_path, capsys):
    root, clip, _ = enrolled
    args = ["render", "--source", str(root / "ann" / "source.png"), "--driving", str(clip), "--output",
            str(tmp_path / "o.mp4"), "--max-frames", "1", "--profiles-dir", str(root)]
    assert main([*args, "--profile", "nobody"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no profile 'nobody'") and "\n" not in err
    assert main([*args, "--profile", "ann", "--renderer", "mesh"]) == 2
    assert "needs the neural renderer" in capsys.readouterr().err
    assert main(["start", "--source", str(root / "ann" / "source.png"), "--camera", str(clip), "--profile", "nobody",
                 "--profiles-dir", str(root), "--no-preview", "--no-virtual-camera", "--max-frames", "1"]) == 2
    assert "no profile 'nobody'" in capsys.readouterr().err


def test_enroll_bad_name_and_missing_video(tmp_path, capsys):
    assert main(["enroll", "--name", "../x", "--video", "nope.mp4", "--profiles-dir", str(tmp_path)]) == 2
    assert "bad profile name" in capsys.readouterr().err
    assert main(["enroll", "--name", "x", "--video", str(tmp_path / "nope.mp4"), "--profiles-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "x").exists()


def test_delete(enrolled, capsys):
    root, _, _ = enrolled
    assert main(["profiles", "show", "ann", "--profiles-dir", str(root)]) == 0
    assert "metrics.after" in capsys.readouterr().out
    assert main(["profiles", "delete", "ann", "--profiles-dir", str(root)]) == 0
    assert not (root / "ann").exists()
    assert main(["profiles", "show", "ann", "--profiles-dir", str(root)]) == 2
