"""Personalization on val identities: base start vs meta-learned start, before/after on unseen frames.

    python benchmarks/personalization.py [--steps 40] [--eval-every 10] [--tasks P120 P029 P004]
        [--meta avatar_engine/weights/neural_lite_meta.safetensors] [--out reports/personalization]

Tasks (the prepared val cache, i.e. the training data's code path, as ``enroll`` uses on its capture):
P120 adapts on the first 30 s of C151 and is scored on the rest; P029 adapts on C054 and is scored
on C059; P004 adapts on C018-C021 and is scored on C022-C025. For each task and start (base,
meta) it fine-tunes ``--steps`` steps (:func:`calibration.personalize.personalize`, the enroll
defaults otherwise) and records PSNR, mouth L1, identity distance and the held-back loss before and
after, and the held-back loss curve. The "3x" check: the step at which the meta start's curve first
reaches the base start's final loss (``steps_to_base_final``). Writes ``results.json`` and
``curves.png`` (both curves per task in one plot) to ``--out``; ``--starts base`` and ``--starts meta``
can run separately (the results of the other start in ``--out`` are kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avatar_engine.data.prepare import default_cache_dir, load_prepared  # noqa: E402
from avatar_engine.face.identity import IdentityEncoder  # noqa: E402
from avatar_engine.models.base_model import DEFAULT_WEIGHTS  # noqa: E402
from machine import machine  # noqa: E402
from calibration.adapt import slice_clip  # noqa: E402
from calibration.personalize import META_WEIGHTS, PersonalizeConfig, personalize  # noqa: E402

TASKS = {"P120": (("C151",), None), "P029": (("C054",), ("C059",)),
         "P004": (("C018", "C019", "C020", "C021"), ("C022", "C023", "C024", "C025"))}


def task_clips(cache: Path, name: str, adapt_seconds: float):
    adapt_ids, eval_ids = TASKS[name]
    clips = load_prepared(cache, "val", clip_ids=adapt_ids)
    if eval_ids is None:  # one long clip: the first adapt_seconds, then the rest
        c = clips[0]
        cut = int(adapt_seconds * float(c.meta["fps"]))
        return [slice_clip(c, 0, cut)], [slice_clip(c, cut, len(c))]
    return clips, load_prepared(cache, "val", clip_ids=eval_ids)


def _steps_to_reach(curve: list, target: float) -> int | None:
    for step, _, loss in curve:
        if loss <= target:
            return int(step)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["P120", "P029"], choices=sorted(TASKS))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: enroll's)")
    ap.add_argument("--params", default=None, help="parameter set (default: enroll's)")
    ap.add_argument("--meta", type=Path, default=META_WEIGHTS)
    ap.add_argument("--starts", nargs="+", default=["base", "meta"], choices=("base", "meta"),
                    help="which starts to run now (results of other runs in --out are kept)")
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "personalization")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base_cfg = PersonalizeConfig()
    changes = {"steps": args.steps, "seconds": None, "eval_every": args.eval_every}
    changes |= {k: v for k, v in (("lr", args.lr), ("params", args.params)) if v is not None}
    adapt_cfg = dataclasses.replace(base_cfg.adapt, **changes)
    encoder = IdentityEncoder()
    weights = {"base": DEFAULT_WEIGHTS, "meta": args.meta}
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"tasks": {}}
    for name in args.tasks:
        adapt_clips, eval_clips = task_clips(args.cache, name, 30.0)
        runs = results["tasks"].setdefault(name, {})
        for start in args.starts:
            load = os.getloadavg()
            t = time.perf_counter()
            cfg = dataclasses.replace(base_cfg, adapt=adapt_cfg, init=weights[start])
            r = personalize(adapt_clips, cfg, identity_encoder=encoder, eval_clips=eval_clips)
            runs[start] = {"weights": str(weights[start]), "before": r.before, "after": r.after,
                           "curve": r.adapt.curve, "adapt_seconds": r.adapt.seconds, "frames_adapt": r.frames_adapt,
                           "frames_eval": r.frames_held, "wall_s": time.perf_counter() - t,
                           "load_avg": [load, os.getloadavg()], "machine": machine(args.threads),
                           "adapt": dataclasses.asdict(adapt_cfg)}
            print(name, start, json.dumps({k: runs[start][k] for k in ("before", "after", "adapt_seconds")}), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
        if "base" in runs and "meta" in runs:
            base_final, steps = runs["base"]["curve"][-1][2], runs["base"]["curve"][-1][0]
            reach = _steps_to_reach(runs["meta"]["curve"], base_final)
            runs["steps_to_base_final"] = {"base": steps, "meta": reach, "speedup": (steps / reach) if reach else None}
    path.write_text(json.dumps(results, indent=1))
    if any("base" in r and "meta" in r for r in results["tasks"].values()):
        _plot(results, args.out / "curves.png")
        print(f"wrote {path} and {args.out / 'curves.png'}")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = {k: v for k, v in results["tasks"].items() if "base" in v and "meta" in v}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], tasks.items()):
        for start, style in (("base", "o-"), ("meta", "s-")):
            steps, _, loss = zip(*runs[start]["curve"])
            ax.plot(steps, loss, style, label=f"{start} start")
        ax.axhline(runs["base"]["curve"][-1][2], color="grey", lw=0.8, ls="--", label="base start, final")
        ax.set_title(f"{name}: held-back loss while fine-tuning")
        ax.set_xlabel("fine-tuning step (batch 4)")
        ax.set_ylabel("reconstruction loss on unseen frames")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
