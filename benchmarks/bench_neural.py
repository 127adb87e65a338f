"""Per-frame time of the neural renderer (vs the mesh renderer) at 256 on real val landmarks.

    python benchmarks/bench_neural.py [--threads 1 2] [--frames 60] [--weights PATH]

Times ``renderer.render(source, target)`` (mesh prior grid + warping network + refinement, source
work cached) for consecutive target frames of a val clip and prints the median and 90th percentile
in milliseconds per thread count, plus the model's FLOPs and parameters per module.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.models.base_model import DEFAULT_WEIGHTS, count_cost  # noqa: E402
from avatar_engine.renderers.neural import NeuralRenderer  # noqa: E402
from avatar_engine.renderers.mesh import MeshRenderer  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default=str(REPO.parent / "shared/data/clips/val/P004/C018.mp4"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = ap.parse_args()
    frames = [f for f, _ in iter_frames(args.clip, max_frames=args.frames + 1)]
    source = prepare_source(frames[0], SourceConfig(size=256))
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        targets = [source.crop.to_crop(p) for p in (det.detect(f, k / 25) for k, f in enumerate(frames[1:]))
                   if p is not None]
    neural = NeuralRenderer(weights=args.weights)
    for name, c in count_cost(neural.model).items():
        print(f"{name:18s} {c['gflop']:7.3f} GFLOP  {c['params_m']:6.3f} M params")
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, r in (("mesh", MeshRenderer()), ("neural", neural)):
            r.render(source, targets[0])
            r.render(source, targets[1])
            times = []
            for t in targets:
                t0 = time.perf_counter()
                r.render(source, t)
                times.append((time.perf_counter() - t0) * 1000)
            print(f"threads {threads} {name:6s}: median {np.median(times):6.1f} ms, p90 {np.percentile(times, 90):6.1f} ms "
                  f"({1000 / np.median(times):5.1f} fps)")


if __name__ == "__main__":
    main()
