"""The preview window output: what goes out, with overlays, in an OpenCV window with hotkeys.

* :func:`display_available`: whether a window can be shown here.
* :class:`PreviewWindow`: the OpenCV window (shows RGB frames, reports keys and its closing).
* :func:`compose_preview`: the picture the preview shows for an output frame (pure: testable).
* :class:`PreviewSink`: the :class:`~runtime.sinks.FrameSink` that ties them together; its keys go
  to the session's :class:`~runtime.controls.Controls`, and closing the window ends the session.

Overlays only ever go to the preview, never to the virtual camera or the recording.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from runtime.controls import Controls
from runtime.overlay import draw_banner, draw_guide, draw_inset, draw_points, draw_stats
from runtime.sinks import FrameSink, OutputInfo, SinkUnavailable
from runtime.stats import StatsSnapshot

__all__ = ["display_available", "PreviewWindow", "compose_preview", "PreviewSink"]


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


class PreviewWindow:
    """An OpenCV window showing RGB frames and reporting key presses.

    Args:
        title: window title.
        max_side: frames are scaled down so that their longer side is at most this.

    Call :meth:`open` first (raises :class:`~runtime.sinks.SinkUnavailable` without a display),
    then :meth:`show` once per frame from the same thread (GUI toolkits want one thread).
    """

    def __init__(self, title: str = "avatar-engine", max_side: int = 960):
        self.title = title
        self.max_side = max_side
        self._open = False
        self._shown_size: tuple[int, int] | None = None

    def open(self) -> None:
        if not display_available():
            raise SinkUnavailable("no display for the preview window (DISPLAY/WAYLAND_DISPLAY not set)")
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


def _preview_size(img: np.ndarray, lo: int = 480, hi: int = 900) -> np.ndarray:
    """``img`` scaled so that its height is within ``[lo, hi]`` (overlays stay readable)."""
    h = img.shape[0]
    if lo <= h <= hi:
        return img
    s = (lo if h < lo else hi) / h
    return cv2.resize(img, (round(img.shape[1] * s), round(h * s)), interpolation=cv2.INTER_LINEAR)


def compose_preview(frame: np.ndarray, info: OutputInfo | None, mode: str, stats: StatsSnapshot | None) -> np.ndarray:
    """What the preview shows for an output frame.

    While the neutral pose is being taken: the camera with the guide and the tracked points, the
    output in an inset. Otherwise the output, with the camera in an inset (not in passthrough).
    Then one status banner (camera lost, paused, passthrough, no face) and the stats panel.

    Args:
        frame: ``(H, W, 3) uint8`` RGB output frame.
        info: what it is (None: nothing from the camera yet).
        mode: the session's mode now (:data:`runtime.controls.MODES`).
        stats: the stats panel to draw, or None.
    Returns:
        ``(h, w, 3) uint8`` RGB, its height within 480..900.
    """
    camera = None if info is None else info.camera
    if camera is not None and info.guide is not None:
        main = _preview_size(camera)
        k = main.shape[0] / camera.shape[0]
        guide = info.guide
        main = draw_guide(main, tuple(round(v * k) for v in guide.box), guide.ok, guide.progress, guide.hint)
        if info.driving is not None:
            main = draw_points(main, info.driving * k)
        main = draw_inset(main, frame)
    else:
        main = _preview_size(frame)
        if camera is not None and mode != "passthrough":
            main = draw_inset(main, camera)
    if info is not None and info.camera_lost:
        main = draw_banner(main, f"{info.camera_lost} lost: reconnecting (the avatar holds its last frame)")
    elif mode == "paused":
        main = draw_banner(main, "PAUSED: the avatar is frozen (P to resume)")
    elif mode == "passthrough":
        main = draw_banner(main, "PASSTHROUGH: your real camera is live (T: back to the avatar)")
    elif camera is not None and not info.face_found:
        main = draw_banner(main, "no face in view: the avatar returns to its neutral pose")
    if stats is not None:
        main = draw_stats(main, stats)
    return main


class PreviewSink(FrameSink):
    """The preview window as an output: shows :func:`compose_preview` of every frame sent.

    Args:
        controls: the session's mode and stats toggle; the window's keys go to it.
        stats: the stats snapshot now (drawn while ``controls.show_stats``).
        on_close: called when the user closes the window.
        placeholder: ``(H, W, 3) uint8`` RGB shown before the first frame (the neutral avatar).
        window: the window (default: a new :class:`PreviewWindow`).
    """

    label = "preview window"

    def __init__(self, controls: Controls, stats: Callable[[], StatsSnapshot], on_close: Callable[[], None],
                 placeholder: np.ndarray | None = None, window: PreviewWindow | None = None):
        self.controls = controls
        self._stats = stats
        self._on_close = on_close
        self.window = window or PreviewWindow()
        self._frame = placeholder
        self._info: OutputInfo | None = None
        self._gone = False

    def open(self) -> None:
        self.window.open()

    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        self._frame, self._info = frame, info
        self.idle()

    def idle(self) -> None:
        """Show the last frame again (overlays up to date) and act on the key pressed; a window the
        user closed is not shown again (showing would reopen it) and ends the session."""
        if self._frame is None or self._gone:
            return
        if self.window.closed_by_user:
            self._gone = True
            self._on_close()
            return
        stats = self._stats() if self.controls.show_stats else None
        self.controls.handle_key(self.window.show(compose_preview(self._frame, self._info, self.controls.mode, stats)))

    def close(self) -> None:
        self.window.close()

    def describe(self) -> str:
        return "preview window"
