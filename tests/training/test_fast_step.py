"""The fast training path: batched data equals the per-pair data, the fast step computes the plain step's
losses on a fixed batch, a run interrupted mid-way resumes to the same weights, atomic checkpoints."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from avatar_engine.data.prepare import PairConfig, PairDataset, load_prepared
from avatar_engine.geometry.mesh_warp import MeshWarp
from avatar_engine.models.base_model import NeuralAvatar
from avatar_engine.training import step as step_mod
from avatar_engine.training.batches import BatchConfig, PairBatches, to_device
from avatar_engine.training.core import Checkpoint
from avatar_engine.training.step import LossConfig, StepOptions, build_step
from avatar_engine.training.trainer import load_train_config, train

from conftest import REPO


@pytest.fixture(scope="module")
def cache(c018_cache):
    return c018_cache


def _config(**kw):
    cfg = load_train_config(REPO / "configs/neural_lite.toml")
    return dataclasses.replace(cfg, **{"step": StepOptions(compile=False), "drivings": 1, **kw})


def _plain_batch(batches: PairBatches, index: int, cfg) -> dict[str, torch.Tensor]:
    """Batch ``index`` of ``batches`` rebuilt the plain way: one MeshWarp and one grid per pair, no
    precomputed connectivity images (the per-pair path of the trainer before the fast one)."""
    items = []
    for ci, src, drv in batches.draw(index):
        clip = batches.pairs.clips[ci]
        for d in drv:
            d_pts = torch.from_numpy(np.array(clip.landmarks[d]))
            mesh = MeshWarp(np.asarray(clip.landmarks[src]), cfg.model.size, cfg.model.mesh_warp_config())
            items.append({"source": torch.from_numpy(np.array(clip.frames[src])).permute(2, 0, 1),
                          "driving": torch.from_numpy(np.array(clip.frames[d])).permute(2, 0, 1),
                          "source_points": torch.from_numpy(np.array(clip.landmarks[src])),
                          "driving_points": d_pts, "z_id": torch.from_numpy(np.array(clip.identity[src])),
                          "mesh_grid": mesh.grid(d_pts[None])[0].contiguous()})
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_batches_are_deterministic_and_match_the_per_pair_path(cache):
    cfg = _config()
    clips = load_prepared(cache, "train")
    a = PairBatches(clips, cfg.model, BatchConfig(groups=2, drivings=3, seed=5))
    b = PairBatches(clips, cfg.model, BatchConfig(groups=2, drivings=3, seed=5))
    x, y = a[7], b[7]
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    assert x["source"].shape == (6, 3, 256, 256) and x["source"].dtype == torch.uint8
    assert x["mesh_planes"].shape == (6, 2, cfg.model.mesh_flow_size, cfg.model.mesh_flow_size)
    assert not torch.equal(a[8]["driving"], x["driving"])
    fast = to_device(x, "cpu", cfg.model)
    plain = to_device(_plain_batch(a, 7, cfg), "cpu", cfg.model)
    for k in ("source", "driving", "source_points", "driving_points", "z_id", "mesh_grid", "source_lines",
              "driving_lines"):
        assert torch.equal(fast[k], plain[k]), k
    # every pair of a group shares its source; drivings are frames of the source's segment
    for ci, src, drv in a.draw(7):
        seg = a.pairs.clips[ci].segment
        assert all(seg[d] == seg[src] and d != src for d in drv)


INDUCTOR = pytest.mark.skipif(
    os.environ.get("AVATAR_INDUCTOR_TESTS") != "1",
    reason="Inductor compiles this step for ~1.5 min on a cold 2-core CPU; AVATAR_INDUCTOR_TESTS=1 runs it")


@pytest.mark.parametrize("compiled", [None, "aot_eager", pytest.param("inductor", marks=INDUCTOR)])
def test_fast_step_computes_the_plain_losses_on_a_fixed_batch(cache, compiled):
    """``compiled``: the ``torch.compile`` backend of the fast step (None: not compiled). ``aot_eager`` runs
    the captured forward/backward graphs that Inductor would compile (graph capture, functionalisation,
    the split into two compiled regions); ``inductor`` is the shipped training path."""
    torch.set_num_threads(1)
    cfg = _config()
    batches = PairBatches(load_prepared(cache, "train"), cfg.model, BatchConfig(groups=2, drivings=2))
    torch.manual_seed(0)
    plain_model = NeuralAvatar(cfg.model)
    with torch.no_grad():  # move off the zero-initialised heads so the refined image differs from the warp
        for p in plain_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    fast_model = NeuralAvatar(cfg.model)
    fast_model.load_state_dict(plain_model.state_dict())
    loss = LossConfig(gan=0.0, feature_matching=0.0)
    plain = build_step(plain_model, loss, cfg.optim, None, StepOptions.plain())
    fast = build_step(fast_model, loss, cfg.optim, None,
                      StepOptions(compile=compiled is not None, compile_backend=compiled or "inductor"))
    # step 0: the same weights and batch give the same losses; step 1 also checks that the optimiser
    # updates agree (looser: Adam's normalised update magnifies float differences of tiny gradients)
    head = [fast_model.refine_net.head2.weight.detach().clone(), fast_model.warp_net.head.weight.detach().clone()]
    for k, rel in ((0, 1e-4), (1, 2e-2)):
        p = plain(to_device(_plain_batch(batches, k, cfg), "cpu", cfg.model), full=True)
        f = fast(to_device(batches[k], "cpu", cfg.model, channels_last=True), full=True)
        assert set(p) == set(f) == {"warp_l1", "warp_ssim", "warp_region", "out_l1", "out_ssim", "out_region", "loss"}
        for name in p:
            assert f[name] == pytest.approx(p[name], rel=rel, abs=1e-6), (k, name)
        if k == 0:  # both networks got gradients (and moved like the plain step's)
            for before, after, ref in zip(head, (fast_model.refine_net.head2.weight, fast_model.warp_net.head.weight),
                                          (plain_model.refine_net.head2.weight, plain_model.warp_net.head.weight)):
                assert not torch.equal(before, after)
                torch.testing.assert_close(after.detach() - before, ref.detach() - before, rtol=0.05, atol=1e-6)
    if compiled:
        assert fast._compiled  # it did not fall back to eager


def test_interrupted_run_resumes_to_the_same_weights(cache, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = _config(steps=4, warp_steps=1, batch_size=2, drivings=2, num_workers=0, val_every=1000, val_pairs=2,
                  checkpoint_every=1, log_every=1, loss=LossConfig(gan=0.0, feature_matching=0.0))
    straight = train(cfg, cache, tmp_path / "straight", device="cpu")
    calls = {"n": 0}
    real_call = step_mod.ModelStep.__call__

    def crash_on_third(self, batch, full):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_call(self, batch, full)

    monkeypatch.setattr(step_mod.ModelStep, "__call__", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cache, tmp_path / "cut", device="cpu")
    monkeypatch.undo()
    assert int(torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"]) == 2
    resumed = train(cfg, cache, tmp_path / "cut", device="cpu")
    assert resumed.steps == 4 and resumed.steps_this_run == 2
    assert resumed.fingerprint == straight.fingerprint
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_run_starts_from_init_weights(cache, tmp_path):
    from avatar_engine.models.base_model import save_weights

    torch.manual_seed(3)
    model = NeuralAvatar(_config().model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_weights(model, tmp_path / "init.safetensors")
    cfg = _config(steps=5, warp_steps=4, init=str(tmp_path / "init.safetensors"), init_step=4, batch_size=1,
                  num_workers=0, val_every=1000, val_pairs=1, log_every=1, loss=LossConfig(gan=0.0, feature_matching=0.0))
    report = train(cfg, cache, tmp_path / "run", device="cpu")
    assert report.steps == 5 and report.steps_this_run == 1  # started at init_step, in the joint stage
    assert "out_l1" in report.last_losses


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    ck = Checkpoint(tmp_path / "c.pt")
    ck.save({"step": 1, "w": torch.ones(2)})

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.save({"step": 2, "w": torch.zeros(2)})
    monkeypatch.undo()
    state = ck.load()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    assert Checkpoint(tmp_path / "c.pt", is_main=False).save({"step": 3}) is None
    assert ck.load()["step"] == 1  # a non-main rank never writes
