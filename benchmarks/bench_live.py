"""Live-engine throughput and latency: a val clip played as a 30 fps webcam, headless.

    python benchmarks/bench_live.py [--clip PATH] [--source PATH] [--seconds 20] [--sizes 256 512]
                                    [--renderer mesh] [--threads N]

Runs the whole live path of ``avatar-engine start`` (capture thread reading the clip in real time,
processing thread, paced output to a virtual camera at 1280x720, 30 fps) for ``--seconds`` at each
size and prints a markdown table: processed frames/s, capture-to-output latency p50/p99, camera
frames dropped (processing busy), CPU time per frame of the whole process (steady state; what the
engine costs whatever else the machine runs), and per-stage wall ms. The load average is printed
with it: on a shared machine the wall-clock numbers depend on it. The virtual camera is a pyvirtualcam backend
that discards frames (no v4l2loopback device here), so the fit-to-1280x720 work is included but not
the kernel copy (well under a millisecond).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pyvirtualcam  # noqa: E402

from machine import machine  # noqa: E402
from runtime.engine import LiveConfig, LiveEngine, LiveReport  # noqa: E402
from runtime.sinks import FrameSink, OutputInfo  # noqa: E402
from runtime.vcam import VirtualCameraConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class DiscardBackend:
    """A pyvirtualcam backend that accepts frames and drops them (stands in for /dev/video10)."""

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw):
        self.shape = (width * height * 3,)
        self.fourcc = fourcc

    def send(self, frame: np.ndarray) -> None:
        assert frame.shape == self.shape

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "discard"

    def native_fourcc(self) -> int:
        return self.fourcc


class CpuMeter(FrameSink):
    """Process CPU time (all threads) per processed frame, from 5 s into the run to its end (steady state)."""

    def __init__(self) -> None:
        self.engine: LiveEngine | None = None
        self.t0: float | None = None
        self.start: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def _sample(self) -> tuple[float, int]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime, self.engine.stats.processed

    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        self.t0 = info.t_output if self.t0 is None else self.t0
        if info.t_output - self.t0 >= 5.0:
            self.last = self._sample()
            self.start = self.start or self.last

    def ms_per_frame(self) -> float:
        if self.start is None or self.last is None or self.last[1] == self.start[1]:
            return float("nan")
        return 1e3 * (self.last[0] - self.start[0]) / (self.last[1] - self.start[1])


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run(clip: Path, source: Path, size: int, seconds: float, renderer: str,
        threads: int | None) -> tuple[LiveReport, float]:
    """One headless session; returns its report and the CPU ms (all threads) per processed frame."""
    meter = CpuMeter()
    cfg = LiveConfig(source=source, camera=clip, loop=True, realtime=True, renderer=renderer, size=size,
                     threads=threads, preview=False, virtual_camera=True, output_fps=30.0, sinks=[meter],
                     vcam=VirtualCameraConfig(width=1280, height=720, backend="discard"), duration_s=seconds)
    engine = LiveEngine(cfg)
    meter.engine = engine
    return engine.run(), meter.ms_per_frame()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=DATA / "clips/val/P048/C077.mp4", help="30 fps val clip")
    ap.add_argument("--source", type=Path, default=DATA / "images/val/P152/I036.png")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--renderer", default="mesh")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    pyvirtualcam.register_backend("discard", DiscardBackend)

    rows = []
    load_before = load_average()
    t0 = time.monotonic()
    for size in args.sizes:
        r, cpu_ms = run(args.clip, args.source, size, args.seconds, args.renderer, args.threads)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_ms.items())
        drop = 100.0 * r.dropped_camera / max(r.frames_captured + r.dropped_camera, 1)
        rows.append(f"| {size} | {r.fps:.1f} | {r.latency_p50_ms:.0f} | {r.latency_p99_ms:.0f} | "
                    f"{r.dropped_camera} ({drop:.0f} %) | {cpu_ms:.0f} | {stages} |")
    print(f"machine: {machine(args.threads)}; load average (1/5/15 min) before {load_before}, after {load_average()} "
          f"({time.monotonic() - t0:.0f} s)")
    print(f"camera: {args.clip.name} at 30 fps (real-time playback), source {args.source.name}, "
          f"renderer {args.renderer}, {args.seconds:g} s per size, virtual camera 1280x720 @ 30 fps")
    print()
    print("| size | frames/s | latency p50 ms | latency p99 ms | dropped camera frames | CPU ms/frame (all threads) | "
          "per-stage ms (wall) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
