"""Drawing for the preview window: neutral-pose guide, stats panel, status banner, camera inset.

All functions draw on a copy and return ``(H, W, 3) uint8`` RGB; overlays only ever go to the
preview, never to the virtual camera or the recording.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from runtime.controls import HOTKEY_HELP
from runtime.stats import StatsSnapshot

__all__ = ["draw_guide", "draw_stats", "draw_banner", "draw_inset", "draw_points"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GREEN = (60, 220, 90)
_YELLOW = (250, 200, 40)
_WHITE = (255, 255, 255)


def _scale(img: np.ndarray) -> float:
    return max(0.4, min(img.shape[:2]) / 720.0)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour=_WHITE) -> None:
    th = max(1, round(scale * 2))
    cv2.putText(img, text, org, _FONT, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, colour, th, cv2.LINE_AA)


def draw_guide(img: np.ndarray, box: tuple[int, int, int, int], ok: bool, progress: float, hint: str) -> np.ndarray:
    """The face-alignment guide: corner brackets (green when the face is good), a progress bar, a hint.

    Args:
        img: ``(H, W, 3) uint8`` RGB camera frame.
        box: ``(x0, y0, x1, y1)`` guide box in ``img`` pixels.
        ok: the current frame is usable. progress: ``[0, 1]``. hint: what the user should do.
    """
    out = img.copy()
    x0, y0, x1, y1 = box
    colour = _GREEN if ok else _YELLOW
    s = _scale(out)
    th = max(2, round(3 * s))
    arm = (x1 - x0) // 5
    for cx, cy, dx, dy in ((x0, y0, 1, 1), (x1, y0, -1, 1), (x0, y1, 1, -1), (x1, y1, -1, -1)):
        cv2.line(out, (cx, cy), (cx + dx * arm, cy), colour, th, cv2.LINE_AA)
        cv2.line(out, (cx, cy), (cx, cy + dy * arm), colour, th, cv2.LINE_AA)
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    cv2.ellipse(out, centre, ((x1 - x0) * 2 // 5, (y1 - y0) * 9 // 20), 0, 0, 360, colour, max(1, th // 2), cv2.LINE_AA)
    h, w = out.shape[:2]
    bar_y = min(h - 8, y1 + round(16 * s))
    cv2.rectangle(out, (x0, bar_y), (x1, bar_y + round(8 * s)), (40, 40, 40), -1)
    cv2.rectangle(out, (x0, bar_y), (x0 + int((x1 - x0) * progress), bar_y + round(8 * s)), colour, -1)
    _text(out, hint, (max(4, x0), max(round(24 * s), y0 - round(12 * s))), 0.9 * s, colour)
    return out


def draw_stats(img: np.ndarray, stats: StatsSnapshot, extra: list[str] | None = None) -> np.ndarray:
    """A translucent panel top-left with rates, per-stage ms, latency and drops."""
    out = img.copy()
    stages = "  ".join(f"{k} {v:.1f}" for k, v in stats.stage_ms.items())
    lat = "-" if math.isnan(stats.latency_p50_ms) else f"{stats.latency_p50_ms:.0f} / {stats.latency_p99_ms:.0f}"
    lines = [f"camera {stats.camera_fps:.1f}  process {stats.process_fps:.1f}  output {stats.output_fps:.1f} fps",
             f"ms: {stages}",
             f"latency p50/p99 {lat} ms   dropped {stats.dropped}",
             *(extra or []), HOTKEY_HELP]
    s = 0.5 * _scale(out)
    line_h = round(22 * _scale(out))
    width = max(cv2.getTextSize(t, _FONT, s, 1)[0][0] for t in lines) + 16
    panel = out[:line_h * len(lines) + 12, :min(width, out.shape[1])]
    panel[:] = (panel * 0.45).astype(np.uint8)
    for i, t in enumerate(lines):
        _text(out, t, (8, line_h * (i + 1)), s)
    return out


def draw_banner(img: np.ndarray, text: str, colour=_YELLOW) -> np.ndarray:
    """A bar with ``text`` across the bottom of the frame."""
    out = img.copy()
    h, w = out.shape[:2]
    s = 0.7 * _scale(out)
    while s > 0.3 and cv2.getTextSize(text, _FONT, s, max(1, round(s * 2)))[0][0] > w - 20:
        s *= 0.9  # shrink long messages to fit the width
    bar = round(36 * _scale(out))
    out[h - bar:] = (out[h - bar:] * 0.35).astype(np.uint8)
    _text(out, text, (10, h - bar // 3), s, colour)
    return out


def draw_inset(img: np.ndarray, inset: np.ndarray, frac: float = 0.28) -> np.ndarray:
    """``inset`` scaled to ``frac`` of ``img``'s width, bottom-right, with a thin border."""
    out = img.copy()
    h, w = out.shape[:2]
    ih, iw = inset.shape[:2]
    new_w = max(8, int(w * frac))
    new_h = max(8, int(ih * new_w / iw))
    if new_h > h // 2:
        new_h = h // 2
        new_w = max(8, int(iw * new_h / ih))
    small = cv2.resize(inset, (new_w, new_h), interpolation=cv2.INTER_AREA)
    m = max(4, w // 80)
    y0, x0 = h - new_h - m, w - new_w - m
    out[y0:y0 + new_h, x0:x0 + new_w] = small
    cv2.rectangle(out, (x0 - 1, y0 - 1), (x0 + new_w, y0 + new_h), _WHITE, 1)
    return out


def draw_points(img: np.ndarray, points: np.ndarray, step: int = 4) -> np.ndarray:
    """Every ``step``-th landmark of ``points`` ``(N, 2|3)`` (image pixels) as a dot."""
    out = img.copy()
    for x, y in np.asarray(points)[::step, :2]:
        cv2.circle(out, (int(x), int(y)), 1, _GREEN, -1, cv2.LINE_AA)
    return out
