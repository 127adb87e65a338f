"""``avatar-engine train`` (the base model) and ``train sr`` / ``train-sr`` (temporal super-resolution)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from avatar_engine.cli.args import set_threads

__all__ = ["add", "add_sr", "add_meta", "add_mouth"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the neural renderer on a prepared cache (resumable; torchrun for DDP)",
                       description="Train the warping + refinement networks on self-reenactment pairs from the "
                                   "'prepare' cache: warp stage, then warp + refine. Re-running with the same "
                                   "--output resumes. Under torchrun (e.g. torchrun --nproc-per-node 8 "
                                   "$(which avatar-engine) train ...) it trains with DistributedDataParallel.")
    _run_options(p, "configs/neural_lite.toml, neural_full.toml", "checkpoint, loss log, samples", "steps")
    p.set_defaults(run=run)


def _run_options(p: argparse.ArgumentParser, configs: str, output: str, steps: str) -> None:
    """The options ``train`` and ``train meta`` share (config, run folder, cache, steps, device, export)."""
    p.add_argument("--config", type=Path, required=True, help=f"TOML config ({configs})")
    p.add_argument("--output", type=Path, required=True, help=f"run folder: {output}")
    p.add_argument("--cache", type=Path, default=None, help="prepare cache (default: the prepare default)")
    p.add_argument("--steps", type=int, default=None, help=f"total {steps} to reach (default: the config's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--export", type=Path, default=None,
                   help="afterwards, write the renderer's fp16 safetensors weights here (rank 0)")


def run(args: argparse.Namespace) -> int:
    from avatar_engine.data.prepare import default_cache_dir
    from avatar_engine.training.trainer import export_weights, load_train_config, train

    set_threads(args.threads)
    config = load_train_config(args.config)
    report = train(config, args.cache or default_cache_dir(), args.output, steps=args.steps, device=args.device,
                   progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    losses = ", ".join(f"{k} {v:.4f}" for k, v in report.last_losses.items())
    print(f"step {report.steps} ({report.steps_this_run} this run, {report.seconds:.0f} s); {losses}")
    if report.last_val:
        print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in report.last_val.items()))
    if args.export is not None:
        export_weights(report.checkpoint, args.export)
        print(f"wrote {args.export}")
    return 0


def add_sr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-sr", help="train the temporal super-resolution stage 256 -> 512 (causal, streaming)",
                           description="Train the temporal SR network on the prepared cache (avatar-engine prepare "
                                       "--size 256 512). Stage 2d trains the frame-by-frame network; stage 3d "
                                       "inflates it (--init) to 3-D kernels over the last T frames and fine-tunes. "
                                       "Resumable (run it again to continue); DDP under torchrun. Also spelt "
                                       "'avatar-engine train sr'.")
    p.add_argument("--config", required=True, type=Path, help="configs/sr_light.toml or configs/sr_gpu.toml")
    p.add_argument("--stage", required=True, choices=("2d", "3d"), help="training stage")
    p.add_argument("--init", type=Path, default=None, help="stage 3d: the stage-2d weights to inflate")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and exported weights")
    p.add_argument("--cache", type=Path, default=None, help="prepared cache (default: the prepare default)")
    p.add_argument("--inputs", type=Path, default=None, help="renderer-input cache (built when missing)")
    p.add_argument("--steps", type=int, default=None, help="total steps of this stage (overrides the config)")
    p.add_argument("--batch", type=int, default=None, help="samples per step per process")
    p.add_argument("--device", default=None, help="torch device (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(run=run_sr)


def run_sr(args: argparse.Namespace) -> int:
    from avatar_engine.training.sr import build_render_inputs, load_train_config, train_sr

    set_threads(args.threads)
    cfg = load_train_config(args.config, stage=args.stage, init=args.init, run_dir=args.run_dir, cache=args.cache,
                            inputs=args.inputs, steps=args.steps, batch=args.batch, device=args.device,
                            progress=sys.stderr.isatty())
    if cfg.render_fraction > 0 and int(os.environ.get("RANK", 0)) == 0:
        build_render_inputs(cfg.cache, cfg.inputs, cfg.split, cfg.min_source_side, progress=cfg.progress)
    report = train_sr(cfg)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in report.last_losses.items())
    print(f"wrote {report.weights}: {report.steps} steps in {report.seconds:.0f} s; last losses: {losses}; "
          f"{report.flops_per_frame / 1e9:.2f} GFLOP per streamed frame")
    return 0


def add_meta(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-meta", help="Reptile meta-training of the neural renderer for fast personalization",
                       description="Meta-train the base weights with Reptile (one task = one identity of the "
                                   "train split) so that 'avatar-engine enroll' adapts to a new person in fewer "
                                   "steps. Resumable (run it again with the same --output); DDP under torchrun. "
                                   "Also spelt 'avatar-engine train meta'.")
    _run_options(p, "configs/meta_lite.toml", "checkpoint, meta log", "outer steps")
    p.set_defaults(run=run_meta)


def run_meta(args: argparse.Namespace) -> int:
    from avatar_engine.data.prepare import default_cache_dir
    from calibration.reptile import export_meta_weights, load_meta_config, meta_train

    set_threads(args.threads)
    report = meta_train(load_meta_config(args.config), args.cache or default_cache_dir(), args.output,
                        steps=args.steps, device=args.device, progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    inner = " -> ".join(f"{v:.4f}" for v in report.last_losses)
    print(f"outer step {report.steps} ({report.steps_this_run} this run, {report.seconds:.0f} s); last inner "
          f"losses {inner or '-'}" + (f"; val held-back loss {report.last_val:.4f}" if report.last_val is not None
                                     else ""))
    if args.export is not None:
        export_meta_weights(report.checkpoint, args.export)
        print(f"wrote {args.export}")
    return 0


def add_mouth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-mouth", help="train the learned mouth stage (lips, teeth, cavity) on prepared pairs",
                       description="Train the mouth network of the face layers on self-reenactment pairs of the "
                                   "'prepare' cache (mouth patches of mesh renders and real frames, built once and "
                                   "cached). Resumable (run it again with the same --output). Also spelt "
                                   "'avatar-engine train mouth'.")
    _run_options(p, "configs/mouth_lite.toml", "checkpoint, loss log, mouth.safetensors", "steps")
    p.set_defaults(run=run_mouth)


def run_mouth(args: argparse.Namespace) -> int:
    import shutil

    from avatar_engine.data.prepare import default_cache_dir
    from avatar_engine.training.mouth import load_mouth_config, train_mouth

    set_threads(args.threads)
    report = train_mouth(load_mouth_config(args.config), args.cache or default_cache_dir(), args.output,
                         steps=args.steps, device=args.device, progress=sys.stderr.isatty())
    losses = ", ".join(f"{k} {v:.4f}" for k, v in report.last_losses.items())
    print(f"step {report.steps} ({report.steps_this_run} this run, {report.seconds:.0f} s); {losses}")
    if report.last_val:
        print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in report.last_val.items()))
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.output) / "mouth.safetensors", args.export)
        print(f"wrote {args.export}")
    return 0
