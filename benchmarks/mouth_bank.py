"""The mouth bank on val identities: a person's own mouth interiors vs the procedural teeth, on unseen frames.

    python benchmarks/mouth_bank.py [--tasks P120 P029 P004] [--renderers mesh neural] [--out reports/mouth_bank]

The tasks of ``benchmarks/personalization.py`` (the prepared val cache): the bank is built from the
adaptation frames (:func:`calibration.personalize.personalize_bank`, enroll's defaults) and scored on the
other frames of the same person (:func:`calibration.personalize.score_mouth_bank`: each segment's first
frame driven by every 3rd other frame; mouth L1 in the evaluation's mouth region and how often the
output shows teeth exactly when the real frame does). Writes ``results.json`` and ``sheet.jpg`` (per
task and renderer, the widest-open frames zoomed on the mouth: procedural | own interiors | real frame)
to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avatar_engine.data.prepare import default_cache_dir  # noqa: E402
from avatar_engine.geometry.mouth_bank import MouthBankConfig, build_mouth_bank  # noqa: E402
from avatar_engine.io.image import write_image  # noqa: E402
from calibration.personalize import score_mouth_bank  # noqa: E402
from machine import machine  # noqa: E402
from personalization import TASKS, task_clips  # noqa: E402


def _zoom(image: np.ndarray, centre: np.ndarray, half: int = 40, side: int = 128) -> np.ndarray:
    x, y = (int(v) for v in centre)
    h, w = image.shape[:2]
    x, y = min(max(x, half), w - half), min(max(y, half), h - half)
    return cv2.resize(image[y - half:y + half, x - half:x + half], (side, side), interpolation=cv2.INTER_CUBIC)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["P120", "P029", "P004"], choices=sorted(TASKS))
    ap.add_argument("--renderers", nargs="+", default=["mesh", "neural"], choices=("mesh", "neural"))
    ap.add_argument("--columns", type=int, default=6, help="widest-open frames per sheet row")
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "mouth_bank")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": machine(args.threads), "config": MouthBankConfig().__dict__, "tasks": {}}
    blocks = []
    for name in args.tasks:
        adapt, held = task_clips(args.cache, name, 30.0)
        t = time.perf_counter()
        bank = build_mouth_bank((np.asarray(c.frames[i]), np.asarray(c.landmarks[i]))
                                for c in adapt for i in range(len(c)))
        build_s = time.perf_counter() - t
        if bank is None:
            results["tasks"][name] = {"exemplars": 0}
            continue
        entry = {"exemplars": len(bank), "build_s": round(build_s, 2), "adapt_frames": sum(len(c) for c in adapt)}
        for renderer in args.renderers:
            metrics, frames = score_mouth_bank(bank, held, renderer=renderer, keep=args.columns)
            entry[renderer] = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
            print(name, renderer, entry[renderer], flush=True)
            cols = []
            for _, a, b, truth, points in frames:
                centre = points[[61, 291, 0, 17], :2].mean(axis=0)  # lip corners, upper and lower lip
                cols.append(np.concatenate([_zoom(x, centre) for x in (a, b, truth)], axis=0))
            if cols:
                block = np.concatenate(cols, axis=1)
                cv2.putText(block, f"{name} {renderer}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1)
                blocks.append(block)
        results["tasks"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if blocks:
        width = max(b.shape[1] for b in blocks)
        sheet = np.concatenate([np.pad(b, ((0, 4), (0, width - b.shape[1]), (0, 0))) for b in blocks], axis=0)
        write_image(args.out / "sheet.jpg", sheet)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'sheet.jpg'}")


if __name__ == "__main__":
    main()
