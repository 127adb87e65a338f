"""What the user changes while a live session runs: hotkeys and the commands they stand for.

Commands come from the preview window's keys (:data:`HOTKEYS`, handled by
:class:`runtime.preview.PreviewSink`) or from code (:meth:`runtime.engine.LiveEngine.command`):
C takes the neutral pose again, S toggles the stats overlay, P/Space pause (freeze the
avatar), T passthrough (send the real camera), Q/Esc quit. :class:`Controls` holds the resulting
state; every thread of the session reads it.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

__all__ = ["COMMANDS", "HOTKEYS", "HOTKEY_HELP", "MODES", "key_command", "Controls"]

log = logging.getLogger("avatar_engine")

COMMANDS = ("neutral", "stats", "pause", "passthrough", "quit")
"""What :meth:`Controls.command` accepts (pause and passthrough toggle)."""

HOTKEYS = {ord("c"): "neutral", ord("s"): "stats", ord("p"): "pause", ord(" "): "pause",
           ord("t"): "passthrough", ord("q"): "quit", 27: "quit"}
"""Preview-window keys (lower case; upper case works too) -> command."""

HOTKEY_HELP = "C neutral pose  S stats  P pause  T passthrough  Q quit"

MODES = ("avatar", "paused", "passthrough")


def key_command(key: int) -> str | None:
    """The command of a ``cv2.waitKey`` key code (-1: no key), or None."""
    if key < 0:
        return None
    return HOTKEYS.get(ord(chr(key).lower()) if key < 128 else key)


class Controls:
    """The session's user-controlled state, changed from any thread.

    Args:
        show_stats: start with the stats overlay shown.
        on_quit: called by the ``quit`` command (ends the session).

    Attributes:
        mode: one of :data:`MODES`. show_stats: the preview shows the stats overlay.
        retake_neutral: set by the ``neutral`` command; the processing thread clears it when it
            restarts the neutral-pose step.
    """

    def __init__(self, show_stats: bool, on_quit: Callable[[], None]):
        self.mode = "avatar"
        self.show_stats = show_stats
        self.retake_neutral = threading.Event()
        self._on_quit = on_quit

    def command(self, name: str) -> None:
        """Apply one of :data:`COMMANDS`.

        Raises:
            ValueError: an unknown command.
        """
        if name == "neutral":
            self.retake_neutral.set()
            log.info("taking the neutral pose again: look at the camera")
        elif name == "stats":
            self.show_stats = not self.show_stats
        elif name == "pause":
            self.mode = "avatar" if self.mode == "paused" else "paused"
            log.info("paused: the avatar is frozen" if self.mode == "paused" else "resumed")
        elif name == "passthrough":
            self.mode = "avatar" if self.mode == "passthrough" else "passthrough"
            log.info("passthrough: sending your real camera" if self.mode == "passthrough" else "back to the avatar")
        elif name == "quit":
            self._on_quit()
        else:
            raise ValueError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")

    def handle_key(self, key: int) -> str | None:
        """Act on a preview-window key code (``cv2.waitKey``; -1 = none). Returns the command run, or None."""
        name = key_command(key)
        if name is not None:
            self.command(name)
        return name
