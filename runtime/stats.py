"""Live statistics in constant memory: rates, per-stage times, latency percentiles.

Whole-session latency percentiles come from a fixed histogram (0.5 ms bins up to 5 s), the overlay's
"recent" numbers from bounded windows, so a session of any length uses the same memory.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["LatencyHistogram", "RateMeter", "StageTimes", "StatsSnapshot", "LiveStats", "speed_advice"]


class LatencyHistogram:
    """Counts of millisecond values in fixed bins; percentiles to within one bin.

    Args:
        bin_ms: bin width. max_ms: values above land in the last bin.
    """

    def __init__(self, bin_ms: float = 0.5, max_ms: float = 5000.0):
        self.bin_ms = float(bin_ms)
        self.counts = np.zeros(int(max_ms / bin_ms) + 1, np.int64)
        self.total = 0.0

    def add(self, ms: float) -> None:
        self.counts[min(int(max(ms, 0.0) / self.bin_ms), len(self.counts) - 1)] += 1
        self.total += ms

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in ms (bin centre); nan when empty."""
        n = self.count
        if n == 0:
            return float("nan")
        rank = max(1, int(np.ceil(q / 100.0 * n)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return (i + 0.5) * self.bin_ms

    @property
    def mean(self) -> float:
        n = self.count
        return self.total / n if n else float("nan")


class RateMeter:
    """Events per second over the last ``window_s`` seconds.

    Either one event per :meth:`tick`, or a running total passed as ``total`` (e.g. the index of the
    newest camera frame, which counts frames that were dropped before anyone saw them).
    """

    def __init__(self, window_s: float = 2.0, max_events: int = 1024):
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque(maxlen=max_events)
        self._total = 0

    def tick(self, t: float | None = None, total: int | None = None) -> None:
        self._total = self._total + 1 if total is None else int(total)
        self._events.append((time.monotonic() if t is None else t, self._total))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        if len(self._events) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._events[0], self._events[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class StageTimes:
    """Per-stage milliseconds: exponential moving average (overlay) and session mean (report)."""

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha
        self.recent: dict[str, float] = {}
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def add(self, timings_ms: dict[str, float]) -> None:
        for k, v in timings_ms.items():
            self.recent[k] = v if k not in self.recent else self.recent[k] + self.alpha * (v - self.recent[k])
            self._sum[k] = self._sum.get(k, 0.0) + v
            self._n[k] = self._n.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self._sum[k] / self._n[k] for k in self._sum}


@dataclass
class StatsSnapshot:
    """What the stats overlay shows.

    Attributes:
        camera_fps, process_fps, output_fps: recent rates (frames/s).
        stage_ms: recent per-stage times (landmarks, retarget, render, paste, ...).
        latency_p50_ms, latency_p99_ms: recent capture-to-output latency percentiles.
        dropped: camera frames dropped so far (processing slower than the camera).
    """

    camera_fps: float
    process_fps: float
    output_fps: float
    stage_ms: dict[str, float]
    latency_p50_ms: float
    latency_p99_ms: float
    dropped: int


class LiveStats:
    """Thread-safe counters of a live session (writers: processing and output threads)."""

    def __init__(self, recent: int = 300):
        self._lock = threading.Lock()
        self.camera = RateMeter()
        self.process = RateMeter()
        self.output = RateMeter()
        self.stages = StageTimes()
        self.latency = LatencyHistogram()
        self._recent_latency: deque[float] = deque(maxlen=recent)
        self.processed = 0
        self.no_face = 0
        self.outputs_new = 0
        self.outputs_repeated = 0

    def on_processed(self, timings_ms: dict[str, float], face_found: bool, frame_index: int,
                     t_capture: float) -> None:
        """A camera frame went through processing (``frame_index``: its capture number)."""
        with self._lock:
            self.processed += 1
            self.no_face += not face_found
            self.stages.add(timings_ms)
            self.process.tick()
            self.camera.tick(t_capture, frame_index + 1)

    def on_output(self, latency_ms: float | None) -> None:
        """An output frame went out; ``latency_ms`` for a new frame, None for a repeat."""
        with self._lock:
            self.output.tick()
            if latency_ms is None:
                self.outputs_repeated += 1
                return
            self.outputs_new += 1
            self.latency.add(latency_ms)
            self._recent_latency.append(latency_ms)

    def snapshot(self, dropped: int) -> StatsSnapshot:
        with self._lock:
            lat = np.asarray(self._recent_latency, np.float64)
            p50, p99 = (np.percentile(lat, [50, 99]) if lat.size else (float("nan"), float("nan")))
            return StatsSnapshot(self.camera.rate(), self.process.rate(), self.output.rate(),
                                 dict(self.stages.recent), float(p50), float(p99), dropped)


def speed_advice(snapshot: StatsSnapshot, size: int, renderer: str, device: str,
                 keep_up: float = 0.8) -> str | None:
    """A one-line hint when processing falls behind the camera, naming the slowest stage and the
    options that make the avatar cheaper; None when it keeps up (``process_fps >= keep_up * camera_fps``)
    or there is nothing to go on yet."""
    cam, proc = snapshot.camera_fps, snapshot.process_fps
    if not (cam > 0 and proc > 0) or proc >= keep_up * cam or not snapshot.stage_ms:
        return None
    stage, ms = max(snapshot.stage_ms.items(), key=lambda kv: kv[1])
    tips = []
    if size > 256:
        sr = snapshot.stage_ms.get("sr")
        tips.append("--size 256" + (f" (skips the {sr:.0f} ms super-resolution stage)" if sr else ""))
    if renderer == "neural":
        tips.append("--renderer mesh")
    if device == "cpu":
        tips.append("a GPU (--device cuda)")
    advice = f"; for a smoother avatar try {', or '.join(tips)}" if tips else ""
    return (f"processing {proc:.0f} frames/s, behind the camera's {cam:.0f}: the slowest stage is "
            f"{stage} ({ms:.0f} ms per frame){advice}")
