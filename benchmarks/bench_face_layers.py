"""Cost of the face layers (eyes, mouth) and of open-ratio lid retargeting on the live path.

    python benchmarks/bench_face_layers.py [--clip PATH] [--frames 150] [--renderers mesh neural] [--threads 1]

Drives the first frame of a val clip with the clip (the ``Reenactor`` of ``start``, 256 crop, no
paste-back), once with the layers and lid retargeting off and once on, and prints a markdown table
of CPU milliseconds per frame (``time.process_time``: what the work costs whatever else the machine
runs) for the retargeting, the rendering including the layers, and the layers alone, with the load
average and the machine line. The 30 fps budget is 33 ms of wall time per frame on the live path.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import machine  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.geometry.face_layers import FaceLayers  # noqa: E402
from avatar_engine.geometry.retarget import RetargetConfig  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cpu_ms(fn, *args) -> tuple[object, float]:
    t0 = time.process_time()
    out = fn(*args)
    return out, (time.process_time() - t0) * 1e3


def run(clip: Path, frames: int, renderer: str, layers: bool) -> dict[str, float]:
    """CPU ms per frame (medians) of one configuration."""
    video = list(iter_frames(clip, frames + 1))
    rgb0 = video[0][0]
    source = prepare_source(rgb0, SourceConfig(size=256, max_side=max(rgb0.shape[:2])))
    r = create_renderer(renderer)
    if not layers:
        r.layers = None
    config = ReenactConfig(paste_back=False, retarget=RetargetConfig(lid_ratio=layers))
    face_layers = FaceLayers(source.crop_image, source.landmarks)
    step, retarget, alone = [], [], []
    with Reenactor(source, r, config) as reenactor:
        for rgb, t in video:
            res, ms = _cpu_ms(reenactor.step, rgb, t)
            step.append(ms)
            driving = res.driving
            if driving is not None:
                retarget.append(_cpu_ms(reenactor.retargeter, driving)[1])
            alone.append(_cpu_ms(face_layers.apply, res.crop, res.target)[1])
    skip = min(10, len(step) // 4)  # warm-up
    return {"step": float(np.median(step[skip:])), "retarget": float(np.median(retarget[skip:])),
            "layers": float(np.median(alone[skip:]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=DATA / "clips/val/P048/C077.mp4")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--renderers", nargs="+", default=["mesh", "neural"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine(args.threads)}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"clip {args.clip.name}, {args.frames} frames, 256 crop, CPU ms per frame (median)\n")
    print("| renderer | layers + lid ratio | whole step | retarget | layers alone |")
    print("|---|---|---|---|---|")
    for name in args.renderers:
        for layers in (False, True):
            m = run(args.clip, args.frames, name, layers)
            print(f"| {name} | {'on' if layers else 'off'} | {m['step']:.1f} | {m['retarget']:.2f} | "
                  f"{m['layers'] if layers else 0.0:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
