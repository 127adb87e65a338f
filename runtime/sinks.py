"""Where the avatar goes: the preview window, the virtual camera, a recording.

* :class:`PreviewWindow`: an OpenCV window with hotkeys; needs a display (see :func:`display_available`).
* :class:`VirtualCameraSink`: frames to pyvirtualcam ("Avatar Cam" through v4l2loopback on Linux,
  OBS Virtual Camera on Windows/macOS). A camera that cannot open raises :class:`VirtualCameraError`
  whose one-line message says how to set it up on this OS.
* :class:`RecorderSink`: an mp4 of the session (H.264 via :class:`avatar_engine.io.video.VideoWriter`).
* :class:`FrameSink`: the extension point for anything else (a WebRTC track, a test that inspects
  the output): it gets every output frame with an :class:`OutputInfo`.

Every sink takes ``(H, W, 3) uint8`` RGB frames of any size and fits them to its own size
(:func:`fit_frame`: scaled to fit, centred, black borders).
"""
from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.errors import AvatarError
from avatar_engine.io.video import VideoWriter

__all__ = ["OutputInfo", "FrameSink", "MODPROBE_LINE", "virtual_camera_hint", "VirtualCameraError",
           "display_available", "fit_frame", "PreviewWindow", "VirtualCameraConfig", "VirtualCameraSink",
           "RecorderSink"]

log = logging.getLogger("avatar_engine")


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
        calibrating: the neutral pose is being taken.
    """

    index: int
    t_capture: float
    t_output: float
    new: bool
    face_found: bool
    mode: str
    calibrating: bool


class FrameSink(ABC):
    """An extra output of the live engine (``LiveConfig.sinks``), called from the output loop.

    The engine does not open sinks; it calls :meth:`close` when the session ends.
    """

    @abstractmethod
    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        """One output frame ``(H, W, 3) uint8`` RGB (the avatar, as the virtual camera gets it before fitting)."""

    def close(self) -> None:
        """The session ended."""


MODPROBE_LINE = 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1'
"""Creates the "Avatar Cam" device (``/dev/video10``) on Linux; ``exclusive_caps=1`` makes Chrome/Meet,
Zoom and Teams list it as a camera."""


def virtual_camera_hint(platform: str | None = None) -> str:
    """One line saying how to make a virtual camera available on ``platform`` (default: this one)."""
    plat = sys.platform if platform is None else platform
    if plat.startswith("linux"):
        return (f"install v4l2loopback (e.g. sudo apt install v4l2loopback-dkms) and run: {MODPROBE_LINE} "
                f"(to make it permanent and check the setup: avatar-engine doctor)")
    if plat == "darwin":
        return ("install OBS Studio 30+, click Start Virtual Camera once and allow its system extension in "
                "System Settings > Privacy & Security (details: avatar-engine doctor)")
    return ("install OBS Studio 26+ and click Start Virtual Camera once to register it, then close OBS "
            "(details: avatar-engine doctor)")


class VirtualCameraError(AvatarError):
    """The virtual camera could not be opened (no v4l2loopback device, no OBS, device busy, ...)."""


def display_available() -> bool:
    """Whether a window can be shown: always on Windows/macOS; on Linux an X11 or Wayland display.

    A local X display (``:0``) is checked for its socket, so a stale ``DISPLAY`` does not make the
    GUI toolkit abort the process.
    """
    if not sys.platform.startswith("linux"):
        return True
    if os.environ.get("WAYLAND_DISPLAY"):
        return True
    display = os.environ.get("DISPLAY", "")
    if not display:
        return False
    host, _, rest = display.rpartition(":")
    if host in ("", "unix"):
        number = rest.split(".")[0]
        return Path(f"/tmp/.X11-unix/X{number}").exists()
    return True


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


class PreviewWindow:
    """An OpenCV window showing RGB frames and reporting key presses.

    Args:
        title: window title.
        max_side: frames are scaled down so that their longer side is at most this.

    Call :meth:`open` first (raises :class:`AvatarError` without a display), then :meth:`show` once
    per output frame from the same thread (GUI toolkits want one thread).
    """

    def __init__(self, title: str = "avatar-engine", max_side: int = 960):
        self.title = title
        self.max_side = max_side
        self._open = False
        self._shown_size: tuple[int, int] | None = None

    def open(self) -> None:
        if not display_available():
            raise AvatarError("no display for the preview window (DISPLAY/WAYLAND_DISPLAY not set)")
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        self._open = True

    def show(self, rgb: np.ndarray) -> int:
        """Display ``rgb`` ``(H, W, 3) uint8`` and poll the keyboard.

        Returns:
            The key pressed (``cv2.waitKey`` code, low 8 bits) or -1.
        """
        if not self._open:
            return -1
        h, w = rgb.shape[:2]
        if max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            rgb = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        size = (rgb.shape[1], rgb.shape[0])
        if size != self._shown_size:  # fit the window to the picture (the user may resize it later)
            cv2.resizeWindow(self.title, *size)
            self._shown_size = size
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1)
        return -1 if key < 0 else key & 0xFF

    @property
    def closed_by_user(self) -> bool:
        """The user closed the window (its close button)."""
        if not self._open:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass


@dataclass
class VirtualCameraConfig:
    """Options of the virtual camera.

    Attributes:
        width, height: frame size the conferencing apps see (the avatar is fitted in, black borders).
        mirror: flip left-right (apps mirror the self-view themselves; leave off unless text must read
            correctly in your own preview).
        backend: pyvirtualcam backend name (None: the first that works on this OS).
        device: device to use (``/dev/video10``, ``OBS Virtual Camera``); None: any.
    """

    width: int = 1280
    height: int = 720
    mirror: bool = False
    backend: str | None = None
    device: str | None = None


class VirtualCameraSink:
    """Sends RGB frames to a pyvirtualcam virtual camera.

    Args:
        config: size, mirror, backend, device.
        fps: the rate frames will be sent at (the engine paces its output to it).
    """

    def __init__(self, config: VirtualCameraConfig, fps: float):
        self.config = config
        self.fps = float(fps)
        self._cam = None
        self.frames_sent = 0

    def open(self) -> None:
        """Open the camera.

        Raises:
            VirtualCameraError: one line with the reason and the fix for this OS.
        """
        import pyvirtualcam

        cfg = self.config
        try:
            self._cam = pyvirtualcam.Camera(cfg.width, cfg.height, self.fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                            backend=cfg.backend, device=cfg.device)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/ValueError/KeyError per backend
            reason = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            raise VirtualCameraError(f"virtual camera unavailable ({reason}); to fix: {virtual_camera_hint()}") \
                from None

    @property
    def device(self) -> str:
        """The device apps list ("/dev/video10", "OBS Virtual Camera", ...)."""
        return "" if self._cam is None else str(self._cam.device)

    def send(self, rgb: np.ndarray) -> None:
        """Send one ``(H, W, 3) uint8`` RGB frame (fitted to the camera size)."""
        if self._cam is None:
            return
        self._cam.send(fit_frame(rgb, (self.config.width, self.config.height), self.config.mirror))
        self.frames_sent += 1

    def close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            cam.close()


class RecorderSink:
    """Records the output to a video file at a constant frame rate.

    Args:
        path: the mp4 (or .mov/.mkv) to write.
        fps: frame rate of the file.
        size: ``(W, H)`` of the file; frames of other sizes are fitted in.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self._writer: VideoWriter | None = None
        self.frames_written = 0

    def open(self) -> None:
        self._writer = VideoWriter(self.path, self.fps, self.size)

    def write(self, rgb: np.ndarray, repeat: int = 1) -> None:
        """Append ``rgb`` ``(H, W, 3) uint8`` ``repeat`` times (to follow the wall clock)."""
        if self._writer is None:
            return
        frame = fit_frame(rgb, self.size)
        for _ in range(repeat):
            self._writer.write(frame)
            self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
