"""The live engine behind ``avatar-engine start``: webcam in, avatar out, in real time.

Three threads joined by latest-value slots (:class:`~runtime.slots.LatestSlot`), so a slow stage
drops stale frames instead of queueing them::

    capture thread --Frame--> processing thread(s) --Processed--> output loop (calling thread)
    (camera.read)             (runtime.processing:                (runtime.outputs: virtual camera,
                               landmarks, retarget, render,        recording, extra sinks, preview
                               neutral-pose step, SR, paste-back)   window + hotkeys)

This module ties the parts together: the session's lifecycle (:meth:`LiveEngine.run`: open,
run, release everything, report), signals, and the output loop, which paces the output
(:mod:`runtime.pacing`) and hands every frame with its :class:`~runtime.sinks.OutputInfo` to the
outputs. Every frame carries its capture time (``time.monotonic()``), and the output loop measures
capture-to-output latency when it sends the avatar made from that frame.

Session start: the driver's neutral pose is taken by a short "look at the camera" step
(:mod:`runtime.neutral`; the avatar shows the source's neutral pose meanwhile). Hotkeys in the
preview (also available as :meth:`LiveEngine.command`, see :mod:`runtime.controls`): C take the
neutral pose again, S stats overlay, P pause (freeze the avatar), T passthrough (send the real
camera), Q/Esc quit. Ctrl-C (SIGINT), SIGTERM and closing the window stop the session cleanly: the
threads end, the camera and every output are released/finished, and :meth:`LiveEngine.run`
returns a :class:`~runtime.session.LiveReport`.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time

import numpy as np

from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.pipeline.reenact import Reenactor
from avatar_engine.renderers import create_renderer

from runtime.capture import CameraSource, CaptureThread, open_camera
from runtime.controls import COMMANDS, HOTKEY_HELP, HOTKEYS, Controls
from runtime.outputs import Outputs
from runtime.pacing import Pacer
from runtime.processing import Processed, Processing, neutral_avatar
from runtime.session import LiveConfig, LiveReport, SessionState
from runtime.sinks import OutputInfo
from runtime.slots import Frame, LatestSlot, SlotClosed
from runtime.stats import LiveStats

__all__ = ["LiveConfig", "LiveReport", "LiveEngine", "COMMANDS", "HOTKEYS"]

log = logging.getLogger("avatar_engine")


class LiveEngine:
    """Runs one live session. ``LiveEngine(config).run()`` blocks until the session stops; an engine
    runs a single session.

    Args:
        config: session options.
    """

    def __init__(self, config: LiveConfig):
        self.config = config
        self.stats = LiveStats()
        self.state = SessionState()
        self.controls = Controls(config.stats_overlay, on_quit=lambda: self.stop("quit"))
        self._ran = False

    # ----------------------------------------------------------------------------------------- control
    def command(self, name: str) -> None:
        """Apply a hotkey command from any thread: one of :data:`~runtime.controls.COMMANDS`."""
        self.controls.command(name)

    def handle_key(self, key: int) -> str | None:
        """Act on a preview-window key code (``cv2.waitKey``; -1 = none). Returns the command run, or None."""
        return self.controls.handle_key(key)

    def stop(self, reason: str = "quit") -> None:
        """End the session (from any thread); :meth:`run` returns shortly after."""
        self.state.stop(reason)

    @property
    def mode(self) -> str:
        """``"avatar"``, ``"paused"`` or ``"passthrough"``."""
        return self.controls.mode

    # ----------------------------------------------------------------------------------------- session
    def run(self) -> LiveReport:
        """Run the session until it stops; release everything; report.

        Raises:
            CameraError: the camera is missing at start (the message lists the cameras found).
            AvatarError: unusable source photo; an output is unavailable and there is no other
                (:class:`~runtime.sinks.SinkUnavailable`, e.g. :class:`~runtime.vcam.VirtualCameraError`).
        """
        import torch

        if self._ran:
            raise RuntimeError("a LiveEngine runs one session; create a new one")
        self._ran = True
        cfg = self.config
        camera = cfg.camera if isinstance(cfg.camera, CameraSource) else open_camera(
            cfg.camera, cfg.camera_width, cfg.camera_height, cfg.camera_fps, cfg.loop, cfg.realtime)
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        restore_signals = self._install_signal_handlers()
        cam_slot: LatestSlot[Frame] = LatestSlot()
        out_slot: LatestSlot[Processed] = LatestSlot()
        capture = CaptureThread(camera, cam_slot, cfg.capture)
        outputs = Outputs(cfg)
        processing: Processing | None = None
        reenactor: Reenactor | None = None
        started = False
        try:
            camera.open()
            source = prepare_source(cfg.source, SourceConfig(size=cfg.size))
            reenactor = Reenactor(source, create_renderer(cfg.renderer, cfg.device, backend=cfg.backend,
                                                          **cfg.renderer_options), cfg.reenact)
            neutral_frame = neutral_avatar(reenactor)
            outputs.open(neutral_frame, self.controls, lambda: self.stats.snapshot(_dropped(capture)),
                         on_close=lambda: self.stop("window closed"))
            log.info("live: %s -> %s renderer at %d px -> %s", camera.name, cfg.renderer, cfg.size, outputs.describe())
            if outputs.preview is not None:
                log.info("hotkeys: %s", HOTKEY_HELP)
            processing = Processing(cfg, reenactor, neutral_frame, self.state, self.controls, self.stats)
            t_start = time.monotonic()
            capture.start()
            started = True
            processing.start(cam_slot, out_slot, lockstep=not camera.realtime)
            self._output_loop(out_slot, outputs, capture, processing, neutral_frame, t_start)
            seconds = time.monotonic() - t_start
        finally:
            self.state.stopping.set()
            capture.stop()
            cam_slot.close()
            processing_ended = processing is None or processing.join(timeout=10.0)
            if started:
                capture.join(timeout=5.0)
            if capture.is_alive():  # stuck in a driver call: it closes the camera itself
                log.warning("%s did not stop within 5 s; leaving it to close when its read returns", camera.name)
            else:
                camera.close()
            if reenactor is not None and processing_ended:
                reenactor.close()
            outputs.close()
            restore_signals()
            if cfg.threads:
                torch.set_num_threads(old_threads)
        if self.state.fatal is not None:
            raise self.state.fatal
        return self._report(seconds, capture, processing, outputs, out_slot)

    def _install_signal_handlers(self):
        """SIGINT/SIGTERM -> clean stop (a second Ctrl-C interrupts at once). Returns the undo function."""
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            log.info("stopping (%s)...", signal.Signals(signum).name)
            self.stop("interrupted")
            signal.signal(signal.SIGINT, signal.default_int_handler)

        for sig in previous:
            signal.signal(sig, handler)

        def restore():
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    # ----------------------------------------------------------------------------------------- output
    def _output_loop(self, out_slot: LatestSlot[Processed], outputs: Outputs, capture: CaptureThread,
                     processing: Processing, neutral_frame: np.ndarray, t_start: float) -> None:
        """Output loop (calling thread): pace, send to every output, measure."""
        cfg, stopping = self.config, self.state.stopping
        paced = capture.source.realtime
        pacer = Pacer(cfg.output_fps, t_start) if paced else None
        last: Processed | None = None
        sent = neutral_frame
        frozen: np.ndarray | None = None
        while not stopping.is_set():
            now = time.monotonic()
            if cfg.duration_s is not None and now - t_start >= cfg.duration_s:
                self.state.end_reason("duration")
                break
            timeout = 0.1 if pacer is None else min(max(pacer.repeat_due - now, 0.0), 0.1)
            try:
                item = out_slot.get(timeout=timeout)
            except SlotClosed:
                break
            now = time.monotonic()
            if item is None:
                if pacer is None or now < pacer.repeat_due:
                    outputs.idle()
                    continue
            elif pacer is not None:
                wait = pacer.wait_for_new(now)
                if wait > 0:  # over the rate budget: wait, and take a newer frame if one came meanwhile
                    time.sleep(wait)
                    try:
                        item = out_slot.get(timeout=0) or item
                    except SlotClosed:
                        pass
            if item is not None:
                last = item
            if self.controls.mode == "paused":
                frozen = sent if frozen is None else frozen
                frame = frozen
            else:
                frozen = None
                frame = last.avatar if last is not None else neutral_frame
            fresh = item is not None and frozen is None  # made from a camera frame not shown before
            t_out = time.monotonic()
            outputs.send(frame, self._info(last, t_out, fresh, frozen is not None, paced, t_start, capture, processing))
            if pacer is not None:
                pacer.sent(t_out, new=fresh)
            self.stats.on_output((t_out - item.t_capture) * 1e3 if fresh else None)
            sent = frame

    def _info(self, last: Processed | None, t_out: float, fresh: bool, frozen: bool, paced: bool, t_start: float,
              capture: CaptureThread, processing: Processing) -> OutputInfo:
        """What the frame sent at ``t_out`` is (``last``: the newest processed frame, None before the first)."""
        lost = capture.source.name if capture.state == "reconnecting" else ""
        if last is None:
            return OutputInfo(-1, math.nan, t_out, fresh, False, "paused" if frozen else "avatar",
                              self.config.neutral_pose and not processing.neutral_taken, paced, t_start,
                              camera_lost=lost)
        return OutputInfo(last.index, last.t_capture, t_out, fresh, last.face_found, "paused" if frozen else last.mode,
                          last.guide is not None, paced, t_start, last.camera, last.driving, last.guide, lost)

    # ----------------------------------------------------------------------------------------- report
    def _report(self, seconds: float, capture: CaptureThread, processing: Processing, outputs: Outputs,
                out_slot: LatestSlot[Processed]) -> LiveReport:
        st = self.stats
        span = (processing.t_last or 0.0) - (processing.t_first or 0.0)
        fps = (st.processed - 1) / span if st.processed > 1 and span > 0 else 0.0
        vcam, recorder = outputs.vcam, outputs.recorder
        return LiveReport(
            stop_reason=self.state.reason or "quit", seconds=seconds, frames_captured=capture.frames,
            frames_processed=st.processed, frames_no_face=st.no_face, frames_output=st.outputs_new,
            frames_repeated=st.outputs_repeated, dropped_camera=_dropped(capture),
            dropped_output=out_slot.dropped, fps=fps, latency_p50_ms=st.latency.percentile(50),
            latency_p99_ms=st.latency.percentile(99), latency_mean_ms=st.latency.mean,
            stage_ms=st.stages.means(), reconnects=capture.reconnects, neutral_taken=processing.neutral_taken,
            virtual_camera="" if vcam is None else vcam.device, virtual_camera_frames=0 if vcam is None else
            vcam.frames_sent, virtual_camera_error=outputs.vcam_error,
            recording=None if recorder is None else recorder.path,
            recording_frames=0 if recorder is None else recorder.frames_written, preview=outputs.preview is not None)


def _dropped(capture: CaptureThread) -> int:
    """Camera frames never processed: superseded in the slot, or skipped by the camera itself."""
    return capture.slot.dropped + int(getattr(capture.source, "skipped", 0))
