"""How sharp the avatar is next to its photo: fine-detail energy of the face, output over photo.

For each val photo x the first clip of each val identity (``--photos``, ``--drivers``), the driver's first
``--max-frames`` frames drive the photo as `avatar-engine render` does (its neutral choice, the shipped
retargeting); for the output crop of every frame and for the photo's own crop, the mean absolute
difference between the grey image and its Gaussian blur (sigma 1.5 px: detail
of 1-4 px, freckles, lashes, stubble) inside the face oval (mediapipe's silhouette; the target's landmarks on the
output), without the eyes and the mouth, which the face layers redraw. The ratio output / photo is 1
when the avatar keeps the photo's skin, hair and lash detail; resampling alone costs a little of it.

    python3 benchmarks/sharpness.py [--renderers mesh neural neural-plain] [--max-frames 40]

``neural-plain`` is the neural renderer without its detail transfer (`NeuralRenderer(detail=False)`).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from avatar_engine.face import topology  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor  # noqa: E402
from avatar_engine.pipeline.render_job import RenderJobConfig, track_start  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402
from avatar_engine.renderers.neural import NeuralRenderer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_HOLES = (topology.INNER_LIPS_LOOP, topology.RIGHT_EYE_LOOP, topology.LEFT_EYE_LOOP)


def detail_energy(image: np.ndarray, points: np.ndarray) -> float:
    """Mean |grey - Gaussian blur (sigma 1.5)| of ``image (S, S, 3) uint8`` inside the face oval of ``points (478, 2|3)``, the
    eyes and the mouth (grown by 3 px) left out."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points[list(topology.FACE_OVAL_LOOP), :2]).astype(np.int32)], 1)
    for loop in _HOLES:
        hole = np.round(points[list(loop), :2]).astype(np.int32)
        cv2.fillPoly(mask, [hole], 0)
        cv2.polylines(mask, [hole], True, 0, thickness=6)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fine = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.5))
    return float(fine[mask > 0].mean())


def _renderer(name: str):
    return NeuralRenderer(detail=False) if name == "neural-plain" else create_renderer(name, "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--renderers", nargs="+", default=["mesh", "neural", "neural-plain"])
    ap.add_argument("--photos", nargs="+", default=["I002", "I025", "I036", "I045", "I070"])
    ap.add_argument("--drivers", type=int, default=2, help="first clip of the first N val identities")
    ap.add_argument("--max-frames", type=int, default=40)
    args = ap.parse_args()
    with open(args.data / "images.csv", newline="") as f:
        photos = {r["image_id"]: args.data / r["path"] for r in csv.DictReader(f) if r["image_id"] in args.photos}
    with open(args.data / "clips.csv", newline="") as f:
        clips = [r for r in csv.DictReader(f) if r["split"] == "val"]
    drivers: dict[str, Path] = {}
    for r in clips:
        drivers.setdefault(r["identity"], args.data / r["path"])
    drivers = dict(sorted(drivers.items())[: args.drivers])
    renderers = {n: _renderer(n) for n in args.renderers}
    print(f"machine: {machine()}; first {args.max_frames} frames of {', '.join(p.stem for p in drivers.values())}\n")
    print("| photo | " + " | ".join(args.renderers) + " |\n|---|" + "---|" * len(args.renderers))
    ratios: dict[str, list[float]] = {n: [] for n in args.renderers}
    for image_id in args.photos:
        source = prepare_source(photos[image_id], SourceConfig(size=256))
        own = detail_energy(source.crop_image, source.landmarks)
        row = {}
        for name, renderer in renderers.items():
            values = []
            for clip in drivers.values():
                cfg = RenderJobConfig(photos[image_id], clip, Path(os.devnull), progress=False)
                neutral, tracked = track_start(cfg)
                tracked.close()
                with Reenactor(source, renderer, ReenactConfig(paste_back=False)) as reenactor:
                    reenactor.set_neutral(neutral.points)
                    for rgb, t in iter_frames(clip, max_frames=args.max_frames):
                        out = reenactor.step(rgb, t)
                        values.append(detail_energy(out.crop, out.target) / own)
            row[name] = float(np.mean(values))
            ratios[name].append(row[name])
        print(f"| {image_id} | " + " | ".join(f"{row[n]:.2f}" for n in args.renderers) + " |", flush=True)
    print("| **mean** | " + " | ".join(f"**{np.mean(ratios[n]):.2f}**" for n in args.renderers) + " |")


if __name__ == "__main__":
    main()
