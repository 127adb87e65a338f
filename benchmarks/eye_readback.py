"""Eye read-back: how mediapipe sees rendered eyes whose lids and irises were moved by known amounts.

Lids: each val photo is rendered with its own landmarks, except that every lid landmark's distance from its
eye's lid midline is multiplied by ``r`` (0.3 = nearly closed, 1 = as in the photo, 1.4 = wide); then
mediapipe (static mode, as in `avatar-engine eval`) reads the eye opening of the output
(``eye_open_left/right`` of ``avatar_engine/eval/signals.py``, averaged) over that of the photo. A
renderer whose lids mediapipe reads exactly would print ``r``; the cross-reenactment eye-opening
amplitude of eval (output vs the retargeted target) is bounded by the slope of this curve.

Gaze: the same photos with both irises (all ten iris landmarks) moved along their eye's corner axis
by ``d`` eye widths; mediapipe's ``gaze_x`` of the output minus the photo's, in eye widths (a faithful
renderer prints ``d``).

    python3 benchmarks/eye_readback.py [--renderers mesh neural mesh:nolayers]
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
from avatar_engine.face import topology  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.geometry.eyes import scale_lids  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RATIOS = (0.3, 0.5, 0.7, 0.85, 1.0, 1.2, 1.4)
SHIFTS = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)
_IRISES = ((topology.RIGHT_IRIS_IDX, 33, 133), (topology.LEFT_IRIS_IDX, 263, 362))  # iris, corners


def shifted_irises(points: np.ndarray, shift: float) -> np.ndarray:
    """``(478, 3)`` ``points`` with each iris moved by ``shift`` eye widths along its eye's corner axis
    (towards the image's right for ``shift`` > 0)."""
    out = np.asarray(points, np.float32).copy()
    for iris, a, b in _IRISES:
        axis = out[b, :2] - out[a, :2]
        axis *= np.sign(axis[0]) or 1.0
        out[iris, :2] += shift * axis
    return out


def read(detector: LandmarkDetector, image: np.ndarray) -> dict[str, float]:
    """Mean eye opening (IOD) and gaze_x (eye widths) of ``image``; nan without a face."""
    points = detector.detect(image)
    if points is None:
        return {"open": float("nan"), "gaze": float("nan")}
    s = face_signals(points)
    eye_width = np.mean([np.linalg.norm(points[a, :2] - points[b, :2]) for _, a, b in _IRISES])
    iod = np.linalg.norm(points[263, :2] - points[33, :2])
    return {"open": eye_open(s), "gaze": s["gaze_x"] * iod / eye_width}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--renderers", nargs="+", default=["mesh", "neural", "mesh:nolayers"],
                    help="renderer names; ':nolayers' renders without the face layers")
    args = ap.parse_args()
    with open(args.data / "images.csv", newline="") as f:
        photos = [r for r in csv.DictReader(f) if r["split"] == "val"]
    renderers = {}
    for name in args.renderers:
        r = create_renderer(name.split(":")[0], "cpu", backend="eager")
        if name.endswith(":nolayers"):
            r.layers = None
        renderers[name] = r
    curves: dict[str, list[list[float]]] = {n: [] for n in renderers}
    gazes: dict[str, list[list[float]]] = {n: [] for n in renderers}
    with LandmarkDetector(LandmarkConfig(), static=True) as detector:
        for row in photos:
            source = prepare_source(args.data / row["path"], SourceConfig(size=256))
            base = read(detector, source.crop_image)
            for name, r in renderers.items():
                curves[name].append([read(detector, r.render(source, scale_lids(source.landmarks, k)))["open"]
                                     / base["open"] for k in RATIOS])
                gazes[name].append([read(detector, r.render(source, shifted_irises(source.landmarks, d)))["gaze"]
                                    - base["gaze"] for d in SHIFTS])
            print(row["image_id"], file=sys.stderr, flush=True)
    print(f"machine: {machine()}; {len(photos)} val photos; mean over photos of read opening / photo's\n")
    print("| renderer | " + " | ".join(f"r = {k}" for k in RATIOS) + " |")
    print("|---|" + "---|" * len(RATIOS))
    for name, rows in curves.items():
        mean = np.nanmean(np.array(rows), axis=0)
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    print("\nGaze: read gaze_x shift (eye widths), mean +- std over photos\n")
    print("| renderer | " + " | ".join(f"d = {d:+.2f}" for d in SHIFTS) + " | slope |")
    print("|---|" + "---|" * (len(SHIFTS) + 1))
    for name, rows in gazes.items():
        a = np.array(rows)
        mean, std = np.nanmean(a, axis=0), np.nanstd(a, axis=0)
        slope = float(np.polyfit(np.array(SHIFTS), mean, 1)[0])
        print(f"| {name} | " + " | ".join(f"{m:+.3f} ± {e:.3f}" for m, e in zip(mean, std)) + f" | {slope:.2f} |")


if __name__ == "__main__":
    main()
