"""Training-step speed of the neural base model on a real prepared cache: pairs/s, effective GFLOP/s and
a per-part profile, for the plain per-pair path (the trainer before issue #12) and the fast path.

    python benchmarks/bench_train.py [--cache DIR] [--configs configs/neural_lite.toml ...]
        [--threads 2] [--steps 6] [--batch 8] [--drivings 2] [--paths plain fast]

For every config, path and stage (``warp``; ``joint``; ``joint+D`` with the patch discriminator):

* **pairs/s**: end-to-end throughput of the real loop (DataLoader with one worker feeding the step,
  as ``avatar-engine train`` runs it), after warm-up (and compilation) steps;
* **GFLOP/s**: FLOPs of one step (``torch.utils.flop_counter``: forward + backward of the generator,
  and of the discriminator in ``joint+D``) times steps/s;
* **CPU ms/pair**: process CPU time (all threads) of data + step per pair, in-process: the cost the
  load of a shared machine does not inflate (2000 / it ~ pairs/s on two idle cores if threads scaled);
* **profile** (ms per step, measured in-process one part after the other): ``read`` (crops,
  landmarks, identity codes from the memory-mapped cache), ``mesh+lines`` (mesh warp grids and
  connectivity images), ``forward`` and ``losses`` (plain path; one compiled graph ``fwd+loss`` on
  the fast path), ``backward``, ``optim`` (gradient clipping + Adam, and the discriminator's step).

Plain = :class:`~avatar_engine.training.trainer.MeshPairs` items (one mesh per pair), eager float32
NCHW, foreach Adam; fast = :class:`~avatar_engine.training.batches.PairBatches` + the compiled
channels-last step of :func:`~avatar_engine.training.step.build_step`. Prints the machine line and the
load average before and after (the 2 cores are shared: compare rows measured at similar load).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine  # noqa: E402

from avatar_engine.data.prepare import PairConfig, PairDataset, default_cache_dir, load_prepared  # noqa: E402
from avatar_engine.geometry.mesh_warp import MeshWarp  # noqa: E402
from avatar_engine.models.base_model import NeuralAvatar  # noqa: E402
from avatar_engine.training import step as step_mod  # noqa: E402
from avatar_engine.training.batches import BatchConfig, PairBatches, to_device  # noqa: E402
from avatar_engine.training.discriminator import MultiScaleDiscriminator  # noqa: E402
from avatar_engine.training.step import LossConfig, StepOptions, build_step  # noqa: E402
from avatar_engine.training.trainer import MeshPairs, load_train_config  # noqa: E402

STAGES = ("warp", "joint", "joint+D")


class _Timed(torch.nn.Module):
    """Wraps the generator: accumulates the seconds of its forward calls (the plain path's profile)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seconds = inner, 0.0

    def forward(self, *args):
        t0 = time.perf_counter()
        out = self.inner(*args)
        self.seconds += time.perf_counter() - t0
        return out


def _plain_batches(cfg, clips, batch: int):
    pairs = MeshPairs(PairDataset(clips, PairConfig(min_gap=cfg.min_gap, seed=cfg.seed)), cfg.model.size,
                      cfg.model.mesh_warp_config())

    class Batched(torch.utils.data.Dataset):
        def __len__(self):
            return 1 << 20

        def __getitem__(self, k):
            items = [pairs[k * batch + j] for j in range(batch)]
            return {key: torch.stack([it[key] for it in items]) for key in items[0]}
    return Batched()


def _data_profile(path: str, cfg, clips, batches, batch: int, n: int) -> tuple[float, float]:
    """(read ms, mesh+lines ms) per batch: reading the pairs' arrays, then their mesh grids and
    connectivity images as the path computes them (plain: one mesh per pair; fast: one per source,
    no mesh cache)."""
    read = geo = 0.0
    pairs = PairDataset(clips, PairConfig(min_gap=cfg.min_gap, seed=cfg.seed))
    lines = cfg.model.connectivity_rasterizer()
    for k in range(n):
        if path == "plain":
            t0 = time.perf_counter()
            items = [pairs[k * batch + j] for j in range(batch)]
            t1 = time.perf_counter()
            for it in items:
                MeshWarp(it["source_points"].numpy(), cfg.model.size, cfg.model.mesh_warp_config()).grid(
                    it["driving_points"][None])
            s_pts = torch.stack([it["source_points"] for it in items])
            d_pts = torch.stack([it["driving_points"] for it in items])
        else:
            draws = batches.draw(k)
            t0 = time.perf_counter()
            arrays = [(np.asarray(c.frames[src]), np.asarray(c.frames[drv]), np.asarray(c.landmarks[src]),
                       np.asarray(c.landmarks[drv], np.float32), np.asarray(c.identity[src]))
                      for c, src, drv in ((batches.pairs.clips[ci], src, drv) for ci, src, drv in draws)]
            t1 = time.perf_counter()
            for (ci, src, drv), a in zip(draws, arrays):
                MeshWarp(a[2], cfg.model.size, cfg.model.mesh_warp_config()).planes(torch.from_numpy(a[3]))
            s_pts = torch.from_numpy(np.concatenate([np.repeat(a[2][None], len(a[3]), 0) for a in arrays]))
            d_pts = torch.from_numpy(np.concatenate([a[3] for a in arrays]))
        cfg.model.connectivity(s_pts, lines)
        cfg.model.connectivity(d_pts, lines)
        t2 = time.perf_counter()
        read, geo = read + t1 - t0, geo + t2 - t1
    return read / n * 1000, geo / n * 1000


def _flops(cfg, stage: str, batch: dict[str, torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = NeuralAvatar(cfg.model)
    disc = MultiScaleDiscriminator(cfg.discriminator) if stage == "joint+D" else None
    loss = cfg.loss if stage == "joint+D" else dataclasses.replace(cfg.loss, gan=0.0, feature_matching=0.0)
    st = build_step(model, loss, cfg.optim, disc, StepOptions.plain())
    with FlopCounterMode(display=False) as fc:
        st(batch, full=stage != "warp")
    return float(fc.get_total_flops())


def _profile_step(st, batch, full: bool, timed: _Timed | None) -> dict[str, float]:
    """One step split into parts (ms), mirroring ModelStep.__call__."""
    st.set_stage(full)
    use_gan = full and st.disc is not None and st.loss.uses_gan
    cond = None
    if use_gan:
        cond = st.lines_s(batch["driving_points"][..., :2]) * 2 - 1
        step_mod._set_requires_grad(st.disc, False)
    if timed is not None:
        timed.inner, timed.seconds = st.gen, 0.0
        gen = timed
    else:
        gen = st.gen
    t0 = time.perf_counter()
    loss, parts, image = step_mod.generator_losses(gen, batch, st.loss, full, st.disc if use_gan else None, cond,
                                                   st._recon)
    t1 = time.perf_counter()
    st.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in st.model.parameters() if p.requires_grad], st.optim.grad_clip)
    st.opt_g.step()
    t3 = time.perf_counter()
    out = {"backward": t2 - t1, "optim": t3 - t2}
    if timed is not None:
        out["forward"], out["losses"] = timed.seconds, (t1 - t0) - timed.seconds
    else:
        out["fwd+loss"] = t1 - t0
    if use_gan:  # the discriminator step, counted with the optimiser part
        step_mod._set_requires_grad(st.disc, True)
        t4 = time.perf_counter()
        gt = batch["driving"] * 2 - 1
        logits, _ = st.disc(torch.cat([torch.cat([gt, cond], 1), torch.cat([image.detach(), cond], 1)], 0))
        n = gt.shape[0]
        d_loss = step_mod.losses.lsgan_d_loss([lo[:n] for lo in logits], [lo[n:] for lo in logits])
        st.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        st.opt_d.step()
        out["optim"] += time.perf_counter() - t4
    return {k: v * 1000 for k, v in out.items()}


def run(config: Path, path: str, stage: str, args, clips) -> dict[str, object]:
    cfg = load_train_config(config)
    cfg = dataclasses.replace(cfg, batch_size=args.batch, drivings=args.drivings if path == "fast" else 1)
    torch.manual_seed(0)
    model = NeuralAvatar(cfg.model)
    disc = MultiScaleDiscriminator(cfg.discriminator) if stage == "joint+D" else None
    loss = cfg.loss if stage == "joint+D" else dataclasses.replace(cfg.loss, gan=0.0, feature_matching=0.0)
    if stage == "joint+D" and not loss.uses_gan:
        loss = LossConfig(**{**dataclasses.asdict(loss), "gan": 0.02, "feature_matching": 0.5})
    opts = StepOptions() if path == "fast" else StepOptions.plain()
    st = build_step(model, loss, cfg.optim, disc, opts)
    full = stage != "warp"
    if path == "fast":
        data = PairBatches(clips, cfg.model, cfg.batch_config())
    else:
        data = _plain_batches(cfg, clips, args.batch)
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(10 ** 6), num_workers=1,
                                         prefetch_factor=4)
    it = iter(loader)

    def one() -> None:
        st(to_device(next(it), "cpu", cfg.model, st.channels_last), full)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        one()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one()
    dt = (time.perf_counter() - t0) / args.steps
    del it, loader
    # CPU cost per pair, in-process (data + step, all threads): what the load does not inflate
    c0 = time.process_time()
    for k in range(100, 103):
        st(to_device(data[k], "cpu", cfg.model, st.channels_last), full)
    cpu_ms = (time.process_time() - c0) / 3 / args.batch * 1000
    # profile, in-process
    batches = [to_device(data[k], "cpu", cfg.model, st.channels_last) for k in range(3)]
    parts: dict[str, float] = {}
    timed = _Timed(st.gen) if path == "plain" else None
    for b in batches:
        for k, v in _profile_step(st, b, full, timed).items():
            parts[k] = parts.get(k, 0.0) + v / len(batches)
    read, geo = _data_profile(path, cfg, clips, data if path == "fast" else None, args.batch, 3)
    flops = _flops(cfg, stage, batches[0]) if args.flops else float("nan")
    return {"config": config.stem, "path": path, "stage": stage, "pairs_s": args.batch / dt,
            "gflops": flops / 1e9 / dt, "gflop_pair": flops / 1e9 / args.batch, "warmup_s": warm, "cpu_ms": cpu_ms,
            "read": read, "geo": geo, **parts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    ap.add_argument("--split", default="train")
    ap.add_argument("--configs", type=Path, nargs="+", default=[REPO / "configs/neural_lite.toml"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--drivings", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=["plain", "fast"], choices=("plain", "fast"))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--no-flops", dest="flops", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clips = load_prepared(args.cache, args.split, 256)
    print(machine(args.threads))
    print(f"load average before: {os.getloadavg()[0]:.1f}; batch {args.batch}, "
          f"{sum(len(c) for c in clips)} {args.split} frames in {len(clips)} clips")
    cols = ("read", "geo", "forward", "losses", "fwd+loss", "backward", "optim")
    print("| config | path | stage | pairs/s | GFLOP/pair | GFLOP/s | CPU ms/pair | " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(cols))
    for config in args.configs:
        for path in args.paths:
            for stage in args.stages:
                r = run(config, path, stage, args, clips)
                cells = " | ".join(f"{r[c]:.0f}" if c in r else "" for c in cols)
                print(f"| {r['config']} | {path} | {stage} | {r['pairs_s']:.2f} | {r['gflop_pair']:.2f} | "
                      f"{r['gflops']:.1f} | {r['cpu_ms']:.0f} | {cells} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f} (profile columns: ms per step; geo = mesh warp + "
          "connectivity images)")


if __name__ == "__main__":
    main()
