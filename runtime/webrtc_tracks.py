"""The avatar as a WebRTC video track.

:class:`AvatarFrameHub` is a :class:`~runtime.sinks.FrameSink`: put it in ``LiveConfig.sinks`` and
it holds the engine's newest output frame (nothing older), wakes the tracks waiting for it and
keeps a smoothed capture-to-output latency (what the microphone delay follows, see
:mod:`runtime.audio`). Any number of :class:`AvatarVideoTrack` read one hub, one per peer
connection, from any asyncio loop::

    hub = AvatarFrameHub()
    engine = LiveEngine(LiveConfig(source="me.png", sinks=[hub], preview=False, virtual_camera=False))
    threading.Thread(target=engine.run, daemon=True).start()
    pc.addTrack(AvatarVideoTrack(hub))          # any aiortc RTCPeerConnection

``recv()`` waits for a frame the track has not sent yet and returns only the newest one, so a slow
peer (or encoder) skips frames instead of building a backlog. Timestamps are 90 kHz ticks of the
frame's camera capture time; a frame the engine repeats while it has nothing new (paused, camera
reconnecting) goes out at most every ``keepalive_s`` so a peer that joins then still gets a picture.

A timing stamp (:func:`draw_stamp` / :func:`read_stamp`) can be written into the bottom rows of
each frame: a 16-bit value as 16 black/white blocks, which survives video coding. The benchmark
uses it to measure capture -> browser-decoded latency (the page decodes the same blocks).
"""
from __future__ import annotations

import asyncio
import fractions
import math
import threading
import time
from dataclasses import dataclass

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.sinks import FrameSink, OutputInfo

__all__ = ["VIDEO_CLOCK_RATE", "STAMP_BITS", "STAMP_ROWS", "draw_stamp", "read_stamp", "wall_ms_of",
           "HubFrame", "AvatarFrameHub", "VideoTrackConfig", "AvatarVideoTrack"]

VIDEO_CLOCK_RATE = 90000
"""RTP clock of video: timestamps are in 1/90000 s."""

STAMP_BITS = 16
STAMP_ROWS = 16
"""The stamp is ``STAMP_BITS`` blocks side by side in the bottom ``STAMP_ROWS`` rows of a frame."""


def draw_stamp(rgb: np.ndarray, value: int) -> np.ndarray:
    """Write ``value`` (mod 2**16) into the bottom rows of ``rgb`` ``(H, W, 3) uint8`` (a copy).

    Bit ``i`` (most significant first) is block ``i`` of width ``W // 16``: white for 1, black for 0.
    """
    out = rgb.copy()
    h, w = out.shape[:2]
    bw = w // STAMP_BITS
    value = int(value) % (1 << STAMP_BITS)
    for i in range(STAMP_BITS):
        bit = (value >> (STAMP_BITS - 1 - i)) & 1
        out[h - STAMP_ROWS:h, i * bw:(i + 1) * bw] = 255 if bit else 0
    return out


def read_stamp(rgb: np.ndarray) -> int:
    """The value :func:`draw_stamp` wrote into ``rgb`` ``(H, W, 3) uint8`` (read through video coding)."""
    h, w = rgb.shape[:2]
    bw = w // STAMP_BITS
    strip = rgb[h - STAMP_ROWS + 4:h - 4].astype(np.float32).mean(axis=(0, 2))
    value = 0
    for i in range(STAMP_BITS):
        centre = strip[i * bw + bw // 4:(i + 1) * bw - bw // 4].mean()
        value = (value << 1) | int(centre > 127.5)
    return value


def wall_ms_of(t_monotonic: float) -> float:
    """Wall-clock milliseconds (Unix epoch, what a browser's ``Date.now()`` uses) of a ``time.monotonic()`` instant."""
    return (time.time() - (time.monotonic() - t_monotonic)) * 1e3


@dataclass
class HubFrame:
    """One frame held by the hub.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB avatar frame. info: what the engine said about it.
        version: 1-based count of frames the hub received (a track sends each version at most once).
    """

    image: np.ndarray
    info: OutputInfo
    version: int


class AvatarFrameHub(FrameSink):
    """The newest avatar frame, handed from the engine's output thread to asyncio video tracks.

    Args:
        latency_alpha: weight of a new measurement in the smoothed latency (exponential average).
    """

    label = "WebRTC video"

    def __init__(self, latency_alpha: float = 0.1):
        self.latency_alpha = float(latency_alpha)
        self._lock = threading.Lock()
        self._latest: HubFrame | None = None
        self._closed = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()
        self._latency_ms = math.nan
        self.frames = 0

    # ------------------------------------------------------------------ engine side (any thread)
    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        with self._lock:
            if self._closed:
                return
            self.frames += 1
            self._latest = HubFrame(frame, info, self.frames)
            if info.new and math.isfinite(info.t_capture):
                ms = (info.t_output - info.t_capture) * 1e3
                a = self.latency_alpha
                self._latency_ms = ms if math.isnan(self._latency_ms) else self._latency_ms + a * (ms - self._latency_ms)
            waiters, self._waiters = self._waiters, set()
        for loop, fut in waiters:
            _wake(loop, fut)

    def close(self) -> None:
        """No more frames: waiting tracks end."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, set()
        for loop, fut in waiters:
            _wake(loop, fut)

    # ------------------------------------------------------------------ readers
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def latency_ms(self) -> float:
        """Smoothed capture-to-output latency of the engine's new frames, ms (nan before the first)."""
        return self._latency_ms

    def latest(self) -> HubFrame | None:
        """The newest frame (None before the first)."""
        return self._latest

    async def next(self, after: int, timeout: float | None = None) -> HubFrame | None:
        """The newest frame whose version is greater than ``after``, waiting for one to come.

        Returns:
            The frame, or None when the hub closed or ``timeout`` seconds passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                latest = self._latest
                if latest is not None and latest.version > after:
                    return latest
                if self._closed:
                    return None
                fut = loop.create_future()
                self._waiters.add((loop, fut))
            try:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                return None
            finally:
                with self._lock:
                    self._waiters.discard((loop, fut))


def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
    def _set() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        loop.call_soon_threadsafe(_set)
    except RuntimeError:  # the loop closed meanwhile
        pass


@dataclass
class VideoTrackConfig:
    """Options of an :class:`AvatarVideoTrack`.

    Attributes:
        max_side: frames whose longer side exceeds this are scaled down (software encoders are slow on
            big frames); sizes are made even (H.264 needs it). None: keep the size (made even).
        keepalive_s: while the engine only repeats its last frame, send it again this often.
        stamp: write the capture time (wall-clock ms mod 2**16, or the ``stamp_of`` value) into each
            frame's bottom rows (:func:`draw_stamp`), for latency measurements.
        frame_timeout_s: end the track when no frame came for this long (the engine is gone).
    """

    max_side: int | None = 720
    keepalive_s: float = 0.5
    stamp: bool = False
    frame_timeout_s: float = 30.0


class AvatarVideoTrack(MediaStreamTrack):
    """An aiortc video track of the avatar frames in ``hub``.

    Args:
        hub: where the engine puts its frames.
        config: size limit, keepalive, stamp.
        stamp_of: with ``config.stamp``, maps a frame's :class:`OutputInfo` to the 16-bit stamp value
            (default: wall-clock ms of its capture time); remote driving passes the stamp the
            driving frame carried.

    Frames are ``av.VideoFrame`` rgb24 with ``pts`` in 1/90000 s of the capture time, strictly increasing.
    """

    kind = "video"

    def __init__(self, hub: AvatarFrameHub, config: VideoTrackConfig | None = None, stamp_of=None):
        super().__init__()
        self.hub = hub
        self.config = config or VideoTrackConfig()
        self._stamp_of = stamp_of
        self._version = 0
        self._t0: float | None = None
        self._last_pts = -1
        self._last_sent_at = -math.inf
        self._last_activity = time.monotonic()  # creation, then the last frame sent
        self._last_latency = 0.0
        self.frames_sent = 0
        self.frames_skipped = 0

    async def recv(self) -> av.VideoFrame:
        """The next avatar frame (waits for a new one). Raises ``MediaStreamError`` once the track ended."""
        cfg = self.config
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await self.hub.next(self._version, timeout=min(cfg.keepalive_s, cfg.frame_timeout_s))
            now = time.monotonic()
            if item is None:
                if self.hub.closed or now - self._last_activity > cfg.frame_timeout_s:
                    self.stop()
                    raise MediaStreamError
                latest = self.hub.latest()
                if latest is None or now - self._last_sent_at < cfg.keepalive_s:
                    continue
                item = latest  # nothing new for a while: send the last frame again
            elif not item.info.new and now - self._last_sent_at < cfg.keepalive_s:
                self._version = item.version  # an engine repeat: the peer already shows this picture
                continue
            if self.readyState != "live":
                raise MediaStreamError
            self.frames_skipped += max(0, item.version - self._version - 1)
            self._version = item.version
            self._last_sent_at = self._last_activity = now
            return self._to_video_frame(item, now)

    def _to_video_frame(self, item: HubFrame, now: float) -> av.VideoFrame:
        info = item.info
        fresh = info.new and math.isfinite(info.t_capture)
        if self._t0 is None:
            self._t0 = info.t_capture if fresh else now
        if fresh:
            self._last_latency = info.t_output - info.t_capture
            t = info.t_capture
        else:  # a repeat: keep the capture-time clock going
            t = now - self._last_latency
        pts = max(self._last_pts + 1, int(round((t - self._t0) * VIDEO_CLOCK_RATE)))
        self._last_pts = pts
        image = _fit_even(item.image, self.config.max_side)
        if self.config.stamp:
            value = self._stamp_of(info) if self._stamp_of is not None else int(wall_ms_of(t))
            image = draw_stamp(image, value)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.frames_sent += 1
        return frame


def _fit_even(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """``rgb`` scaled so its longer side is at most ``max_side``, with even width and height."""
    h, w = rgb.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        nw, nh = max(2, int(w * s) // 2 * 2), max(2, int(h * s) // 2 * 2)
        return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    if h % 2 or w % 2:
        return rgb[:h // 2 * 2, :w // 2 * 2]
    return rgb
