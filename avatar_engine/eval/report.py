"""Evaluation report files: JSON (all numbers), markdown (tables), PNG (contact sheet).

``write_report(result, "reports/val.json")`` writes ``reports/val.json``, ``reports/val.md`` and
``reports/val.png``. The JSON holds the options, library versions, per-clip / per-pair scores and
the aggregates, with floats rounded to 5 decimals (``inf`` written as the string ``"inf"``, ``nan``
as ``null``) and keys in a fixed order, so a rerun writes the same bytes. ``"complete"`` is false in
the partial reports a run writes after every finished clip / pair (``write_report(..., partial=True)``:
the JSON only, replaced atomically), true in the final one.
"""
from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.io.image import write_image
from avatar_engine.eval.motion import TRANSFER_SIGNALS
from avatar_engine.eval.runner import CROSS_METRICS, SELF_METRICS, EvalResult, SequenceReport

__all__ = ["ReportPaths", "report_dict", "markdown_report", "summary_lines", "contact_sheet", "write_report"]

_DECIMALS = 5
_PERCENT = {"same_person_gt", "same_person_source", "output_no_face"}
_TWO_DECIMALS = {"psnr", "blink_score", "teeth_score", "lips_closed_score"}


@dataclass(frozen=True)
class ReportPaths:
    """The files :func:`write_report` wrote."""

    json: Path
    markdown: Path
    sheet: Path


def _clean(value: object) -> object:
    """JSON-ready copy: rounded floats, ``"inf"`` / ``"-inf"`` for infinities, ``None`` for nan."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return round(v, _DECIMALS)
    return value


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "opencv": cv2.__version__}
    for dist in ("avatar-engine", "numpy", "torch", "mediapipe", "dlib-bin"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _sequence_dict(report: SequenceReport) -> dict[str, object]:
    key = "clip" if report.kind == "self" else "pair"
    return {key: report.item, **report.info, "metrics": report.metrics}


def report_dict(result: EvalResult, complete: bool = True) -> dict[str, object]:
    """The whole report as a JSON-ready dict (see the module docstring); ``complete=False``: the
    result of a run still going (the items finished so far)."""
    frames = sum(int(r.info["frames"]) for r in result.self_reports)
    return _clean({
        "complete": complete,
        "config": result.config.describe(),
        "versions": _versions(),
        "self_reenactment": {
            "clips_evaluated": len(result.self_reports),
            "frames_evaluated": frames,
            "aggregate": result.aggregate("self"),
            "clips": [_sequence_dict(r) for r in result.self_reports],
        },
        "cross_reenactment": {
            "pairs_evaluated": len(result.cross_reports),
            "aggregate": result.aggregate("cross"),
            "pairs": [_sequence_dict(r) for r in result.cross_reports],
        },
        "failures": [{"kind": f.kind, "item": f.item, "reason": f.reason} for f in result.failures],
    })


def _fmt(key: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    if key in _PERCENT:
        return f"{100.0 * value:.1f} %"
    if key in _TWO_DECIMALS or key.endswith("_error") and key != "expression_error":
        return f"{value:.2f}"
    return f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


_SIGNAL_LABELS = {
    "mouth_open": "mouth opening (inner lips)", "eye_open_left": "eye opening, left", "eye_open_right":
    "eye opening, right", "gaze_x": "gaze, horizontal", "gaze_y": "gaze, vertical", "brow_height": "brow height",
    "smile": "lip-corner distance (smile)",
}
_PER_SEQUENCE_SIGNALS = ("mouth_open", "eye_open_left", "eye_open_right", "gaze_x", "brow_height")


def _pair(metrics: dict[str, float], signal: str) -> str:
    """``"corr / ratio"`` of one signal."""
    return " / ".join("–" if math.isnan(v := metrics[f"{signal}_{stat}"]) else f"{v:.2f}" for stat in ("corr", "ratio"))


def _motion_section(result: EvalResult, kind: str) -> list[str]:
    """Markdown of the motion transfer of one kind: pooled table, then per sequence."""
    names = list(result.config.renderers)
    reports = result.self_reports if kind == "self" else result.cross_reports
    if not reports:
        return []
    agg = result.aggregate(kind)
    ref = "the ground truth" if kind == "self" else "the retargeted target"
    closed = sum(int(r.info.get("closed_eye_frames", 0)) for r in reports)
    teeth = sum(int(r.info.get("teeth_frames", 0)) for r in reports)
    lips = sum(int(r.info.get("closed_lip_frames", 0)) for r in reports)
    lines = [f"## Motion transfer, {kind}-reenactment (output vs {ref}; pooled over the sequences)", "",
             "Each cell: correlation / amplitude ratio (std of the output over std of the reference; 1 = full, "
             "0 = frozen). Signals in inter-ocular distances, from mediapipe landmarks of output and reference; "
             "gaze only on the frames where the driver's eyes are open.", ""]
    rows = [[_SIGNAL_LABELS[s]] + [_pair(agg[n], s) for n in names] for s in TRANSFER_SIGNALS]
    rows.append([f"blink score ({closed} closed-eye driver frames) ↑"] + [_fmt("blink_score", agg[n]["blink_score"]) for n in names])
    rows.append([f"teeth score ({teeth} teeth-visible driver frames) ↑"] +
                [_fmt("teeth_score", agg[n]["teeth_score"]) for n in names])
    rows.append([f"closed-lips score ({lips} closed-lip driver frames) ↑"] +
                [_fmt("lips_closed_score", agg[n]["lips_closed_score"]) for n in names])
    lines += _table(["signal"] + names, rows) + [""]
    header = ["clip" if kind == "self" else "photo/driver", "renderer"] + \
        [_SIGNAL_LABELS[s] for s in _PER_SEQUENCE_SIGNALS] + ["blink", "teeth", "closed lips"]
    rows = [[r.item, n] + [_pair(r.metrics[n], s) for s in _PER_SEQUENCE_SIGNALS] +
            [f"{_fmt('blink_score', r.metrics[n]['blink_score'])} ({r.info.get('closed_eye_frames', 0)})",
             f"{_fmt('teeth_score', r.metrics[n]['teeth_score'])} ({r.info.get('teeth_frames', 0)})",
             f"{_fmt('lips_closed_score', r.metrics[n]['lips_closed_score'])} ({r.info.get('closed_lip_frames', 0)})"]
            for r in reports for n in names]
    return lines + [f"Per {'clip' if kind == 'self' else 'pair'} (blink / teeth / closed lips: score (driver event "
                    "frames)):", ""] + \
        _table(header, rows) + [""]


def markdown_report(result: EvalResult) -> str:
    """Markdown: aggregate tables with the renderers side by side, per-clip table, failures."""
    cfg = result.config
    names = list(cfg.renderers)
    frames = sum(int(r.info["frames"]) for r in result.self_reports)
    lines = [f"# Evaluation: split `{cfg.split}`, renderers {', '.join(f'`{n}`' for n in names)}", "",
             f"Data `{cfg.data}`, crop {cfg.size} px, at most {cfg.max_frames_per_clip or 'all'} frames per clip, "
             f"identity on every {cfg.identity_every}th frame.", ""]
    if result.self_reports:
        agg = result.aggregate("self")
        lines += [f"## Self-reenactment ({len(result.self_reports)} clips, {frames} frames; mean over clips)", ""]
        lines += _table(["metric"] + names, [[label] + [_fmt(k, agg[n][k]) for n in names] for k, label in SELF_METRICS])
        lines += [""]
    if result.cross_reports:
        agg = result.aggregate("cross")
        lines += [f"## Cross-reenactment ({len(result.cross_reports)} photo/driver pairs; mean over pairs)", ""]
        lines += _table(["metric"] + names, [[label] + [_fmt(k, agg[n][k]) for n in names] for k, label in CROSS_METRICS])
        lines += [""]
    if result.self_reports:
        keys = ("psnr", "ssim", "l1_mouth", "identity_gt", "expression_error", "yaw_error", "flicker_ratio")
        labels = dict(SELF_METRICS)
        lines += ["## Self-reenactment per clip", ""]
        rows = [[r.item, str(r.info["identity"]), str(r.info["frames"]), n] + [_fmt(k, r.metrics[n][k]) for k in keys]
                for r in result.self_reports for n in names]
        lines += _table(["clip", "identity", "frames", "renderer"] + [labels[k] for k in keys], rows) + [""]
    if result.cross_reports:
        keys = ("identity_source", "expression_error", "yaw_error")
        labels = dict(CROSS_METRICS)
        lines += ["## Cross-reenactment per pair", ""]
        rows = [[r.item, str(r.info["frames"]), n] + [_fmt(k, r.metrics[n][k]) for k in keys]
                for r in result.cross_reports for n in names]
        lines += _table(["photo/driver", "frames", "renderer"] + [labels[k] for k in keys], rows) + [""]
    lines += _motion_section(result, "self") + _motion_section(result, "cross")
    lines += ["## Failures", ""]
    lines += [f"- {f.kind} `{f.item}`: {f.reason}" for f in result.failures] or ["none"]
    return "\n".join(lines) + "\n"


def summary_lines(result: EvalResult) -> list[str]:
    """A few console lines: the headline aggregates per renderer, and the failures."""
    lines = []
    self_agg = result.aggregate("self") if result.self_reports else None
    cross_agg = result.aggregate("cross") if result.cross_reports else None
    for n in result.config.renderers:
        parts = []
        if self_agg:
            a = self_agg[n]
            parts.append(f"self: PSNR {_fmt('psnr', a['psnr'])} dB, SSIM {_fmt('ssim', a['ssim'])}, "
                         f"ID->GT {_fmt('identity_gt', a['identity_gt'])}, "
                         f"expr {_fmt('expression_error', a['expression_error'])}, "
                         f"flicker x{_fmt('flicker_ratio', a['flicker_ratio'])}, "
                         f"mouth {_pair(a, 'mouth_open')}, gaze {_pair(a, 'gaze_x')}, "
                         f"blink {_fmt('blink_score', a['blink_score'])}, teeth {_fmt('teeth_score', a['teeth_score'])}")
        if cross_agg:
            a = cross_agg[n]
            parts.append(f"cross: ID->source {_fmt('identity_source', a['identity_source'])}, "
                         f"expr {_fmt('expression_error', a['expression_error'])}")
        lines.append(f"{n}: " + "; ".join(parts))
    lines += [f"excluded {f.kind} {f.item}: {f.reason}" for f in result.failures]
    return lines


def _wrap(label: str, width: int = 26) -> list[str]:
    """A label split at ': ' when too long for one line of the label column."""
    return label.split(": ", 1) if len(label) > width and ": " in label else [label]


def contact_sheet(result: EvalResult, self_items: int = 4, cross_items: int = 2) -> np.ndarray:
    """``(H, W, 3) uint8`` sheet: for the first clips / pairs, rows of GT (or driver) and outputs.

    Each row is a label followed by the frames the runner kept: evenly spaced over the sequence, then
    the motion moments (reference and outputs side by side at the widest mouth, the most sideways
    gaze and the most closed eyes).
    """
    cfg = result.config
    side, label_w, gap = cfg.sheet_thumb, 200, 6
    groups = [r.sheet for r in result.self_reports[:self_items]] + [r.sheet for r in result.cross_reports[:cross_items]]
    columns = max([cfg.sheet_frames] + [len(row.frames) for rows in groups for row in rows])
    width = label_w + columns * side
    blocks: list[np.ndarray] = []
    for rows in groups:
        for row in rows:
            strip = np.full((side, width, 3), 40, np.uint8)
            for k, part in enumerate(_wrap(row.label)):
                cv2.putText(strip, part, (6, side // 2 + 5 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                            (255, 255, 255), 1, cv2.LINE_AA)
            for j, frame in enumerate(row.frames[:columns]):
                strip[:, label_w + j * side: label_w + (j + 1) * side] = frame
            blocks.append(strip)
        blocks.append(np.full((gap, width, 3), 255, np.uint8))
    if not blocks:
        return np.full((side, width, 3), 40, np.uint8)
    return np.concatenate(blocks[:-1], axis=0)


def write_report(result: EvalResult, output: str | Path, partial: bool = False) -> ReportPaths:
    """Write ``output`` (JSON) and, next to it, the ``.md`` table and the ``.png`` contact sheet.

    ``partial=True``: only the JSON, marked ``"complete": false`` (a run's result so far). The JSON
    is written to a temporary file in the same folder and renamed over ``output``, so a reader (or a
    run killed mid-write) never sees a truncated file.
    """
    out = Path(output)
    if out.suffix.lower() != ".json":
        out = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(out, out.with_suffix(".md"), out.with_suffix(".png"))
    text = json.dumps(report_dict(result, complete=not partial), indent=1, ensure_ascii=False, allow_nan=False)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, out)
    if partial:
        return paths
    paths.markdown.write_text(markdown_report(result), encoding="utf-8")
    write_image(paths.sheet, contact_sheet(result))
    return paths
