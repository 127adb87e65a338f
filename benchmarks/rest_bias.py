"""Rest bias of `render`'s retargeting: where the avatar's brows and lids sit over a whole clip.

For each val driver x val photo, the driver clip is retargeted onto the photo exactly as `avatar-engine
render` does (its neutral choice, the shipped `RetargetConfig`; the mesh renderer's plan only, no
drawing), and the median over the first ``--max-frames`` frames of the target's brow height and eye
opening (`avatar_engine/eval/signals.py`, inter-ocular distances) is compared with the photo's: a
driver's typical face should leave the avatar at the photo's. A brow offset below 0 is a frowning
avatar, an eye ratio below 1 a squinting one.

    python3 benchmarks/rest_bias.py [--typical-s 10] [--max-frames 450]

``--typical-s 0`` is the neutral frame's own brows and lids (before session 12).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

from avatar_engine.eval.signals import eye_open, face_signals  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor  # noqa: E402
from avatar_engine.pipeline.render_job import RenderJobConfig, track_start  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTOS = ("I002", "I014", "I025", "I036")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--typical-s", type=float, default=10.0, help="RenderJobConfig.neutral_typical_s")
    ap.add_argument("--max-frames", type=int, default=450)
    args = ap.parse_args()
    with open(args.data / "images.csv", newline="") as f:
        photos = {r["image_id"]: args.data / r["path"] for r in csv.DictReader(f) if r["image_id"] in PHOTOS}
    with open(args.data / "clips.csv", newline="") as f:
        clips = [r for r in csv.DictReader(f) if r["split"] == "val"]
    drivers = {}
    for r in clips:  # the first clip of each val identity
        drivers.setdefault(r["identity"], args.data / r["path"])
    renderer = create_renderer("mesh", "cpu")
    rows = []
    print(f"machine: {machine()}; typical_s {args.typical_s}, first {args.max_frames} frames\n")
    print("| driver | photo | brow offset (IOD) | eye opening / photo's |\n|---|---|---|---|")
    for identity, clip in sorted(drivers.items()):
        cfg = RenderJobConfig(photos[PHOTOS[0]], clip, Path(os.devnull), progress=False,
                              neutral_typical_s=args.typical_s)
        neutral, tracked = track_start(cfg)
        tracked.close()
        for image_id in PHOTOS:
            source = prepare_source(photos[image_id], SourceConfig(size=256))
            photo = face_signals(source.landmarks)
            values = []
            with Reenactor(source, renderer, ReenactConfig(paste_back=False)) as reenactor:
                reenactor.set_neutral(neutral.points)
                for rgb, t in iter_frames(clip, max_frames=args.max_frames):
                    values.append(face_signals(reenactor.render(rgb, t, draw=False).target))
            brow = float(np.median([v["brow_height"] for v in values]) - photo["brow_height"])
            eye = float(np.median([eye_open(v) for v in values]) / eye_open(photo))
            rows.append((brow, eye))
            print(f"| {identity} ({clip.stem}) | {image_id} | {brow:+.3f} | {eye:.2f} |", flush=True)
    a = np.array(rows)
    print(f"\nmean |brow offset| {np.abs(a[:, 0]).mean():.4f} IOD, mean |eye ratio - 1| {np.abs(a[:, 1] - 1).mean():.3f}")


if __name__ == "__main__":
    main()
