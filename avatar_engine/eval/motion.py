"""Motion transfer of one evaluated sequence: the face signals of the reference and of each output.

:class:`MotionTrack` is filled frame by frame by the evaluation runner (``begin_frame`` with the
reference, then ``add_output`` once per renderer) and then gives per-renderer scores
(:meth:`MotionTrack.scores`); :func:`aggregate_motion` pools several tracks (see
:mod:`avatar_engine.eval.signals` for the signals, the transfer statistics and the events).

* The *transfer reference* is the face whose signals the output should reproduce: the ground
  truth's landmarks in self-reenactment, the retargeted target landmarks in cross-reenactment.
* The *event reference* is the driver: its closed-eye, closed-lip and teeth-visible frames, measured
  on the driver's image and landmarks (the ground-truth crop in self-reenactment).
* Gaze (:data:`~avatar_engine.eval.signals.OPEN_EYE_SIGNALS`) is scored only on the frames where the
  driver's eyes are open (not :meth:`MotionTrack.closed`): behind closed lids there is no gaze, and mediapipe's iris landmarks there
  are guesses that move with the blink (on val driver C054 one blink made 4 frames of "gaze" three times
  the rest of the clip's range).
* Moments: the frames with the reference's widest mouth, most sideways gaze (farthest from its
  first value, among the frames whose driver's eyes are open as far as the sequence has been seen) and
  most closed eyes; their thumbnails (reference + outputs) are kept for the
  contact sheet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avatar_engine.eval import signals as sig

__all__ = ["MOTION_METRICS", "MOMENTS", "Moment", "MotionTrack", "aggregate_motion"]

TRANSFER_SIGNALS = sig.SIGNALS
MOTION_METRICS: tuple[tuple[str, str], ...] = tuple(
    (f"{s}_{stat}", f"{s} {label}") for s in TRANSFER_SIGNALS
    for stat, label in (("corr", "correlation ↑"), ("ratio", "amplitude ratio (1 = full)"))
) + (("blink_score", "blink score ↑"), ("teeth_score", "teeth score ↑"), ("lips_closed_score", "closed-lips score ↑"))
"""Per-renderer motion metrics: (key, label)."""

MOMENTS: tuple[str, ...] = ("mouth", "gaze", "blink")
"""Contact-sheet moments: widest mouth, most sideways gaze, most closed eyes (of the reference)."""


@dataclass
class Moment:
    """The frame of a sequence that is most extreme for one criterion, and its thumbnails.

    Attributes:
        name: one of :data:`MOMENTS`.
        value: the criterion at that frame (higher = more extreme); ``-inf`` before any frame.
        frame: frame index, or -1.
        thumbs: reference thumbnail first, then one per renderer (in the order they were added).
    """

    name: str
    value: float = -math.inf
    frame: int = -1
    thumbs: list[np.ndarray] = field(default_factory=list)


class MotionTrack:
    """Signals, events and moments of one sequence (see the module docstring).

    Args:
        renderers: renderer names, in the order their outputs are added each frame.
        events: blink / teeth / closed-lips thresholds.
    """

    def __init__(self, renderers: tuple[str, ...], events: sig.EventConfig = sig.EventConfig()):
        self.renderers = tuple(renderers)
        self.events = events
        nan = {s: math.nan for s in TRANSFER_SIGNALS}
        self._nan = nan
        self.reference: list[dict[str, float]] = []
        self.outputs: dict[str, list[dict[str, float]]] = {n: [] for n in self.renderers}
        self.ref_eye: list[float] = []
        self.out_eye: dict[str, list[float]] = {n: [] for n in self.renderers}
        self.ref_teeth: list[bool] = []
        self.ref_mouth: list[float] = []
        self.out_teeth: dict[str, list[bool]] = {n: [] for n in self.renderers}
        self.moments = {m: Moment(m) for m in MOMENTS}
        self._capturing: list[Moment] = []
        self._gaze0: float | None = None

    @property
    def frames(self) -> int:
        return len(self.reference)

    def begin_frame(self, ref_points: np.ndarray | None, event_image: np.ndarray | None,
                    event_points: np.ndarray | None, thumb: np.ndarray | None = None) -> None:
        """Start a frame.

        Args:
            ref_points: ``(478, 2|3)`` transfer-reference landmarks, or None (no face).
            event_image: ``(H, W, 3) uint8`` driver image for the teeth event (None: no face).
            event_points: ``(478, 2|3)`` driver landmarks in ``event_image`` pixels, or None.
            thumb: reference thumbnail for the contact-sheet moments.
        """
        values = sig.face_signals(ref_points) if ref_points is not None else self._nan
        self.reference.append(values)
        ev = sig.face_signals(event_points) if event_points is not None else None
        self.ref_eye.append(sig.eye_open(ev) if ev is not None else math.nan)
        self.ref_mouth.append(ev["mouth_open"] if ev is not None else math.nan)
        self.ref_teeth.append(event_image is not None and event_points is not None
                              and sig.teeth_visible(event_image, event_points, self.events))
        self._capturing = []
        if ref_points is None or thumb is None:
            return
        extremes = {"mouth": values["mouth_open"], "blink": -sig.eye_open(values)}
        if not sig.eyes_closed(np.asarray(self.ref_eye), self.events)[-1]:  # gaze behind closed lids: none
            if self._gaze0 is None:
                self._gaze0 = values["gaze_x"]
            extremes["gaze"] = abs(values["gaze_x"] - self._gaze0)
        for name, value in extremes.items():
            m = self.moments[name]
            if value > m.value:
                m.value, m.frame, m.thumbs = value, self.frames - 1, [thumb]
                self._capturing.append(m)

    def add_output(self, name: str, image: np.ndarray, points: np.ndarray | None,
                   thumb: np.ndarray | None = None) -> None:
        """The output of renderer ``name`` for the current frame (``points`` None: no face found on it)."""
        values = sig.face_signals(points) if points is not None else self._nan
        self.outputs[name].append(values)
        self.out_eye[name].append(sig.eye_open(values))
        self.out_teeth[name].append(points is not None and sig.teeth_visible(image, points, self.events))
        if thumb is not None:
            for m in self._capturing:
                m.thumbs.append(thumb)

    def series(self, name: str | None, signal: str) -> np.ndarray:
        """``(T,)`` values of ``signal`` for renderer ``name`` (None: the reference)."""
        rows = self.reference if name is None else self.outputs[name]
        return np.array([r[signal] for r in rows], np.float64)

    def transfer_pair(self, name: str, signal: str) -> tuple[np.ndarray, np.ndarray]:
        """``(reference, output)`` ``(T,)`` series of ``signal`` as scored (:func:`~avatar_engine.eval.signals.
        open_eyes_only`: gaze only where the driver's eyes are open)."""
        closed = self.closed(None)
        return (sig.open_eyes_only(signal, self.series(None, signal), closed),
                sig.open_eyes_only(signal, self.series(name, signal), closed))

    def closed(self, name: str | None) -> np.ndarray:
        """``(T,) bool`` closed-eye frames of the driver (``name`` None) or of an output."""
        return sig.eyes_closed(np.asarray(self.ref_eye if name is None else self.out_eye[name]), self.events)

    def lips_closed(self, name: str | None) -> np.ndarray:
        """``(T,) bool`` closed-lip frames of the driver (``name`` None) or of an output (no face: open)."""
        gap = np.asarray(self.ref_mouth, np.float64) if name is None else self.series(name, "mouth_open")
        return np.nan_to_num(gap, nan=np.inf) < self.events.closed_mouth

    def teeth(self, name: str | None) -> np.ndarray:
        """``(T,) bool`` teeth-visible frames of the driver (``name`` None) or of an output."""
        return np.asarray(self.ref_teeth if name is None else self.out_teeth[name], bool)

    def scores(self, name: str) -> dict[str, float]:
        """Motion metrics (:data:`MOTION_METRICS`) of renderer ``name`` on this sequence."""
        out: dict[str, float] = {}
        for s in TRANSFER_SIGNALS:
            t = sig.transfer(*self.transfer_pair(name, s))
            out[f"{s}_corr"], out[f"{s}_ratio"] = t.corr, t.ratio
        out["blink_score"] = sig.event_score(self.closed(None), self.closed(name))[0]
        out["teeth_score"] = sig.event_score(self.teeth(None), self.teeth(name))[0]
        out["lips_closed_score"] = sig.event_score(self.lips_closed(None), self.lips_closed(name))[0]
        return out

    def event_counts(self) -> dict[str, int]:
        """Driver frames with closed eyes / with teeth visible / with closed lips."""
        return {"closed_eye_frames": int(self.closed(None).sum()), "teeth_frames": int(self.teeth(None).sum()),
                "closed_lip_frames": int(self.lips_closed(None).sum())}


def aggregate_motion(tracks: list[MotionTrack], name: str) -> dict[str, float]:
    """Motion metrics of renderer ``name`` pooled over ``tracks``.

    Transfer: :func:`~avatar_engine.eval.signals.pooled_transfer` (each sequence de-meaned); blink,
    teeth and closed-lips scores: all the driver's event frames together.
    """
    out: dict[str, float] = {}
    for s in TRANSFER_SIGNALS:
        t = sig.pooled_transfer([tr.transfer_pair(name, s) for tr in tracks])
        out[f"{s}_corr"], out[f"{s}_ratio"] = t.corr, t.ratio
    for key, events in (("blink_score", MotionTrack.closed), ("teeth_score", MotionTrack.teeth),
                        ("lips_closed_score", MotionTrack.lips_closed)):
        hits = total = 0
        for tr in tracks:
            ref, got = events(tr, None), events(tr, name)
            total += int(ref.sum())
            hits += int((ref & got).sum())
        out[key] = hits / total if total else math.nan
    return out
