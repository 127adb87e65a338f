"""Reptile: the outer step on a toy model, task grouping, the config, meta-training runs (resume, DDP)."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, free_port

from avatar_engine.data.prepare import PrepareConfig, load_prepared, prepare_dataset
from avatar_engine.errors import AvatarError
from avatar_engine.models.base_model import load_model
from calibration.reptile import MetaConfig, export_meta_weights, identity_tasks, load_meta_config, meta_train, reptile_update


def test_outer_step_moves_towards_the_adapted_weights_by_the_fraction():
    torch.manual_seed(0)
    shared = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    theta = [p.detach().clone() for p in shared.parameters()]
    adapted = copy.deepcopy(shared)
    opt = torch.optim.SGD(adapted.parameters(), lr=0.1)
    for _ in range(3):  # the inner loop: a few SGD steps on one task
        loss = ((adapted(torch.randn(8, 3)) - 1.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    phi = [p.detach().clone() for p in adapted.parameters()]
    norm = reptile_update(shared, adapted, 0.25)
    for t, f, new in zip(theta, phi, shared.parameters()):
        assert torch.allclose(new, t + 0.25 * (f - t), atol=1e-7)
    assert norm == pytest.approx(float(torch.cat([(f - t).reshape(-1) for t, f in zip(theta, phi)]).norm()), rel=1e-5)
    assert norm > 0
    reptile_update(shared, adapted, 1.0)  # fraction 1: the adapted weights themselves
    for f, new in zip(phi, shared.parameters()):
        assert torch.allclose(new, f, atol=1e-7)


def test_config_file_and_annealing():
    cfg = load_meta_config(REPO / "configs" / "meta_lite.toml")
    assert cfg.inner_steps >= 1 and cfg.meta_step_final is not None
    assert cfg.fraction(0) == pytest.approx(cfg.meta_step)
    assert cfg.fraction(cfg.steps - 1) == pytest.approx(cfg.meta_step_final)
    with pytest.raises(ValueError):
        MetaConfig(meta_step=0.0)
    with pytest.raises(ValueError):
        MetaConfig(params="everything")


def test_bad_config_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("inner_stepz = 3\n")
    with pytest.raises(AvatarError, match="inner_stepz"):
        load_meta_config(bad)


@pytest.fixture(scope="module")
def meta_cache(data_dir, tmp_path_factory):
    """Two P004 clips (one identity) standing in for the train and val splits, 12 frames each."""
    cache = tmp_path_factory.mktemp("metacache")
    for split in ("train", "val"):
        prepare_dataset(PrepareConfig(data=data_dir, cache=cache / "tmp", splits=("val",), segment_frames=6,
                                      identity_every=3, max_frames_per_clip=12, clip_ids=("C018", "C019")))
        (cache / "tmp" / "val").rename(cache / split)
    return cache


def test_tasks_are_identities(meta_cache):
    clips = load_prepared(meta_cache, "train")
    tasks = identity_tasks(clips, min_frames=1)
    assert len(tasks) == 1 and {c.clip_id for c in tasks[0]} == {"C018", "C019"}
    assert identity_tasks(clips, min_frames=10_000) == []


def _tiny(**kw) -> MetaConfig:
    base = dict(steps=2, inner_steps=1, inner_batch=1, min_frames=4, checkpoint_every=1, val_every=2, val_tasks=1,
                val_steps=1, val_pairs=2)
    return MetaConfig(**{**base, **kw})


def test_meta_train_moves_the_weights_logs_resumes_and_exports(meta_cache, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "meta"
    report = meta_train(_tiny(), meta_cache, out, device="cpu")
    assert report.steps == 2 and report.steps_this_run == 2 and report.last_val is not None
    log = [json.loads(line) for line in (out / "meta_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]
    assert [r["step"] for r in log if r["kind"] == "val"] == [2]
    report = meta_train(_tiny(steps=3), meta_cache, out, device="cpu")
    assert report.steps == 3 and report.steps_this_run == 1
    export_meta_weights(out / "checkpoint.pt", tmp_path / "meta.safetensors")
    base, meta = load_model(), load_model(tmp_path / "meta.safetensors")
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(base.parameters(), meta.parameters()))
    assert moved > 0


def _ddp_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # every rank adapts to its own pairs; the all-reduced update keeps the replicas equal
    import calibration.reptile as reptile

    seen = {}
    real = reptile.reptile_update

    def spy(shared, adapted, fraction):
        norm = real(shared, adapted, fraction)
        seen["sum"] = float(sum(p.double().abs().sum() for p in shared.parameters()))
        return norm

    reptile.reptile_update = spy
    meta_train(_tiny(steps=1, val_every=0), cache, out, device="cpu")
    torch.save(torch.tensor(seen["sum"], dtype=torch.float64), os.path.join(out, f"fp_{rank}.pt"))


def test_ddp_replicas_stay_equal(meta_cache, tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(meta_cache), str(out)), nprocs=2, join=True)
    f0, f1 = (float(torch.load(out / f"fp_{r}.pt", weights_only=True)) for r in (0, 1))
    assert f0 == f1
