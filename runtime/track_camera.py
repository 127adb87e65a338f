"""A WebRTC video track as the live engine's camera (remote driving).

A browser sends its camera to the server; :class:`TrackCamera` makes that track a
:class:`~runtime.capture.CameraSource`, so the unchanged :class:`~runtime.engine.LiveEngine`
pipeline (capture thread, processing, output pacing, stats) renders the avatar from it::

    camera = TrackCamera()
    asyncio.ensure_future(camera.consume(remote_track))      # in the peer connection's loop
    LiveEngine(LiveConfig(source=..., camera=camera, sinks=[hub], ...)).run()   # in a thread

Only the newest received frame is kept (a slow engine skips frames, as with a webcam). Frames are
converted to RGB as they arrive: a decoded ``av.VideoFrame`` may share its memory with the decoder,
which overwrites it with later frames.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar_engine.errors import CameraError

from runtime.capture import CameraSource
from runtime.slots import LatestSlot, SlotClosed
from runtime.webrtc_tracks import read_stamp

__all__ = ["TrackCamera"]


class TrackCamera(CameraSource):
    """Frames of a received WebRTC video track, read like a webcam.

    Args:
        name: how messages name it.
        fps: nominal rate (a browser camera sends about 30).
        frame_timeout_s: :meth:`read` raises :class:`CameraError` when no frame came for this long
            (the capture thread then retries, as with a webcam that stalls).
        read_stamps: read the timing stamp (:func:`runtime.webrtc_tracks.read_stamp`) of each frame;
            :meth:`stamp_for` gives it back by frame number (latency measurements).
    """

    realtime = True

    def __init__(self, name: str = "remote camera", fps: float = 30.0, frame_timeout_s: float = 5.0,
                 read_stamps: bool = False):
        self.name = name
        self._fps = float(fps)
        self.frame_timeout_s = float(frame_timeout_s)
        self.read_stamps = bool(read_stamps)
        self._slot: LatestSlot[np.ndarray] = LatestSlot()
        self._opened = False
        self._read = 0
        self._stamps: OrderedDict[int, int] = OrderedDict()
        self.received = 0

    async def consume(self, track: MediaStreamTrack) -> None:
        """Receive ``track`` until it ends (or :meth:`end`), keeping the newest frame for :meth:`read`."""
        try:
            while not self._slot.closed:
                frame = await track.recv()
                self.received += 1
                self._slot.put(frame.to_ndarray(format="rgb24"))
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self._slot.close()

    def end(self) -> None:
        """No more frames: :meth:`read` returns None (the engine stops with "camera ended")."""
        self._slot.close()

    def open(self) -> None:
        if self._slot.closed and self._slot.taken_count == self._slot.put_count:
            raise CameraError(f"{self.name} has ended")
        self._opened = True

    def read(self) -> np.ndarray | None:
        if not self._opened:
            raise CameraError(f"{self.name} is not open")
        try:
            rgb = self._slot.get(timeout=self.frame_timeout_s)
        except SlotClosed:
            return None
        if rgb is None:
            raise CameraError(f"{self.name} sent no frame for {self.frame_timeout_s:g} s")
        if self.read_stamps:
            self._stamps[self._read] = read_stamp(rgb)
            while len(self._stamps) > 512:
                self._stamps.popitem(last=False)
        self._read += 1
        return rgb

    def stamp_for(self, index: int) -> int | None:
        """The stamp of the ``index``-th frame :meth:`read` returned (None: not read or forgotten)."""
        return self._stamps.get(index)

    def close(self) -> None:
        """Stop reading (the track keeps being received until it ends or :meth:`end`)."""
        self._opened = False

    @property
    def fps(self) -> float:
        return self._fps
