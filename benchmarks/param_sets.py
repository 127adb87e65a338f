"""Which parameters adapt best per second: held-back loss curves of fine-tuning settings on one val clip.

    python benchmarks/param_sets.py C151 3e-4:refine 1e-4:refine 1e-4:all 3e-5:all 3e-4:norm

For each ``lr:params`` setting (:data:`calibration.adapt.PARAM_SETS`): fine-tune the base weights for
80 steps (batch 4) on the first 80 % of the clip's first 450 prepared frames (a pool of 96 pairs) and
print one JSON line with the held-back loss (16 pairs of the last 20 %) every 20 steps, with the loop
seconds: ``[[step, seconds, loss], ...]``. Run the settings in one process (or side by side) so their
seconds compare; they depend on the machine's load.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avatar_engine.data.prepare import default_cache_dir, load_prepared  # noqa: E402
from avatar_engine.models.base_model import load_model  # noqa: E402
from calibration.adapt import AdaptConfig, PairPool, adapt, slice_clip  # noqa: E402
from calibration.personalize import split_holdout  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    clip_id, settings = sys.argv[1], sys.argv[2:]
    clips = load_prepared(default_cache_dir(), "val", clip_ids=(clip_id,))
    clips = [slice_clip(clips[0], 0, min(len(clips[0]), 450))]
    train, held = split_holdout(clips, 0.2)
    warp = load_model().config.mesh_warp_config()
    pool, held_pool = PairPool(train, 96, 256, warp, seed=0), PairPool(held, 16, 256, warp, seed=1)
    for spec in settings:
        lr, params = spec.split(":")
        load = os.getloadavg()[0]
        r = adapt(load_model(), pool, AdaptConfig(steps=80, lr=float(lr), params=params, eval_every=20), heldout=held_pool)
        print(json.dumps({"clip": clip_id, "lr": lr, "params": params, "load_avg": round(load, 1),
                          "curve": [(s, round(t, 1), round(v, 4)) for s, t, v in r.curve],
                          "train": [round(sum(r.train_losses[i:i + 20]) / 20, 4) for i in range(0, 80, 20)]}),
              flush=True)


if __name__ == "__main__":
    main()
