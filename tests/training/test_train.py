"""Training: one step on real val frames lowers the loss; checkpoints resume; DDP with world size 2 (gloo, CPU)."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from avatar_engine.face.identity import IdentityEncoder
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.training.ddp import DistInfo
from avatar_engine.training.step import StepOptions
from avatar_engine.training.trainer import LossConfig, _Trainer, load_train_config, train
from avatar_engine.io.video import iter_frames
from avatar_engine.geometry.mesh_warp import MeshWarp

from conftest import REPO, free_port


def _config(**kw):
    cfg = load_train_config(REPO / "configs/neural_lite.toml")
    return dataclasses.replace(cfg, **{"step": StepOptions(compile=False), "drivings": 1, **kw})


def test_one_step_on_two_val_frames_lowers_the_loss(data_dir, tmp_path):
    frames = [f for f, _ in iter_frames(data_dir / "clips/val/P004/C018.mp4", max_frames=16)]
    src = prepare_source(frames[0], SourceConfig(size=256))
    drv = prepare_source(frames[15], SourceConfig(size=256))
    target = src.crop.to_crop(drv.crop.to_image(drv.landmarks)).astype(np.float32)
    cfg = _config(warp_steps=0, loss=LossConfig(gan=0.0, feature_matching=0.0))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e-3))
    mesh = MeshWarp(src.landmarks, 256, cfg.model.mesh_warp_config())
    tgt = torch.from_numpy(target)[None]
    batch = {"source": torch.from_numpy(src.crop_image).permute(2, 0, 1)[None],
             "driving": torch.from_numpy(src.crop.crop_image(frames[15])).permute(2, 0, 1)[None],
             "source_points": torch.from_numpy(src.landmarks)[None], "driving_points": tgt,
             "z_id": torch.from_numpy(IdentityEncoder().embed(src.crop_image, src.landmarks))[None],
             "mesh_grid": mesh.grid(tgt).contiguous()}
    trainer = _Trainer(cfg, tmp_path, tmp_path, DistInfo(0, 1, 0, torch.device("cpu")), False)
    before = trainer.train_step(batch)["loss"]
    after = trainer.train_step(batch)["loss"]
    assert np.isfinite(before) and after < before


@pytest.fixture(scope="module")
def tiny_cache(c018_cache):
    return c018_cache


def _ddp_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = _config(steps=3, warp_steps=1, batch_size=1, num_workers=0, val_every=1000, val_pairs=2,
                  checkpoint_every=1000, log_every=1)
    report = train(cfg, cache, out, device="cpu")
    torch.save(torch.tensor(report.fingerprint, dtype=torch.float64), os.path.join(out, f"fingerprint_{rank}.pt"))


def test_ddp_world_size_two_and_resume(tiny_cache, tmp_path):
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tiny_cache), str(out)), nprocs=2, join=True)
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log if r["kind"] == "train")
    last = [r for r in log if r["kind"] == "train"][-1]
    assert "out_l1" in last and "d_loss" in last  # the joint stage (refine + GAN) ran
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    # DDP kept the two replicas identical (and they moved away from the initialisation)
    f0, f1 = (float(torch.load(out / f"fingerprint_{r}.pt", weights_only=True)) for r in (0, 1))
    assert f0 == f1
    # resume single-process: continues at step 3, does one step
    report = train(_config(steps=4, warp_steps=1, batch_size=1, num_workers=0, val_every=4, val_pairs=2,
                           log_every=1), tiny_cache, out, device="cpu")
    assert report.steps == 4 and report.steps_this_run == 1
    assert (out / "samples" / "step_000004.png").is_file()


def test_weight_average_is_kept_resumed_scored_and_exported(tiny_cache, tmp_path):
    from safetensors import safe_open
    from avatar_engine.training.trainer import export_weights

    out = tmp_path / "run"
    decay = 0.5
    kw = dict(warp_steps=0, batch_size=1, num_workers=0, val_pairs=2, val_images=1, log_every=1, ema=decay,
              loss=LossConfig(gan=0.0, feature_matching=0.0))
    train(_config(steps=2, val_every=1000, checkpoint_every=1000, **kw), tiny_cache, out, device="cpu")
    first = torch.load(out / "checkpoint.pt", weights_only=True)
    name = next(k for k in first["model"] if k.endswith("head2.weight"))
    w2, a2 = first["model"][name], first["ema"][f"module.{name}"]
    assert int(first["ema"]["n_averaged"]) == 2
    assert not torch.equal(a2, w2)  # an average, not a copy of the last weights
    # resume: the average continues from the checkpoint's (one more EMA step towards the new weights)
    train(_config(steps=3, val_every=3, checkpoint_every=1000, **kw), tiny_cache, out, device="cpu")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    w3, a3 = state["model"][name], state["ema"][f"module.{name}"]
    torch.testing.assert_close(a3, decay * a2 + (1 - decay) * w3)
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    val = [r for r in log if r["kind"] == "val"][-1]
    assert "ema_out_psnr" in val and "out_psnr" in val and val["ema_out_psnr"] != val["out_psnr"]
    assert (out / "samples" / "step_000003_ema.png").is_file()
    # export writes the average (fp16), or the trained weights when asked
    for average, expected, tag in ((True, a3, "ema"), (False, w3, "trained")):
        path = tmp_path / f"{tag}.safetensors"
        export_weights(out / "checkpoint.pt", path, average=average)
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["weights"] == tag
            torch.testing.assert_close(f.get_tensor(name).float(), expected.float(), atol=1e-3, rtol=1e-3)
