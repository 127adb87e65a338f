"""The fine-tuning loop: parameter sets, time budget, the loss goes down on the pairs it trains on."""
from __future__ import annotations

import pytest
import torch

from avatar_engine.data.prepare import PrepareConfig, load_prepared, prepare_dataset
from avatar_engine.models.base_model import load_model
from calibration.adapt import AdaptConfig, PairPool, adapt, heldout_loss, select_parameters
from calibration.personalize import split_holdout


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("adaptcache")
    prepare_dataset(PrepareConfig(data=data_dir, cache=cache, splits=("val",), segment_frames=10, identity_every=2,
                                  max_frames_per_clip=20, clip_ids=("C018",)))
    return load_prepared(cache, "val")


def test_parameter_sets():
    m = load_model()
    every = {id(p) for p in m.parameters()}
    refine = {id(p) for p in select_parameters(m, "refine")}
    norm = select_parameters(m, "norm")
    assert refine < every and refine == {id(p) for p in m.refine_net.parameters()}
    assert 0 < len(norm) < len(every) and all(p.dim() < 4 or p.shape[-1] == 1 for p in norm)  # no 3x3 convs
    with pytest.raises(ValueError):
        AdaptConfig(params="half")


def test_split_holds_back_the_last_frames(clips):
    adapt_part, held = split_holdout(clips, 0.2)
    assert sum(len(c) for c in adapt_part) == 16 and sum(len(c) for c in held) == 4
    assert (held[0].frames[0] == clips[0].frames[16]).all()


def test_fine_tuning_lowers_the_loss_it_trains_on_and_keeps_the_other_parameters(clips):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = load_model()
    pool = PairPool(clips, 4, m.config.size, m.config.mesh_warp_config(), seed=0)
    warp_before = [p.detach().clone() for p in m.warp_net.parameters()]
    cfg = AdaptConfig(steps=6, batch_size=4, lr=3e-4, params="refine")
    before = heldout_loss(m, pool, cfg.loss)
    result = adapt(m, pool, cfg, heldout=pool)
    assert result.steps == 6 and result.curve[0][2] == pytest.approx(before)
    assert result.curve[-1][2] < before
    assert all(torch.equal(a, b) for a, b in zip(warp_before, m.warp_net.parameters()))
    assert all(p.requires_grad for p in m.parameters()) and not m.training


def test_time_budget_stops_the_loop(clips):
    m = load_model()
    pool = PairPool(clips, 2, m.config.size, m.config.mesh_warp_config(), seed=0)
    result = adapt(m, pool, AdaptConfig(steps=50, batch_size=2, seconds=1e-3))
    assert result.steps == 1
