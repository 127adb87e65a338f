"""SR training machinery on a tiny real prepared cache: degraded windows, resume, inflation, DDP, CLI."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from avatar_engine.cli import main as cli_main
from avatar_engine.cli.main import _join_compound
from avatar_engine.data.prepare import PrepareConfig, load_prepared, prepare_dataset
from avatar_engine.data.degrade import DegradeConfig
from avatar_engine.models.sr_net import SRConfig
from avatar_engine.training.sr import SRTrainConfig, SRWindowDataset, train_sr
from avatar_engine.pipeline.super_resolution import load_sr_net

from conftest import free_port

TINY = SRConfig(frames=4, channels=(8, 12, 16), body_convs=2)


@pytest.fixture(scope="module")
def sr_cache(data_dir: Path, tmp_path_factory) -> Path:
    """Val clip C077 (512 px video) prepared at 256 and 512, 12 frames, copied in as split ``train`` too."""
    cache = tmp_path_factory.mktemp("sr_cache")
    prepare_dataset(PrepareConfig(data=data_dir, cache=cache, splits=("val",), sizes=(256, 512), segment_frames=6,
                                  identity_every=0, max_frames_per_clip=12, clip_ids=("C077",)))
    shutil.copytree(cache / "val", cache / "train")
    return cache


def _config(cache: Path, run: Path, **kw) -> SRTrainConfig:
    base = dict(model=TINY, cache=cache, inputs=cache / "no_inputs", run_dir=run, steps=2, batch=2, patch=32,
                render_fraction=0.0, min_source_side=0.0, save_every=1, progress=False)
    return SRTrainConfig(**{**base, **kw})


def test_degraded_windows_keep_targets_and_change_inputs_per_frame(sr_cache: Path) -> None:
    c256, c512 = load_prepared(sr_cache, "val", 256), load_prepared(sr_cache, "val", 512)
    clean = SRWindowDataset(c256, c512, 5, 32, seed=3)
    noisy = SRWindowDataset(c256, c512, 5, 32, seed=3, degrade=DegradeConfig(
        probability=1.0, noise_sigma=(6.0, 6.0), jpeg_probability=1.0, jpeg_quality=(40, 40)))
    for item in range(3):
        a, b = clean[item], noisy[item]
        assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["flow"], b["flow"])
        diff = b["inp"] - a["inp"]  # (3, 5, 32, 32)
        assert 0.005 < float(diff.abs().mean()) < 0.05
        assert float((diff[:, 1:] - diff[:, :-1]).abs().mean()) > 0.005  # not the same noise on every frame


def test_train_sr_resumes_and_inflates(sr_cache: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    first = train_sr(_config(sr_cache, run, stage="2d", steps=2))
    assert first.steps == 2 and first.weights.is_file()
    resumed = train_sr(_config(sr_cache, run, stage="2d", steps=3))  # continues from last_2d.pt
    assert resumed.steps == 3
    assert int(torch.load(run / "last_2d.pt", weights_only=True)["step"]) == 3
    net2d = load_sr_net(resumed.weights)
    assert net2d.frames == 1
    temporal = train_sr(_config(sr_cache, run, stage="3d", steps=1, init=resumed.weights))
    net3d = load_sr_net(temporal.weights)
    assert net3d.frames == TINY.frames and temporal.flops_per_frame > 0


def _ddp_worker(rank: int, world: int, port: int, cache: str, run: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train_sr(_config(Path(cache), Path(run), stage="2d", steps=2))
    assert not torch.distributed.is_initialized()  # train_sr left the process group


def test_train_sr_under_ddp_world_size_two(sr_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(sr_cache), str(run)), nprocs=2, join=True)
    assert int(torch.load(run / "last_2d.pt", weights_only=True)["step"]) == 2
    assert load_sr_net(run / "sr_2d.safetensors").frames == 1


def test_cli_train_sr_spelt_as_in_the_issue(sr_cache: Path, tmp_path: Path, capsys) -> None:
    assert _join_compound(["-v", "train", "sr", "--stage", "2d"]) == ["-v", "train-sr", "--stage", "2d"]
    assert _join_compound(["train", "--config", "x"]) == ["train", "--config", "x"]
    config = tmp_path / "tiny.toml"
    model = dataclasses.asdict(TINY)
    config.write_text("[model]\n" + "".join(f"{k} = {list(v) if isinstance(v, tuple) else v}\n"
                                            for k, v in model.items())
                      + "[train]\nsteps = 1\nbatch = 1\npatch = 32\nrender_fraction = 0.0\nmin_source_side = 0.0\n")
    run = tmp_path / "cli_run"
    rc = cli_main(["train", "sr", "--config", str(config), "--stage", "2d", "--cache", str(sr_cache),
                   "--run-dir", str(run), "--threads", "1"])
    assert rc == 0 and (run / "sr_2d.safetensors").is_file()
    assert cli_main(["train", "sr", "--config", str(tmp_path / "missing.toml"), "--stage", "2d"]) == 2
    assert "SR config not found" in capsys.readouterr().err
    assert np.isfinite(load_sr_net(run / "sr_2d.safetensors").tail.bias.detach().numpy()).all()
