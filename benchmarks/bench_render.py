"""Per-stage timing of the offline mesh pipeline on a val clip.

    python benchmarks/bench_render.py [--clip PATH] [--source PATH] [--frames 200] [--threads 2]

Prints a markdown table (ms per frame for landmarks, retarget, rasterize, warp, paste-back, encode,
and frames/s of the whole loop) at 256 and 512, plus the machine it ran on. Rasterization is not
needed by the mesh renderer itself; it is timed because the neural renderers run it every frame.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("GLOG_minloglevel", "2")

from machine import machine  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.geometry.rasterizer import ConnectivityRasterizer, RasterConfig  # noqa: E402
from avatar_engine.io.image import image_to_tensor, tensor_to_image  # noqa: E402
from avatar_engine.geometry.retarget import MotionRetargeter  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import VideoWriter, iter_frames  # noqa: E402
from avatar_engine.geometry.mesh_warp import MeshWarp  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def bench(clip: Path, source_path: Path, size: int, frames: int) -> dict[str, float]:
    source = prepare_source(source_path, SourceConfig(size=size))
    driving = [f for f, _ in iter_frames(clip, max_frames=frames)]
    detector = LandmarkDetector(LandmarkConfig(), static=False)
    retarget = MotionRetargeter(source.landmarks)
    raster = ConnectivityRasterizer(size, RasterConfig(), "cpu")
    warp = MeshWarp(source.landmarks, size)
    src = image_to_tensor(source.crop_image)
    stages = {k: [] for k in ("landmarks", "retarget", "rasterize", "warp", "paste-back", "encode")}
    out_h, out_w = source.image.shape[:2]
    with tempfile.TemporaryDirectory() as tmp, VideoWriter(Path(tmp) / "b.mp4", 25.0, (out_w, out_h)) as writer, \
            torch.inference_mode():
        last = source.landmarks
        start = time.perf_counter()
        for i, rgb in enumerate(driving):
            t0 = time.perf_counter()
            pts = detector.detect(rgb, i / 25.0)
            t1 = time.perf_counter()
            target = retarget(pts) if pts is not None else last
            last = target
            tt = torch.from_numpy(target)[None]
            t2 = time.perf_counter()
            raster(tt[..., :2])
            t3 = time.perf_counter()
            crop = tensor_to_image(warp.warp(src, warp.grid(tt)))
            t4 = time.perf_counter()
            frame = source.crop.paste_back(source.image, crop)
            t5 = time.perf_counter()
            writer.write(frame)
            t6 = time.perf_counter()
            for key, a, b in zip(stages, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                stages[key].append((b - a) * 1e3)
        total = time.perf_counter() - start
    detector.close()
    result = {k: float(np.median(v)) for k, v in stages.items()}
    result["fps (all stages)"] = len(driving) / total
    live = sum(result[k] for k in ("landmarks", "retarget", "warp", "paste-back"))
    result["fps (live path: landmarks+retarget+warp+paste)"] = 1e3 / live
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=DATA / "clips/val/P048/C077.mp4")
    ap.add_argument("--source", type=Path, default=DATA / "images/val/P152/I036.png")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {size: bench(args.clip, args.source, size, args.frames) for size in (256, 512)}
    print(f"machine: {machine()}; clip {args.clip.name}, source {args.source.name}, {args.frames} frames (median ms)\n")
    print("| stage | 256 | 512 |\n|---|---|---|")
    for key in results[256]:
        print(f"| {key} | {results[256][key]:.2f} | {results[512][key]:.2f} |")


if __name__ == "__main__":
    main()
