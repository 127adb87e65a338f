"""Profiles on disk: round trip, atomic replacement, and every corruption case gives a one-line error."""
from __future__ import annotations

import logging
import shutil
import tomllib

import numpy as np
import pytest

from avatar_engine.errors import AvatarError, ProfileError
from avatar_engine.models.base_model import DEFAULT_WEIGHTS, NeuralAvatar, NeuralConfig, save_weights
from avatar_engine.models.refine_net import RefineNetConfig
from avatar_engine.geometry.mouth_bank import MouthBank
from avatar_engine.models.mouth_net import DEFAULT_MOUTH_WEIGHTS
from calibration.profiles import (BANK_FILE, FILES, MOUTH_FILE, ProfileStore, check_name, dump_toml, file_sha256,
                                  profile_renderer_options, profile_weights)


def _fill(folder, weights=DEFAULT_WEIGHTS):
    shutil.copyfile(weights, folder / "weights.safetensors")
    np.save(folder / "neutral_landmarks.npy", np.random.default_rng(0).uniform(0, 200, (478, 3)).astype(np.float32))
    for name in ("source.png", "contact_sheet.png"):
        (folder / name).write_bytes(b"png")


META = {"created": "2026-01-01T00:00:00Z", "source": "capture", "metrics": {"after": {"psnr": 27.5}}}


@pytest.fixture
def store(tmp_path):
    s = ProfileStore(tmp_path / "profiles")
    s.write("alice", META, _fill)
    return s


def test_toml_round_trip():
    data = {"a": 1, "b": 2.5, "c": "x \"q\" \\", "d": True, "e": [1, 2], "t": {"u": {"v": float("nan"), "w": 3}}}
    back = tomllib.loads(dump_toml(data))
    assert back["a"] == 1 and back["b"] == 2.5 and back["c"] == data["c"] and back["d"] is True
    assert back["e"] == [1, 2] and back["t"]["u"]["w"] == 3 and np.isnan(back["t"]["u"]["v"])


def test_write_load_list_delete(store):
    prof = store.load("alice")
    assert prof.meta["format_version"] == 1 and prof.meta["name"] == "alice"
    assert prof.meta["weights_sha256"] == file_sha256(prof.weights)
    assert prof.meta["metrics"]["after"]["psnr"] == 27.5
    assert prof.neutral_landmarks.shape == (478, 3)
    assert sorted(p.name for p in prof.path.iterdir()) == sorted(FILES)
    assert store.names() == ["alice"]
    assert profile_weights("alice", store.root) == prof.weights
    store.delete("alice")
    assert store.names() == [] and not prof.path.exists()
    with pytest.raises(ProfileError, match="no profile 'alice'"):
        store.delete("alice")


def test_half_written_profile_never_replaces_a_good_one(store):
    good = store.load("alice").meta["weights_sha256"]

    def crash(folder):
        _fill(folder)
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.write("alice", META, crash)
    with pytest.raises(ProfileError, match="missing"):
        store.write("alice", META, lambda folder: (folder / "source.png").write_bytes(b"x"))
    assert store.load("alice").meta["weights_sha256"] == good
    assert [p.name for p in store.root.iterdir()] == ["alice"]  # no temporary folders left


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "-x", "a/b", "a" * 65, "a..b"])
def test_bad_names(name):
    with pytest.raises(ProfileError, match="bad profile name"):
        check_name(name)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_profile(store):
    with pytest.raises(ProfileError) as exc:
        store.load("bob")
    assert "profiles: alice" in _one_line(exc)


def test_missing_file(store):
    (store.path("alice") / "neutral_landmarks.npy").unlink()
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert "incomplete" in _one_line(exc)


def test_corrupt_toml(store):
    (store.path("alice") / "profile.toml").write_text("format_version = = 1\n")
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert "corrupt" in _one_line(exc)


def test_other_format_version(store):
    p = store.path("alice") / "profile.toml"
    p.write_text(p.read_text().replace("format_version = 1", "format_version = 99"))
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert "format version 99" in _one_line(exc)


def test_flipped_weight_byte(store):
    w = store.path("alice") / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert "does not match its hash" in _one_line(exc)


def test_truncated_weights_without_hash(store):
    p = store.path("alice") / "profile.toml"
    p.write_text("\n".join(line for line in p.read_text().splitlines() if not line.startswith("weights_sha256")))
    w = store.path("alice") / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert "corrupt" in _one_line(exc)


def test_weights_of_another_network(store, tmp_path):
    other = NeuralAvatar(NeuralConfig(refine=RefineNetConfig(low_channels=8)))
    path = tmp_path / "other.safetensors"
    save_weights(other, path)
    store.write("alice", META, lambda folder: _fill(folder, path))
    assert store.load("alice", check_weights=False).name == "alice"
    # a file whose tensors do not fit the config it names
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state["refine_net.stem.weight"] = state["refine_net.stem.weight"][:4]
    save_file(state, str(path), metadata=meta)
    store.write("bob", META, lambda folder: _fill(folder, path))
    with pytest.raises(ProfileError) as exc:
        store.load("bob")
    assert "does not match" in _one_line(exc)


def _write_bank(path):
    rng = np.random.default_rng(1)
    MouthBank([rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)], [rng.uniform(0, 20, (478, 2)).astype(np.float32)],
              np.array([[0.3, 0.6]]), np.array([[150.0, 80.0, 80.0]])).save(path)


@pytest.mark.parametrize("file, option, key", [(MOUTH_FILE, "mouth_weights", "mouth_sha256"),
                                               (BANK_FILE, "mouth_bank", "mouth_bank_sha256")])
def test_optional_mouth_files_are_checked_and_handed_to_the_renderer(store, file, option, key):
    def with_file(folder):
        _fill(folder)
        if file == MOUTH_FILE:
            shutil.copyfile(DEFAULT_MOUTH_WEIGHTS, folder / file)
        else:
            _write_bank(folder / file)

    assert profile_renderer_options("alice", store.root) == {"weights": store.path("alice") / "weights.safetensors"}
    prof = store.write("alice", META, with_file)
    assert prof.meta[key] == file_sha256(prof.path / file)
    assert profile_renderer_options("alice", store.root)[option] == prof.path / file
    m = prof.path / file
    data = bytearray(m.read_bytes())
    data[-3] ^= 0xFF
    m.write_bytes(bytes(data))
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert f"{file} does not match its hash" in _one_line(exc)
    m.unlink()
    with pytest.raises(ProfileError) as exc:
        store.load("alice")
    assert f"missing {file}" in _one_line(exc)
    assert profile_renderer_options("alice", store.root, live=True) == {}


def test_cli_options_mouth_net_and_profile(store):
    from argparse import Namespace

    from avatar_engine.cli.args import renderer_options

    def opts(**kw):
        base = dict(renderer="neural", mouth_net=False, profile=None, profiles_dir=store.root)
        return renderer_options(Namespace(**(base | kw)))

    assert opts() == {}
    assert opts(mouth_net=True, renderer="mesh") == {"mouth_weights": DEFAULT_MOUTH_WEIGHTS}
    weights = store.path("alice") / "weights.safetensors"
    assert opts(profile="alice") == {"weights": weights}
    assert opts(profile="alice", mouth_net=True) == {"weights": weights, "mouth_weights": DEFAULT_MOUTH_WEIGHTS}

    def with_mouth(folder):
        _fill(folder)
        shutil.copyfile(DEFAULT_MOUTH_WEIGHTS, folder / MOUTH_FILE)

    prof = store.write("alice", META, with_mouth)
    assert opts(profile="alice", mouth_net=True)["mouth_weights"] == prof.path / MOUTH_FILE  # the personalized one
    with pytest.raises(AvatarError, match="--profile needs the neural renderer"):
        opts(profile="alice", renderer="mesh")


def test_bad_neutral_landmarks(store):
    np.save(store.path("alice") / "neutral_landmarks.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(ProfileError, match="neutral landmarks"):
        store.load("alice")


def test_live_session_gets_a_warning_and_the_base_model(store, caplog):
    (store.path("alice") / "profile.toml").write_text("garbage = [\n")
    with pytest.raises(ProfileError):
        profile_weights("alice", store.root)
    with caplog.at_level(logging.WARNING, logger="avatar_engine"):
        assert profile_weights("alice", store.root, live=True) is None
    assert "using the base model" in caplog.text
