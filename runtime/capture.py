"""Camera sources and the capture thread.

A camera source delivers ``(H, W, 3) uint8`` RGB frames one :meth:`CameraSource.read` at a time:

* :class:`OpenCVCamera`: a real webcam by device index (``--camera 0``).
* :class:`FileCamera`: a video file played as if it were a webcam (``--camera clip.mp4``): at its own
  frame rate (``realtime=True``: frames a slow reader misses are skipped, as a webcam would), or
  as fast as the engine takes them (``realtime=False``, for tests and benchmarks); ``loop`` replays it.

:class:`CaptureThread` reads a source into a :class:`~runtime.slots.LatestSlot`. When the camera
fails mid-session (unplugged, driver error) it logs what happened, retries with exponential backoff
and resumes when the camera is back; the rest of the engine keeps running meanwhile.
"""
from __future__ import annotations

import glob
import logging
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.errors import CameraError, VideoReadError
from avatar_engine.io.video import iter_frames, probe_video

from runtime.slots import Frame, LatestSlot

__all__ = ["CameraInfo", "list_cameras", "describe_cameras", "CameraSource", "OpenCVCamera", "FileCamera",
           "open_camera", "CaptureConfig", "CaptureThread"]

log = logging.getLogger("avatar_engine")


@dataclass(frozen=True)
class CameraInfo:
    """A capture device found on this machine.

    Attributes:
        index: the number to pass as ``--camera``.
        path: device node (``/dev/videoN`` on Linux) or ``"index N"`` elsewhere.
        name: the driver's name for it ("Integrated Camera", "Avatar Cam", ...) or "" when unknown.
        virtual: a virtual device (v4l2loopback: a virtual camera such as this engine's own output).
    """

    index: int
    path: str
    name: str
    virtual: bool = False

    def __str__(self) -> str:
        return f"{self.index} ({self.name or self.path}{', virtual' if self.virtual else ''})"


def list_cameras(max_index: int = 8) -> list[CameraInfo]:
    """Capture devices of this machine.

    On Linux the ``/dev/video*`` nodes are listed with their names from sysfs, without opening them
    (a camera busy in another app is still listed); secondary nodes of a device (metadata) are left
    out. Elsewhere, indices ``0 .. max_index - 1`` are probed with OpenCV.
    """
    if sys.platform.startswith("linux"):
        found = []
        for node in glob.glob("/dev/video*"):
            m = re.fullmatch(r"/dev/video(\d+)", node)
            if m is None:
                continue
            index = int(m.group(1))
            sysfs = Path("/sys/class/video4linux") / f"video{index}"
            if _read_text(sysfs / "index") not in ("", "0"):
                continue
            virtual = "/devices/virtual/" in str(sysfs.resolve())  # v4l2loopback; real cameras sit on a bus
            found.append(CameraInfo(index, node, _read_text(sysfs / "name"), virtual))
        return sorted(found, key=lambda c: c.index)
    found = []
    for index in range(max_index):
        cap = cv2.VideoCapture(index)
        try:
            if cap.isOpened():
                found.append(CameraInfo(index, f"index {index}", ""))
        finally:
            cap.release()
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def describe_cameras(cameras: list[CameraInfo] | None = None) -> str:
    """``"cameras found: 0 (Integrated Camera), 2 (USB Camera)"`` or ``"cameras found: none"``."""
    cams = list_cameras() if cameras is None else cameras
    return "cameras found: " + (", ".join(str(c) for c in cams) if cams else "none")


class CameraSource(ABC):
    """A source of RGB frames that can be (re)opened.

    Attributes:
        name: how messages name it ("camera 0", "clip.mp4").
        realtime: frames come at the source's own rate; a reader that is too slow misses some.
            False: each frame waits until the engine took the previous one (nothing is dropped).
    """

    name: str = "camera"
    realtime: bool = True

    @abstractmethod
    def open(self) -> None:
        """Acquire the device. Raises :class:`CameraError` (one line, saying what to do)."""

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next frame ``(H, W, 3) uint8`` RGB; None when the source has ended (end of a file).

        Raises:
            CameraError: the device stopped delivering frames (the capture thread reopens it).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device (idempotent)."""

    @property
    @abstractmethod
    def fps(self) -> float:
        """Nominal frames per second."""

    def __enter__(self) -> "CameraSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenCVCamera(CameraSource):
    """A webcam through OpenCV (V4L2 on Linux, Media Foundation on Windows, AVFoundation on macOS).

    Args:
        index: device index (``/dev/video<index>`` on Linux).
        width, height, fps: requested capture format; None leaves the device default. The device
            may pick the nearest format it supports; the frames are delivered as the device sends them.
    """

    realtime = True

    def __init__(self, index: int, width: int | None = None, height: int | None = None,
                 fps: float | None = None):
        self.index = int(index)
        self.width, self.height, self._fps = width, height, fps
        self.name = f"camera {self.index}"
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self._cap is not None:
            return
        if sys.platform.startswith("linux"):
            info = next((c for c in list_cameras() if c.index == self.index), None)
            if info is None:
                raise CameraError(self._not_found_message())
            if info.virtual:
                raise CameraError(f"camera {self.index} is a virtual camera ({info.name or info.path}), e.g. this "
                                  f"engine's own output; choose your webcam with --camera N; {describe_cameras()}")
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.index, api)
        if not cap.isOpened():
            cap.release()
            raise CameraError(self._not_found_message())
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self._fps:
            cap.set(cv2.CAP_PROP_FPS, self._fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        ok, _ = cap.read()
        if not ok:
            cap.release()
            raise CameraError(f"camera {self.index} opened but delivers no frames (in use by another app?); "
                              f"{describe_cameras()}")
        self._cap = cap

    def _not_found_message(self) -> str:
        return (f"camera {self.index} not found; {describe_cameras()}. Connect a webcam, choose another with "
                f"--camera N, or play a video as the camera with --camera clip.mp4 (see: avatar-engine doctor)")

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraError(f"{self.name} is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraError(f"{self.name} stopped delivering frames")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> float:
        if self._cap is not None:
            reported = self._cap.get(cv2.CAP_PROP_FPS)
            if reported and reported > 0:
                return float(reported)
        return float(self._fps or 30.0)


class FileCamera(CameraSource):
    """A video file played as a camera.

    Args:
        path: the video.
        loop: start again at the end (otherwise :meth:`read` returns None at the end).
        realtime: deliver frame ``k`` no earlier than ``k / fps`` seconds after opening, and skip the
            frames a slow reader missed (webcam behaviour). False: one frame per :meth:`read`, no waiting.
        fps: playing rate; None = the file's own rate.
        width, height: resize the frames to this size (both or neither); None keeps the file's size.
    """

    def __init__(self, path: str | Path, loop: bool = False, realtime: bool = True, fps: float | None = None,
                 width: int | None = None, height: int | None = None):
        self.path = Path(path)
        self.loop = bool(loop)
        self.realtime = bool(realtime)
        self.name = self.path.name
        self._fps_override = fps
        self._size = (int(width), int(height)) if width and height else None
        self._info = None
        self._frames: Iterator[tuple[np.ndarray, float]] | None = None
        self._t0 = 0.0
        self._k = 0
        self.skipped = 0
        """Frames passed over because the reader was late (realtime mode)."""

    def open(self) -> None:
        if self._frames is not None:
            return
        try:
            self._info = probe_video(self.path)
        except VideoReadError as exc:
            raise CameraError(f"cannot play {self.path} as the camera: {exc}") from None
        self._frames = iter_frames(self.path)
        self._t0 = time.monotonic()
        self._k = 0

    @property
    def fps(self) -> float:
        if self._fps_override:
            return float(self._fps_override)
        return self._info.fps if self._info is not None else 30.0

    def _next_decoded(self) -> np.ndarray | None:
        assert self._frames is not None
        item = next(self._frames, None)
        if item is None and self.loop and self._k > 0:
            self._frames = iter_frames(self.path)
            item = next(self._frames, None)
        return None if item is None else item[0]

    def read(self) -> np.ndarray | None:
        if self._frames is None:
            raise CameraError(f"{self.name} is not open")
        if self.realtime:
            period = 1.0 / self.fps
            now = time.monotonic()
            due = self._t0 + self._k * period
            if now < due:
                time.sleep(due - now)
            else:
                late = int((now - due) / period)
                if late > 0.5 * self.fps:  # stalled (suspended process): restart the clock, do not race
                    self._t0 = now - self._k * period
                else:
                    for _ in range(late):
                        if self._next_decoded() is None:
                            return None
                        self._k += 1
                        self.skipped += 1
        rgb = self._next_decoded()
        if rgb is None:
            return None
        self._k += 1
        if self._size is not None and (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        return rgb

    def close(self) -> None:
        if self._frames is not None:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            self._frames = None


def open_camera(spec: str | int, width: int | None = None, height: int | None = None, fps: float | None = None,
                loop: bool = False, realtime: bool = True) -> CameraSource:
    """Build the source ``--camera`` names (not opened yet).

    Args:
        spec: a device index (``0``, ``"1"``) or the path of a video file.
        width, height, fps: capture format for a device; for a file, the size its frames are resized
            to and its playing rate.
        loop, realtime: file sources only (see :class:`FileCamera`).
    Raises:
        CameraError: ``spec`` is neither a device index nor an existing file.
    """
    text = str(spec).strip()
    if text.isdigit():
        return OpenCVCamera(int(text), width, height, fps)
    path = Path(text).expanduser()
    if not path.is_file():
        raise CameraError(f"--camera {text!r} is neither a camera index nor a video file; {describe_cameras()}")
    return FileCamera(path, loop=loop, realtime=realtime, fps=fps, width=width, height=height)


@dataclass
class CaptureConfig:
    """Reconnection policy of the capture thread.

    Attributes:
        retry_initial_s: first wait after the camera fails, seconds.
        retry_max_s: longest wait between two reconnection attempts (the wait doubles up to this).
    """

    retry_initial_s: float = 0.5
    retry_max_s: float = 8.0


class CaptureThread(threading.Thread):
    """Reads ``source`` into ``slot`` until stopped or the source ends.

    The source must already be open (so that a camera missing at start is reported by the caller
    before anything runs). On :class:`CameraError` the source is closed and reopened with
    exponential backoff; every step is logged. At the end of the source the slot is closed, which
    tells the consumer that no more frames will come.

    Attributes (read from other threads):
        state: ``"running"``, ``"reconnecting"``, ``"ended"`` (source ended) or ``"stopped"``.
        frames: frames delivered. reconnects: how many times the camera came back after failing.
        down_since: ``time.monotonic()`` when the camera was lost, or None while it runs.
        error: the last camera error message ("" when none).
    """

    def __init__(self, source: CameraSource, slot: LatestSlot[Frame], config: CaptureConfig | None = None):
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.slot = slot
        self.config = config or CaptureConfig()
        self.state = "running"
        self.frames = 0
        self.reconnects = 0
        self.down_since: float | None = None
        self.error = ""
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Ask the thread to finish (it wakes from backoff waits at once)."""
        self._stop_event.set()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                try:
                    rgb = self.source.read()
                except CameraError as exc:
                    self._reconnect(str(exc))
                    continue
                if rgb is None:
                    self.state = "ended"
                    log.info("%s ended after %d frames", self.source.name, self.frames)
                    break
                if not self.source.realtime:
                    while not self.slot.wait_empty(0.1):
                        if self._stop_event.is_set():
                            return
                self.slot.put(Frame(rgb, self.frames, time.monotonic()))
                self.frames += 1
        finally:
            if self.state != "ended":
                self.state = "stopped"
            self.slot.close()
            self.source.close()

    def _reconnect(self, reason: str) -> None:
        """Close the source and reopen it with backoff until it works or the thread is stopped."""
        self.state = "reconnecting"
        self.error = reason
        self.down_since = time.monotonic()
        self.source.close()
        wait = self.config.retry_initial_s
        log.warning("%s lost (%s): the avatar holds its last frame; reconnecting (first retry in %.1f s)",
                    self.source.name, reason, wait)
        attempt = 0
        while not self._stop_event.wait(wait):
            attempt += 1
            try:
                self.source.open()
            except CameraError as exc:
                self.error = str(exc)
                wait = min(wait * 2.0, self.config.retry_max_s)
                log.warning("%s: reconnection attempt %d failed; next in %.1f s", self.source.name, attempt, wait)
                continue
            log.info("%s is back after %.1f s; resuming", self.source.name, time.monotonic() - self.down_since)
            self.reconnects += 1
            self.state = "running"
            self.down_since = None
            return
