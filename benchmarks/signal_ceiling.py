"""How far the eval's motion-transfer correlations can go: the driver's own landmark streams against
the ground truth as `avatar-engine eval` measures it.

In self-reenactment, eval reads each signal (``avatar_engine/eval/signals.py``) from mediapipe in
static mode on the ground-truth crop, while the engine is driven by mediapipe's tracker on the whole
driving frame (One-Euro smoothed). A renderer that reproduced the tracker's landmarks perfectly would
still score only as well as these two readings of the same frames agree. This prints, pooled over the
val clips like eval (each clip de-meaned), correlation / amplitude ratio of:

* ``tracker``: the engine's driving landmarks (tracking, smoothed: the default);
* ``tracker raw``: the same without smoothing;
* ``static frame``: static mode on the whole frame (same mode as the ground truth, other framing);
* ``static crop +1px``: static mode on the ground-truth crop shifted by one pixel (the detector's
  own repeatability).

    python3 benchmarks/signal_ceiling.py [--frames 30]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

from avatar_engine.eval import signals as sig  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
READINGS = ("tracker", "tracker raw", "static frame", "static crop +1px")


def clip_readings(path: Path, frames: int, static: LandmarkDetector) -> dict[str, list[np.ndarray | None]]:
    """Per reading (``"gt"`` and :data:`READINGS`), the ``(478, 3)`` landmarks of each scored frame."""
    decoded = list(iter_frames(path, max_frames=frames + 1))
    rgb0, t0 = decoded[0]
    source = prepare_source(rgb0, SourceConfig(size=256, max_side=max(rgb0.shape[:2])))
    out: dict[str, list[np.ndarray | None]] = {k: [] for k in ("gt", *READINGS)}
    with LandmarkDetector(LandmarkConfig(), static=False) as smooth, \
            LandmarkDetector(LandmarkConfig(smoothing=False), static=False) as raw:
        smooth.detect(rgb0, t0)
        raw.detect(rgb0, t0)
        for rgb, t in decoded[1:]:
            crop = source.crop.crop_image(rgb)
            out["gt"].append(static.detect(crop))
            out["tracker"].append(smooth.detect(rgb, t))
            out["tracker raw"].append(raw.detect(rgb, t))
            out["static frame"].append(static.detect(rgb))
            out["static crop +1px"].append(static.detect(np.ascontiguousarray(np.roll(crop, 1, axis=1))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--frames", type=int, default=30, help="scored frames per clip (eval's --max-frames-per-clip)")
    args = ap.parse_args()
    clips = sorted(p for p in (args.data / "clips" / "val").glob("*/*") if p.suffix in (".mp4", ".mov"))
    series: dict[str, dict[str, list[np.ndarray]]] = {k: {s: [] for s in sig.SIGNALS} for k in ("gt", *READINGS)}
    closed: list[np.ndarray] = []  # per clip, the ground truth's closed-eye frames (gaze is not scored there)
    with LandmarkDetector(LandmarkConfig(), static=True) as static:
        for path in clips:
            for k, points in clip_readings(path, args.frames, static).items():
                values = [sig.face_signals(p) if p is not None else None for p in points]
                for s in sig.SIGNALS:
                    series[k][s].append(np.array([v[s] if v else np.nan for v in values]))
                if k == "gt":
                    closed.append(sig.eyes_closed(np.array([sig.eye_open(v) if v else np.nan for v in values])))
            print(f"{path.stem}", file=sys.stderr, flush=True)
    print(f"machine: {machine()}; {len(clips)} val clips, {args.frames} frames each\n")
    print("| signal | " + " | ".join(READINGS) + " |")
    print("|---|" + "---|" * len(READINGS))
    for s in sig.SIGNALS:
        refs = [sig.open_eyes_only(s, r, c) for r, c in zip(series["gt"][s], closed)]  # as eval scores them
        cells = []
        for k in READINGS:
            t = sig.pooled_transfer(list(zip(refs, series[k][s])))
            cells.append(f"{t.corr:.2f} / {t.ratio:.2f}")
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
