"""Microphone audio for WebRTC, delayed by the engine's video latency so lips and voice stay in sync.

The avatar reaches the peer later than the voice would: capture -> landmarks -> render takes the
engine's capture-to-output latency. :class:`DelayedAudio` holds the voice back by that latency,
following it as it changes (smoothed, and slewed by at most ``max_step_ms`` per block so changes
are inaudible), and hands 20 ms blocks to any number of :class:`DelayedAudioTrack` (aiortc tracks).

Sources (:class:`AudioSource`, mono ``int16`` blocks at ``sample_rate``, real time):

* :class:`SounddeviceSource`: a microphone through PortAudio (``--audio-device``).
* :class:`ArrayAudioSource`: samples from an array, delivered at the pace a microphone would
  deliver them (tests, benchmarks: the sound-card boundary).
* :class:`TrackAudioSource`: audio arriving on a WebRTC track (remote driving: the browser's microphone).

:func:`open_microphone` opens the microphone or, when there is none, logs one clear warning and
returns None (the session goes on with video only).
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["AUDIO_RATE", "AudioSource", "SounddeviceSource", "ArrayAudioSource", "TrackAudioSource",
           "open_microphone", "DelayConfig", "DelayLine", "DelayedAudio", "DelayedAudioTrack"]

log = logging.getLogger("avatar_engine")

AUDIO_RATE = 48000
"""Sample rate of every source and track here (Opus' native rate)."""


class AudioSource(ABC):
    """Mono ``int16`` samples at ``sample_rate`` Hz, captured in real time.

    Attributes:
        name: how messages name it. sample_rate: Hz.
        t_start: ``time.monotonic()`` when sample 0 was captured (set by :meth:`start`).
    """

    name: str = "audio"
    sample_rate: int = AUDIO_RATE
    t_start: float = math.nan

    @abstractmethod
    def start(self) -> None:
        """Begin capturing."""

    @abstractmethod
    def read(self, n: int, timeout: float) -> np.ndarray | None:
        """The next ``n`` samples ``(n,) int16`` in capture order, waiting for them up to ``timeout`` s.

        Returns:
            The samples, or None when they did not come in time.
        Raises:
            EOFError: the source has ended (array played out, track closed, stopped).
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop capturing and release the device (idempotent); a waiting :meth:`read` raises EOFError."""


class _SampleBuffer:
    """A thread-safe FIFO of samples with a size bound (the oldest go when a reader falls behind)."""

    def __init__(self, max_samples: int):
        self.max_samples = int(max_samples)
        self._cond = threading.Condition()
        self._blocks: deque[np.ndarray] = deque()
        self._size = 0
        self._ended = False
        self.overflowed = 0

    def push(self, samples: np.ndarray) -> None:
        with self._cond:
            if self._ended:
                return
            self._blocks.append(samples)
            self._size += len(samples)
            while self._size > self.max_samples and len(self._blocks) > 1:
                self._size -= len(self._blocks.popleft())
                self.overflowed += 1
            self._cond.notify_all()

    def pop(self, n: int, timeout: float) -> np.ndarray | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._size < n:
                if self._ended:
                    raise EOFError
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            out = np.empty(n, np.int16)
            k = 0
            while k < n:
                block = self._blocks[0]
                take = min(n - k, len(block))
                out[k:k + take] = block[:take]
                k += take
                if take == len(block):
                    self._blocks.popleft()
                else:
                    self._blocks[0] = block[take:]
            self._size -= n
            return out

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()


class SounddeviceSource(AudioSource):
    """A microphone through PortAudio (the ``sounddevice`` package).

    Args:
        device: PortAudio device index or name substring; None = the system default input.
        block: samples per PortAudio callback.
    """

    def __init__(self, device: int | str | None = None, block: int = 960):
        self.device = device
        self.block = int(block)
        self.name = "microphone" if device is None else f"microphone {device}"
        self._stream = None
        self._buffer = _SampleBuffer(AUDIO_RATE)

    def start(self) -> None:
        """Open the input stream.

        Raises:
            OSError: no PortAudio library, no input device, or the device refused to open.
        """
        import sounddevice as sd  # raises OSError when libportaudio is missing

        def callback(indata, frames, time_info, status) -> None:
            self._buffer.push(indata[:, 0].copy())

        try:
            stream = sd.InputStream(samplerate=AUDIO_RATE, channels=1, dtype="int16", blocksize=self.block,
                                    device=self.device, callback=callback)
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise OSError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        self.t_start = time.monotonic()
        self._stream = stream

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        return self._buffer.pop(n, timeout)

    def stop(self) -> None:
        self._buffer.end()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.stop()
            stream.close()


class ArrayAudioSource(AudioSource):
    """Samples from an array, delivered in real time: sample ``i`` is readable ``(i + 1) / sample_rate``
    seconds after :meth:`start`, as a microphone would capture it.

    Args:
        samples: ``(N,) int16`` mono audio at ``sample_rate``.
        loop: start again at the end (else :meth:`read` raises EOFError there).
    """

    def __init__(self, samples: np.ndarray, sample_rate: int = AUDIO_RATE, loop: bool = False):
        samples = np.asarray(samples)
        if samples.ndim != 1 or samples.dtype != np.int16:
            raise ValueError(f"samples must be (N,) int16, got {samples.shape} {samples.dtype}")
        self.samples = samples
        self.sample_rate = int(sample_rate)
        self.loop = bool(loop)
        self.name = "array"
        self._pos = 0
        self._stopped = threading.Event()

    def start(self) -> None:
        self.t_start = time.monotonic()
        self._pos = 0

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        if self._stopped.is_set():
            raise EOFError
        if not self.loop and self._pos + n > len(self.samples):
            raise EOFError
        due = self.t_start + (self._pos + n) / self.sample_rate
        wait = due - time.monotonic()
        if wait > timeout:
            self._stopped.wait(timeout)
            return None
        if wait > 0 and self._stopped.wait(wait):
            raise EOFError
        idx = (self._pos + np.arange(n)) % len(self.samples)
        self._pos += n
        return self.samples[idx]

    def stop(self) -> None:
        self._stopped.set()


class TrackAudioSource(AudioSource):
    """Audio arriving on a WebRTC track, as an :class:`AudioSource` (mono ``int16`` at 48 kHz).

    Call :meth:`consume` as an asyncio task with the received track; :meth:`read` is then used from
    a thread. Ends when the track ends or :meth:`stop` is called.
    """

    def __init__(self, name: str = "remote microphone"):
        self.name = name
        self._buffer = _SampleBuffer(AUDIO_RATE)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)

    def start(self) -> None:
        self.t_start = time.monotonic()

    async def consume(self, track: MediaStreamTrack) -> None:
        """Receive ``track`` until it ends, making its samples readable."""
        try:
            while True:
                frame = await track.recv()
                for out in self._resampler.resample(frame):
                    self._buffer.push(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        except MediaStreamError:
            pass
        finally:
            self._buffer.end()

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        return self._buffer.pop(n, timeout)

    def stop(self) -> None:
        self._buffer.end()


def open_microphone(device: int | str | None = None) -> SounddeviceSource | None:
    """Start the microphone; None (with one warning saying why) when there is no usable one."""
    source = SounddeviceSource(device)
    try:
        source.start()
    except OSError as exc:
        log.warning("no microphone (%s): continuing with video only (--no-audio silences this)", exc)
        return None
    log.info("audio: %s at %d Hz, delayed to match the avatar's latency", source.name, AUDIO_RATE)
    return source


@dataclass
class DelayConfig:
    """How the audio delay follows the video latency.

    Attributes:
        block_ms: audio block length (Opus frames are 20 ms).
        extra_ms: added to the measured latency (e.g. video encoding time the engine does not see).
        max_delay_ms: the delay never exceeds this (ring buffer size).
        max_step_ms: the delay moves towards its target by at most this per block (1 ms per 20 ms block:
            the voice runs 5 % fast or slow while the delay catches up, which is hardly audible); the
            first measured latency is taken at once.
    """

    block_ms: float = 20.0
    extra_ms: float = 0.0
    max_delay_ms: float = 1000.0
    max_step_ms: float = 1.0

    @property
    def block(self) -> int:
        return int(round(AUDIO_RATE * self.block_ms / 1e3))


class DelayLine:
    """A ring buffer that outputs its input ``delay`` samples late.

    Args:
        capacity: samples kept (the largest delay plus one block).

    Positions are absolute sample counts since the start; samples before the start read as silence.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._ring = np.zeros(self.capacity, np.int16)
        self.written = 0

    def write(self, samples: np.ndarray) -> None:
        """Append ``samples`` ``(n,) int16`` (n <= capacity)."""
        n = len(samples)
        idx = (self.written + np.arange(n)) % self.capacity
        self._ring[idx] = samples
        self.written += n

    def read(self, n: int, delay: int) -> np.ndarray:
        """The ``n`` samples ending ``delay`` samples before the newest one ``(n,) int16``.

        Raises:
            ValueError: ``delay + n`` is more than the ring holds.
        """
        if delay < 0 or delay + n > self.capacity:
            raise ValueError(f"delay {delay} + block {n} outside the ring of {self.capacity} samples")
        start = self.written - delay - n
        pos = start + np.arange(n)
        out = self._ring[pos % self.capacity]
        out[pos < 0] = 0
        return out


class DelayedAudio:
    """Reads an :class:`AudioSource` on a thread and publishes it in blocks, delayed by the video latency.

    Args:
        source: started by :meth:`start`, stopped by :meth:`stop`.
        latency_ms: returns the current video latency in ms (nan when not known yet: no delay is applied
            until it is), e.g. :attr:`runtime.webrtc_tracks.AvatarFrameHub.latency_ms`.
        config: block size, extra delay, limits.

    Each published block is ``(block,) int16``; :attr:`delay_ms` is the delay applied to the last one.
    """

    def __init__(self, source: AudioSource, latency_ms: Callable[[], float], config: DelayConfig | None = None):
        self.source = source
        self.latency_ms = latency_ms
        self.config = config or DelayConfig()
        n = self.config.block
        self._line = DelayLine(int(AUDIO_RATE * self.config.max_delay_ms / 1e3) + 2 * n)
        self._delay = math.nan  # samples
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.blocks = 0
        self.ended = False

    @property
    def delay_ms(self) -> float:
        """The delay applied to the last block, ms (0 before the latency is known)."""
        return 0.0 if math.isnan(self._delay) else self._delay * 1e3 / AUDIO_RATE

    def start(self) -> None:
        """Start the source and the reader thread."""
        if self._thread is not None:
            return
        self.source.start()
        self._thread = threading.Thread(target=self._run, name=f"audio {self.source.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the source and the thread (idempotent); subscribed tracks end."""
        self._stop.set()
        self.source.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self.ended = True
            subs, self._subscribers = list(self._subscribers), set()
        for sub in subs:
            sub.push(None)

    def next_delay(self) -> int:
        """The delay (samples) for the next block: the latency target, approached by bounded steps."""
        cfg = self.config
        target_ms = self.latency_ms()
        if target_ms is None or not math.isfinite(target_ms):
            return 0 if math.isnan(self._delay) else int(self._delay)
        target = min(max(target_ms + cfg.extra_ms, 0.0), cfg.max_delay_ms) * AUDIO_RATE / 1e3
        if math.isnan(self._delay):
            self._delay = target
        else:
            step = cfg.max_step_ms * AUDIO_RATE / 1e3
            self._delay += min(max(target - self._delay, -step), step)
        return int(round(self._delay))

    def _run(self) -> None:
        n = self.config.block
        try:
            while not self._stop.is_set():
                try:
                    block = self.source.read(n, timeout=0.2)
                except EOFError:
                    break
                if block is None:
                    continue
                self._line.write(block)
                out = self._line.read(n, self.next_delay())
                self.blocks += 1
                with self._lock:
                    subs = list(self._subscribers)
                for sub in subs:
                    sub.push(out)
        except Exception:  # a broken device must not take the video down
            log.exception("audio capture failed; continuing with video only")
        finally:
            self._finish()

    def subscribe(self) -> "_Subscriber":
        """A new reader of the delayed blocks (for one track)."""
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            if self.ended:
                sub.push(None)
            else:
                self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: "_Subscriber") -> None:
        with self._lock:
            self._subscribers.discard(sub)


class _Subscriber:
    """Blocks for one track: an asyncio queue filled from the reader thread (the oldest go when it lags)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_blocks: int = 10):
        self.loop = loop
        self.queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self.max_blocks = max_blocks

    def push(self, block: np.ndarray | None) -> None:
        def put() -> None:
            while self.queue.qsize() >= self.max_blocks:
                self.queue.get_nowait()
            self.queue.put_nowait(block)

        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:  # loop closed
            pass


class DelayedAudioTrack(MediaStreamTrack):
    """An aiortc audio track of a :class:`DelayedAudio`'s blocks (mono s16, 48 kHz, pts in samples).

    Create it inside the asyncio loop that will run the peer connection.
    """

    kind = "audio"

    def __init__(self, audio: DelayedAudio, timeout_s: float = 5.0):
        super().__init__()
        self.audio = audio
        self.timeout_s = timeout_s
        self._sub = audio.subscribe()
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            block = await asyncio.wait_for(self._sub.queue.get(), self.timeout_s)
        except asyncio.TimeoutError:
            block = None
        if block is None or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += len(block)
        return frame

    def stop(self) -> None:
        self.audio.unsubscribe(self._sub)
        super().stop()
