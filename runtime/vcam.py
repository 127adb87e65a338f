"""The virtual camera output: frames to pyvirtualcam.

"Avatar Cam" through v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS; the backend is
pyvirtualcam's (its registry picks the first that works, or the one named in
:class:`VirtualCameraConfig`). A camera that cannot open raises :class:`VirtualCameraError` whose
one-line message says how to set it up on this OS.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from runtime.sinks import FrameSink, OutputInfo, SinkUnavailable, fit_frame

__all__ = ["MODPROBE_LINE", "virtual_camera_hint", "VirtualCameraError", "VirtualCameraConfig", "VirtualCameraSink"]

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


class VirtualCameraError(SinkUnavailable):
    """The virtual camera could not be opened (no v4l2loopback device, no OBS, device busy, ...)."""


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


class VirtualCameraSink(FrameSink):
    """Sends RGB frames to a pyvirtualcam virtual camera.

    Args:
        config: size, mirror, backend, device.
        fps: the rate frames will be sent at (the engine paces its output to it).

    Attributes:
        device: the device apps list ("/dev/video10", "OBS Virtual Camera", ...); "" until opened.
        frames_sent: frames the camera got.
    """

    label = "virtual camera"

    def __init__(self, config: VirtualCameraConfig, fps: float):
        self.config = config
        self.fps = float(fps)
        self._cam = None
        self.device = ""
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
        self.device = str(self._cam.device)

    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        """Send one ``(H, W, 3) uint8`` RGB frame (fitted to the camera size)."""
        if self._cam is None:
            return
        self._cam.send(fit_frame(frame, (self.config.width, self.config.height), self.config.mirror))
        self.frames_sent += 1

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()

    def describe(self) -> str:
        return f"virtual camera {self.device} ({self.config.width}x{self.config.height} @ {self.fps:g} fps)"
