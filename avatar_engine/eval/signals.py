"""Facial-motion signals and how well an output transfers them (pure functions on numpy arrays).

A *signal* is one number per frame measured on mediapipe landmarks ``(478, 2|3)`` (x, y in pixels;
only x, y are used), normalised by the inter-ocular distance (outer eye corners 33 / 263, "IOD"):

=================  ===========================================================================
``mouth_open``     inner-lip opening: mean of the three vertical inner-lip gaps (13-14, 82-87, 312-317)
``eye_open_left``  left eyelid opening: mean of three lid gaps (386-374, 385-380, 387-373)
``eye_open_right`` right eyelid opening: mean of three lid gaps (159-145, 158-153, 160-144)
``gaze_x``         iris centres (468, 473) relative to the midpoint of their eye's corners, along the
                   eye-corner axis (33 -> 263, the face's "right" in the image), mean of both eyes
``gaze_y``         the same across the eye-corner axis (down positive)
``brow_height``    mean distance of the brow landmarks above the eye-corner line 33-263
``smile``          lip-corner distance 61-291
=================  ===========================================================================

*Transfer* of a signal from a reference sequence (the driver's ground truth, or the retargeted
target) to the output sequence, over the frames where both have a value:

* ``corr``: Pearson correlation (``nan`` when either sequence is constant or has < 3 frames);
* ``ratio``: amplitude ratio, standard deviation of the output / of the reference (1 = transferred
  fully, 0 = frozen). ``nan`` when the reference does not move (std below ``min_std``).

:func:`pooled_transfer` aggregates several sequences: each sequence's mean is removed, then the
statistics are taken over all frames together (a clip contributes in proportion to its motion and
length, and a clip where a signal barely moves cannot dominate with a noisy ratio).

Events:

* eyes closed (:func:`eyes_closed`): the mean eye opening is below ``closed_fraction`` of the
  sequence's own open level (its 90th percentile), so it works for small and large eyes alike;
* teeth visible (:func:`teeth_share`, :func:`teeth_visible`): the share of bright, low-saturation
  pixels (HSV saturation < 90/255, value > 120/255) inside the inner-lip polygon;
* :func:`event_score`: the share of the reference's event frames in which the output shows the
  event too (``nan`` when the reference has none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face import topology

__all__ = ["SIGNALS", "OPEN_EYE_SIGNALS", "EventConfig", "face_signals", "eye_open", "open_eyes_only", "teeth_share",
           "teeth_visible", "eyes_closed", "Transfer", "transfer", "pooled_transfer", "event_score"]

SIGNALS: tuple[str, ...] = ("mouth_open", "eye_open_left", "eye_open_right", "gaze_x", "gaze_y", "brow_height",
                            "smile")
"""Signal names in report order (see the module table)."""

OPEN_EYE_SIGNALS: tuple[str, ...] = ("gaze_x", "gaze_y")
"""Signals with no value while the driver's eyes are closed: behind closed lids there is no gaze, and
mediapipe's iris landmarks there are guesses that move with the blink (:func:`open_eyes_only`)."""

_OUTER_CORNERS = (33, 263)
_MOUTH_GAPS = ((13, 14), (82, 87), (312, 317))
_LEFT_LID_GAPS = ((386, 374), (385, 380), (387, 373))
_RIGHT_LID_GAPS = ((159, 145), (158, 153), (160, 144))
_EYES = ((topology.RIGHT_IRIS_CENTER, 33, 133), (topology.LEFT_IRIS_CENTER, 263, 362))  # iris, corner, corner
_BROWS = np.concatenate([topology.LEFT_BROW_IDX, topology.RIGHT_BROW_IDX])
_LIP_CORNERS = (61, 291)


@dataclass(frozen=True)
class EventConfig:
    """Thresholds of the blink and teeth events.

    Attributes:
        closed_fraction: eyes count as closed below this fraction of the sequence's open level.
        open_percentile: percentile of a sequence's eye opening taken as its open level.
        teeth_max_saturation, teeth_min_value: HSV (0..255) bounds of a "teeth" pixel.
        teeth_min_share: teeth are visible when at least this share of the mouth-opening pixels is teeth.
        teeth_min_area: ... and the opening's polygon has at least this area (pixels).
        closed_mouth: lips count as closed below this inner-lip gap (inter-ocular distances; a closed
            mouth reads 0.00-0.01 on real and rendered faces, lips apart at rest 0.05 and more).
    """

    closed_fraction: float = 0.5
    open_percentile: float = 90.0
    teeth_max_saturation: int = 90
    teeth_min_value: int = 120
    teeth_min_share: float = 0.1
    teeth_min_area: float = 12.0
    closed_mouth: float = 0.03


def _gap(p: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> float:
    return float(np.mean([np.linalg.norm(p[a] - p[b]) for a, b in pairs]))


def face_signals(points: np.ndarray) -> dict[str, float]:
    """The signals of one face (see the module table).

    Args:
        points: ``(478, 2|3)`` landmarks (pixels of any image; only x, y are used).
    Returns:
        ``{name: value}`` for every name of :data:`SIGNALS`, in inter-ocular distances.
    """
    p = np.asarray(points, np.float64)[:, :2]
    if p.shape[0] != topology.NUM_LANDMARKS:
        raise ValueError(f"points must be ({topology.NUM_LANDMARKS}, 2|3), got {np.shape(points)}")
    axis = p[_OUTER_CORNERS[1]] - p[_OUTER_CORNERS[0]]
    iod = max(float(np.linalg.norm(axis)), 1e-6)
    u = axis / iod
    n = np.array([-u[1], u[0]])  # perpendicular, pointing down the face when it is upright
    gaze = np.array([p[iris] - 0.5 * (p[a] + p[b]) for iris, a, b in _EYES]).mean(axis=0)
    brow = float(np.mean((p[_BROWS] - p[_OUTER_CORNERS[0]]) @ n))
    return {
        "mouth_open": _gap(p, _MOUTH_GAPS) / iod,
        "eye_open_left": _gap(p, _LEFT_LID_GAPS) / iod,
        "eye_open_right": _gap(p, _RIGHT_LID_GAPS) / iod,
        "gaze_x": float(gaze @ u) / iod,
        "gaze_y": float(gaze @ n) / iod,
        "brow_height": -brow / iod,
        "smile": float(np.linalg.norm(p[_LIP_CORNERS[0]] - p[_LIP_CORNERS[1]])) / iod,
    }


def eye_open(values: dict[str, float]) -> float:
    """Mean eye opening (IOD) of one face's :func:`face_signals`."""
    return 0.5 * (values["eye_open_left"] + values["eye_open_right"])


def open_eyes_only(signal: str, series: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """``series (T,)`` of ``signal`` as it is scored: ``nan`` on the driver's ``closed (T,) bool`` frames
    for :data:`OPEN_EYE_SIGNALS`, unchanged for the other signals."""
    out = np.asarray(series, np.float64)
    return np.where(closed, np.nan, out) if signal in OPEN_EYE_SIGNALS else out


def teeth_share(image: np.ndarray, points: np.ndarray, config: EventConfig = EventConfig()) -> tuple[float, float]:
    """Share of teeth-coloured pixels inside the inner-lip polygon.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        points: ``(478, 2|3)`` landmarks in that image's pixels.
    Returns:
        ``(share in [0, 1], area of the polygon in pixels)``; share 0 when no pixel centre is inside.
    """
    p = np.asarray(points, np.float64)[topology.INNER_LIPS_LOOP, :2]
    area = abs(float(cv2.contourArea(p.astype(np.float32))))
    mask = np.zeros(image.shape[:2], np.uint8)
    shift = 4
    cv2.fillPoly(mask, [np.round((p - 0.5) * (1 << shift)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=shift)
    inside = mask.astype(bool)
    if not inside.any():
        return 0.0, area
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)[inside]
    teeth = (hsv[:, 1] < config.teeth_max_saturation) & (hsv[:, 2] > config.teeth_min_value)
    return float(teeth.mean()), area


def teeth_visible(image: np.ndarray, points: np.ndarray, config: EventConfig = EventConfig()) -> bool:
    """Whether the mouth shows teeth (see :class:`EventConfig`)."""
    share, area = teeth_share(image, points, config)
    return area >= config.teeth_min_area and share >= config.teeth_min_share


def eyes_closed(eye_open: np.ndarray, config: EventConfig = EventConfig()) -> np.ndarray:
    """Closed-eye frames of one sequence.

    Args:
        eye_open: ``(T,)`` mean eye opening per frame (``nan`` where no face).
    Returns:
        ``(T,) bool``: opening below ``closed_fraction`` of the sequence's open level.
    """
    x = np.asarray(eye_open, np.float64)
    valid = np.isfinite(x)
    if not valid.any():
        return np.zeros(x.shape, bool)
    level = np.percentile(x[valid], config.open_percentile)
    return valid & (x < config.closed_fraction * level)


@dataclass(frozen=True)
class Transfer:
    """How an output sequence follows a reference sequence of one signal.

    Attributes:
        corr: Pearson correlation output vs reference.
        ratio: std(output) / std(reference).
        frames: frames used.
    """

    corr: float
    ratio: float
    frames: int


def _stats(ref: np.ndarray, out: np.ndarray, min_std: float) -> Transfer:
    n = len(ref)
    if n < 3:
        return Transfer(math.nan, math.nan, n)
    sr, so = float(ref.std()), float(out.std())
    ratio = so / sr if sr >= min_std else math.nan
    corr = float(np.mean(ref * out) / (sr * so)) if sr > 0 and so > 0 else math.nan
    return Transfer(corr, ratio, n)


def _valid(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, o = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if r.shape != o.shape or r.ndim != 1:
        raise ValueError(f"sequences must be 1-D of one length, got {r.shape} and {o.shape}")
    keep = np.isfinite(r) & np.isfinite(o)
    return r[keep], o[keep]


def transfer(ref: np.ndarray, out: np.ndarray, min_std: float = 1e-4) -> Transfer:
    """Transfer of one signal, ``(T,)`` reference vs ``(T,)`` output (``nan`` frames skipped)."""
    r, o = _valid(ref, out)
    return _stats(r - r.mean() if len(r) else r, o - o.mean() if len(o) else o, min_std)


def pooled_transfer(pairs: list[tuple[np.ndarray, np.ndarray]], min_std: float = 1e-4) -> Transfer:
    """Transfer over several ``(reference, output)`` sequences, each de-meaned, then pooled."""
    refs, outs = [], []
    for ref, out in pairs:
        r, o = _valid(ref, out)
        if len(r):
            refs.append(r - r.mean())
            outs.append(o - o.mean())
    if not refs:
        return Transfer(math.nan, math.nan, 0)
    return _stats(np.concatenate(refs), np.concatenate(outs), min_std)


def event_score(ref_events: np.ndarray, out_events: np.ndarray) -> tuple[float, int]:
    """Share of the reference's event frames where the output has the event too.

    Returns:
        ``(share, reference event frames)``; share is ``nan`` without reference events.
    """
    r, o = np.asarray(ref_events, bool), np.asarray(out_events, bool)
    count = int(r.sum())
    return (float((r & o).sum() / count) if count else math.nan), count
