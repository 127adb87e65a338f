"""The outputs of one live session, all behind the one :class:`~runtime.sinks.FrameSink` interface.

:class:`Outputs` makes the sinks a :class:`~runtime.session.LiveConfig` asks for (virtual camera,
recording, the caller's ``sinks``, preview window, in the order they get each frame), opens them,
sends every output frame to each, and closes them all. A sink that is unavailable here (no
virtual camera device, ...) is left out with a warning when another output works; with nothing
else to show, its error ends the session before it starts.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from avatar_engine.errors import AvatarError

from runtime.controls import Controls
from runtime.preview import PreviewSink, display_available
from runtime.recorder import RecorderSink
from runtime.session import LiveConfig
from runtime.sinks import FrameSink, OutputInfo, SinkUnavailable
from runtime.stats import StatsSnapshot
from runtime.vcam import VirtualCameraSink

__all__ = ["Outputs"]

log = logging.getLogger("avatar_engine")


class Outputs:
    """The session's sinks.

    Args:
        config: what to output (``preview``, ``virtual_camera``/``vcam``, ``output``, ``sinks``).

    Attributes:
        sinks: every sink, in the order frames reach them; after :meth:`open` only the ones that work.
        vcam, recorder: the built-in sinks asked for (None otherwise), for the report.
        preview: the preview window, when it opened.
        vcam_error: why the virtual camera did not open (None if it did or was not asked for).
    """

    def __init__(self, config: LiveConfig):
        self.config = config
        self.sinks: list[FrameSink] = list(config.sinks)
        self.vcam: VirtualCameraSink | None = None
        self.recorder: RecorderSink | None = None
        self.preview: PreviewSink | None = None
        self.vcam_error: str | None = None

    def open(self, neutral_frame: np.ndarray, controls: Controls, stats: Callable[[], StatsSnapshot],
             on_close: Callable[[], None]) -> None:
        """Make and open what the config asks for.

        Args:
            neutral_frame: ``(H, W, 3) uint8`` RGB: the first avatar frame (sets the recording's size).
            controls, stats, on_close: for the preview window (see :class:`~runtime.preview.PreviewSink`).
        Raises:
            SinkUnavailable: a sink cannot work here and there is no other output.
        """
        cfg = self.config
        if cfg.virtual_camera:
            self.vcam = VirtualCameraSink(cfg.vcam, cfg.output_fps)
        if cfg.output is not None:
            self.recorder = RecorderSink(cfg.output, cfg.output_fps, neutral_frame.shape[1::-1])
        if cfg.preview:
            if display_available():
                self.preview = PreviewSink(controls, stats, on_close, placeholder=neutral_frame)
            else:
                log.warning("no display: running without the preview window (hotkeys need it; stop with Ctrl-C)")
        self.sinks = [s for s in (self.vcam, self.recorder) if s is not None] + self.sinks
        if self.preview is not None:
            self.sinks.append(self.preview)
        working: list[FrameSink] = []
        unavailable: list[tuple[FrameSink, SinkUnavailable]] = []
        for sink in self.sinks:
            try:
                sink.open()
            except SinkUnavailable as exc:
                unavailable.append((sink, exc))
            else:
                working.append(sink)
        for sink, exc in unavailable:
            if sink is self.vcam:
                self.vcam_error = str(exc)
        self.sinks = working
        if self.preview not in working:
            self.preview = None
        if unavailable and not working:
            raise unavailable[0][1]
        others = list(dict.fromkeys(s.label for s in working))
        for _, exc in unavailable:
            log.warning("%s; the %s keep%s working", exc, " and ".join(others), "" if len(others) > 1 else "s")

    def describe(self) -> str:
        """The session's start line: where the avatar goes."""
        return ", ".join(d for d in (s.describe() for s in self.sinks) if d) or "no output (headless run)"

    def send(self, frame: np.ndarray, info: OutputInfo) -> None:
        """One output frame to every sink."""
        for sink in self.sinks:
            sink.send(frame, info)

    def idle(self) -> None:
        """No frame goes out now: let the sinks refresh."""
        for sink in self.sinks:
            sink.idle()

    def close(self) -> None:
        """Close every sink; one failing does not keep the others open.

        Raises:
            AvatarError: naming the sinks that failed to close.
        """
        errors = []
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # report, keep closing the others
                errors.append(f"{sink.label}: {exc}")
        if errors:
            raise AvatarError("could not close outputs cleanly: " + "; ".join(errors))
