"""The one interface of the live engine's outputs: :class:`FrameSink`, fed :class:`OutputInfo`.

Every output is a small class in its own module, and the engine treats them all alike: it opens
them (:meth:`FrameSink.open`), hands each output frame to every one of them in turn
(:meth:`FrameSink.send`), lets them refresh while no frame goes out (:meth:`FrameSink.idle`) and
closes them at the end (:meth:`FrameSink.close`). Each sink does its own fitting, cadence and
bookkeeping from the frame and its :class:`OutputInfo`:

* :class:`runtime.vcam.VirtualCameraSink`: pyvirtualcam ("Avatar Cam" / "OBS Virtual Camera").
* :class:`runtime.recorder.RecorderSink`: an mp4 that follows the wall clock.
* :class:`runtime.preview.PreviewSink`: the preview window with overlays and hotkeys.
* :class:`runtime.webrtc_tracks.AvatarFrameHub`: the frames of WebRTC video tracks.
* anything else a caller puts in ``LiveConfig.sinks`` (a test that inspects the output, ...).

A sink that cannot work here raises :class:`SinkUnavailable` from :meth:`~FrameSink.open` with a
one-line reason and fix; the session goes on without it when it has another output.

Frames are ``(H, W, 3) uint8`` RGB of any size; :func:`fit_frame` fits them to a fixed size
(scaled to fit, centred, black borders).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from avatar_engine.errors import AvatarError

if TYPE_CHECKING:
    from runtime.neutral import NeutralGuide

__all__ = ["OutputInfo", "FrameSink", "SinkUnavailable", "fit_frame"]


@dataclass(frozen=True)
class OutputInfo:
    """What an output frame is.

    Attributes:
        index: number of the camera frame it was made from (-1: none yet, the neutral avatar).
        t_capture: ``time.monotonic()`` capture time of that camera frame (nan when ``index == -1``).
        t_output: ``time.monotonic()`` when the frame was sent.
        new: a frame made from a new camera frame (False: a repeat that keeps the output rate up).
        face_found: the camera frame had a face.
        mode: what the frame shows: ``"avatar"``, ``"paused"`` (the frozen avatar) or ``"passthrough"``
            (the real camera frame).
        taking_neutral: the driver's neutral pose is being taken (the "look at the camera" step).
        paced: the output follows the wall clock at the output rate (a real-time camera); False: one
            output per processed frame, unpaced (a file played as fast as it is processed).
        t_start: ``time.monotonic()`` when the session's output began (nan: unknown).
        camera: ``(h, w, 3) uint8`` RGB driving frame it was made from (None: none yet).
        driving: ``(478, 3) float32`` landmarks of that frame in its pixels, or None (no face).
        guide: the neutral-pose guide while that step runs, else None.
        camera_lost: the camera's name while it is reconnecting, else "".
    """

    index: int
    t_capture: float
    t_output: float
    new: bool
    face_found: bool
    mode: str
    taking_neutral: bool
    paced: bool = True
    t_start: float = math.nan
    camera: np.ndarray | None = None
    driving: np.ndarray | None = None
    guide: NeutralGuide | None = None
    camera_lost: str = ""


class SinkUnavailable(AvatarError):
    """An output cannot work on this machine (no virtual camera device, no display, ...)."""


class FrameSink(ABC):
    """An output of the live engine, called from its output loop (one thread).

    Subclasses implement :meth:`send`; :meth:`open`, :meth:`idle` and :meth:`close` do nothing
    unless overridden. The engine opens every sink before the first frame and closes every sink it
    opened when the session ends, even when another one failed.

    Attributes:
        label: how logs and errors name the sink.
    """

    label = "output"

    def open(self) -> None:
        """Acquire the device or file.

        Raises:
            SinkUnavailable: one line with the reason (and the fix) when it cannot work here.
        """

    @abstractmethod
    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        """One output frame ``(H, W, 3) uint8`` RGB (the avatar, before any fitting) and what it is."""

    def idle(self) -> None:
        """No frame goes out now (the output loop waits); interactive sinks refresh themselves here."""

    def close(self) -> None:
        """The session ended."""

    def describe(self) -> str:
        """A few words for the session's start line (empty: not worth mentioning)."""
        return ""


def fit_frame(image: np.ndarray, size: tuple[int, int], mirror: bool = False) -> np.ndarray:
    """Scale ``image`` ``(h, w, 3) uint8`` to fit ``size = (W, H)``, centred on black.

    Returns:
        ``(H, W, 3) uint8``, mirrored left-right when ``mirror``. The input itself when it already
        has the size and no mirroring is asked.
    """
    out_w, out_h = size
    h, w = image.shape[:2]
    if (w, h) == (out_w, out_h):
        fitted = image
    else:
        scale = min(out_w / w, out_h / h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
        if (new_w, new_h) == (out_w, out_h):
            fitted = resized
        else:
            fitted = np.zeros((out_h, out_w, 3), np.uint8)
            x0, y0 = (out_w - new_w) // 2, (out_h - new_h) // 2
            fitted[y0:y0 + new_h, x0:x0 + new_w] = resized
    if mirror:
        fitted = np.ascontiguousarray(fitted[:, ::-1])
    return fitted
