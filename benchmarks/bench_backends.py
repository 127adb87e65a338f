"""Inference backends side by side: ms per frame of each per-frame graph, then the live engine with the best.

    python benchmarks/bench_backends.py [--threads 1] [--frames 40] [--compile] [--bf16]
                                        [--live-seconds 12] [--live-repeats 3] [--no-live | --live-only B]

Part 1 (one process, round robin so that the machine's load hits every backend alike): for every
backend that loads here, the neural renderer's whole frame at 256 (``renderer.render``: mesh grid in
PyTorch, then the per-frame graph: lines, warping net, grid, warp, refinement) on real val landmarks,
and the SR step at 512 (``SuperResolver`` on real 256 crops, streaming): medians and 10th percentiles
in ms (on a loaded machine the 10th percentile is the closer estimate of the quiet cost; the best
backend is picked on it), ratios to eager, and each backend's largest difference to eager in levels
of 255. ``--compile`` adds torch.compile (minutes of compiling on 2 cores); ``--bf16`` adds
OpenVINO in bf16; ``auto`` is what it resolves to on each graph.

Part 2: the live engine (``avatar-engine start`` headless, a 30 fps val clip as the camera, see
``bench_live.py``) with the neural renderer, eager against ``auto`` (the default of every command:
per graph the fastest backend within tolerance, the "auto (...)" rows of part 1), at 256 and 512: played in real time (fps, capture-to-output latency, dropped camera frames, CPU ms per frame of
the whole process) and as fast as it goes (``--no-realtime``: frames/s); the two backends' sessions
alternate, ``--live-repeats`` each, and the medians are reported.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pyvirtualcam  # noqa: E402
import torch  # noqa: E402

from bench_live import DATA, CpuMeter, DiscardBackend, load_average  # noqa: E402
from machine import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avatar_engine.backends import BackendOptions, available_backends  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.super_resolution import SuperResolver  # noqa: E402
from avatar_engine.renderers.neural import NeuralRenderer  # noqa: E402
from runtime.engine import LiveConfig, LiveEngine  # noqa: E402
from runtime.vcam import VirtualCameraConfig  # noqa: E402


def variants(args: argparse.Namespace) -> dict[str, tuple[str, BackendOptions]]:
    """Column label -> (backend, options) for every backend that loads here."""
    status = available_backends("cpu")
    out = {}
    for name in ("eager", "compile", "onnxruntime", "openvino", "tensorrt"):
        if status[name] or (name == "compile" and not args.compile):
            continue
        out[name] = (name, BackendOptions(threads=args.threads))
    if args.bf16 and "openvino" in out:
        out["openvino bf16"] = ("openvino", BackendOptions(threads=args.threads, precision="bf16"))
    out["auto"] = ("auto", BackendOptions(threads=args.threads))  # what the commands use by default
    return out


def round_robin(calls: dict[str, callable], inputs: list, rounds: int = 1) -> tuple[dict[str, tuple[float, float]], dict]:
    """(median, 10th percentile) ms per call of each callable over ``inputs`` (interleaved), and each
    one's outputs. On a loaded machine the 10th percentile is the closer estimate of the quiet cost."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    outputs: dict[str, list] = {k: [] for k in calls}
    for r in range(rounds):
        for x in inputs:
            for name, fn in calls.items():
                t0 = time.perf_counter()
                y = fn(x)
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    outputs[name].append(y)
    return {k: (1e3 * float(np.median(v)), 1e3 * float(np.percentile(v, 10))) for k, v in times.items()}, outputs


def max_levels(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return int(max(np.abs(x.astype(np.int16) - y.astype(np.int16)).max() for x, y in zip(a, b)))


def graphs(args: argparse.Namespace) -> tuple[list[str], str, str]:
    """Part 1: the markdown rows, and the fastest backend for the neural graph and the SR step."""
    frames = [f for f, _ in iter_frames(args.clip, max_frames=args.frames + 1)]
    source = prepare_source(frames[0], SourceConfig(size=256))
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        points = [det.detect(f, k / 30) for k, f in enumerate(frames[1:])]
    targets = [source.crop.to_crop(p).astype(np.float32) for p in points if p is not None]
    crops = [prepare_source(f, SourceConfig(size=256)).crop_image for f in frames[1:9]]
    crops = (crops * (len(targets) // len(crops) + 1))[:len(targets)]
    rows = []
    best = {}
    for label, make, inputs in (
            ("neural renderer, 256", lambda b, o: NeuralRenderer(backend=b, backend_options=o), targets),
            ("SR step, 256 -> 512", lambda b, o: SuperResolver(backend=b, backend_options=o), crops)):
        runners, loads = {}, {}
        for name, (backend, options) in variants(args).items():
            t0 = time.perf_counter()
            stage = make(backend, options)
            if isinstance(stage, NeuralRenderer):
                stage.render(source, targets[0])
                calls = (lambda s: lambda t: s.render(source, t))(stage)
                used = stage.backend_choice.used
            else:
                calls = (lambda s: lambda c: s(c, "bench"))(stage)
                used = stage.backend_choice.used
            if backend == "auto":
                picked = stage.backend_choice
                name = f"auto ({picked.used}{' bf16' if picked.precision == 'bf16' else ''})"
            elif used != backend:
                print(f"{label}: {name} fell back to {used}; left out")
                continue
            loads[name] = time.perf_counter() - t0
            runners[name] = calls
        ms, outs = round_robin(runners, inputs, args.rounds)
        for name in runners:
            (med, p10), (eager_med, eager_p10) = ms[name], ms["eager"]
            rows.append(f"| {label} | {name} | {med:.1f} | {med / eager_med:.2f} | {p10:.1f} | {p10 / eager_p10:.2f} | "
                        f"{max_levels(outs[name], outs['eager'])} | {loads[name]:.1f} |")
        fp32 = {k: v[1] for k, v in ms.items() if "bf16" not in k and not k.startswith("auto")}
        best[label] = min(fp32, key=fp32.get)
    return rows, best["neural renderer, 256"], best["SR step, 256 -> 512"]


def live(args: argparse.Namespace, size: int, backend: str, realtime: bool) -> dict[str, float]:
    """One headless session: frames/s, latency p50/p99, dropped camera frames, CPU ms per frame."""
    meter = CpuMeter()
    cfg = LiveConfig(source=args.source, camera=args.live_clip, loop=True, realtime=realtime, renderer="neural",
                     size=size, threads=args.threads, backend=backend, preview=False, virtual_camera=True,
                     output_fps=30.0, sinks=[meter], vcam=VirtualCameraConfig(width=1280, height=720,
                                                                                backend="discard"),
                     duration_s=args.live_seconds)
    engine = LiveEngine(cfg)
    meter.engine = engine
    r = engine.run()
    return {"fps": r.fps, "p50": r.latency_p50_ms, "p99": r.latency_p99_ms, "cpu": meter.ms_per_frame(),
            "dropped": 100.0 * r.dropped_camera / max(r.frames_captured + r.dropped_camera, 1)}


def live_rows(args: argparse.Namespace, best: str) -> list[str]:
    """Eager and ``best`` alternating, ``args.live_repeats`` sessions each per size and mode; medians."""
    rows = []
    for size in (256, 512):
        for realtime in (True, False):
            runs: dict[str, list[dict[str, float]]] = {"eager": [], best: []}
            for _ in range(args.live_repeats):
                for backend in runs:
                    runs[backend].append(live(args, size, backend, realtime))
            for backend, rs in runs.items():
                m = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
                fps = "/".join(f"{r['fps']:.1f}" for r in rs)
                if realtime:
                    rows.append(f"| {size} | {backend} | 30 fps camera | {m['fps']:.1f} ({fps}) | {m['p50']:.0f} | "
                                f"{m['p99']:.0f} | {m['dropped']:.0f} % | {m['cpu']:.0f} |")
                else:
                    rows.append(f"| {size} | {backend} | as fast as it goes | {m['fps']:.1f} ({fps}) | | | | "
                                f"{m['cpu']:.0f} |")
    return rows


def table(columns: list[str], rows: list[str]) -> str:
    """A markdown table (with a blank line before it) of already formatted rows."""
    return "\n".join(["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=DATA / "clips/val/P004/C018.mp4", help="landmarks / SR frames")
    ap.add_argument("--live-clip", type=Path, default=DATA / "clips/val/P048/C077.mp4", help="30 fps camera clip")
    ap.add_argument("--source", type=Path, default=DATA / "images/val/P152/I036.png")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    ap.add_argument("--bf16", action="store_true", help="also time OpenVINO in bf16")
    ap.add_argument("--live-seconds", type=float, default=12.0)
    ap.add_argument("--live-repeats", type=int, default=3)
    ap.add_argument("--no-live", dest="live", action="store_false")
    ap.add_argument("--live-only", metavar="BACKEND", default=None,
                    help="skip the graph timings; compare eager with BACKEND in the live engine")
    ap.add_argument("--cache", type=Path, default=None, help="graph cache (default: a new temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ["AVATAR_CACHE"] = str(args.cache or tempfile.mkdtemp(prefix="bench-backends-"))
    torch.set_num_threads(args.threads)
    pyvirtualcam.register_backend("discard", DiscardBackend)

    best = args.live_only
    if best is None:
        t0 = time.monotonic()
        load_before = load_average()
        rows, best_neural, best_sr = graphs(args)
        print(f"machine: {machine(args.threads)}; load average (1/5/15 min) before {load_before}, "
              f"after {load_average()} ({time.monotonic() - t0:.0f} s)")
        print(table(["graph", "backend", "ms per frame (median)", "x eager", "10th percentile ms", "x eager",
                     "max diff to eager (levels of 255)", "load s"], rows))
        print(f"fastest fp32 backend: neural {best_neural}, SR {best_sr}")
        best = "auto"  # what the commands run by default: the fastest backend within tolerance per graph
    if not args.live:
        return
    t0 = time.monotonic()
    load_before = load_average()
    rows = live_rows(args, best)
    print()
    print(f"machine: {machine(args.threads)}")
    print(f"live engine, neural renderer, {args.threads} thread(s), camera {args.live_clip.name}, "
          f"source {args.source.name}, {args.live_seconds:g} s per session, {args.live_repeats} sessions per row "
          f"(alternating; medians, each session's frames/s in brackets); load average before {load_before}, "
          f"after {load_average()} ({time.monotonic() - t0:.0f} s)")
    print(table(["size", "backend", "camera", "frames/s", "latency p50 ms", "latency p99 ms",
                 "dropped camera frames", "CPU ms/frame (all threads)"], rows))


if __name__ == "__main__":
    main()
