"""The live engine behind ``avatar-engine start``: webcam in, avatar out, in real time.

Three threads joined by latest-value slots (:class:`~runtime.slots.LatestSlot`), so a slow stage
drops stale frames instead of queueing them::

    capture thread --Frame--> processing thread --_Result--> output loop (calling thread)
    (camera.read)             (Reenactor.step:              (virtual camera, recording,
                               landmarks, retarget,          preview window + hotkeys)
                               render, paste-back)

With a super-resolution stage (``--size 512``) the processing thread does the first half of each
frame (:meth:`Reenactor.render <avatar_engine.pipeline.reenact.Reenactor.render>`: landmarks, retarget,
render) and a fourth, "finishing" thread the second half (:meth:`~avatar_engine.pipeline.reenact.Reenactor.finish`:
SR, paste-back) one frame behind, joined by another latest-value slot that is always taken before
the next frame is put; the processing thread starts each frame just in time for the finisher
(running means of both halves). More frames per second on a multi-core CPU, at the cost of the
stages slowing each other down a little.

Every frame carries its capture time (``time.monotonic()``), and the output loop measures
capture-to-output latency when it sends the avatar made from that frame.

Output pacing: with a real-time camera the output loop sends each new avatar frame as soon as it
is ready (never faster than ``output_fps`` on average), and repeats the last one when no new frame
came for 1.5 periods, then at ``output_fps`` while the stall lasts (camera reconnecting, paused, a
slow frame), so the virtual camera never stalls. The
recording follows the wall clock at ``output_fps``. With ``realtime=False`` (a file played as fast
as it is processed: tests, benchmarks) every processed frame is output exactly once, unpaced.

Session start: the driver's neutral pose is taken by a short "look at the camera" step
(:mod:`runtime.neutral`; the avatar shows the source's neutral pose meanwhile). Hotkeys in the
preview (also available as :meth:`LiveEngine.command`): C recalibrate, S stats overlay, P pause
(freeze the avatar), T passthrough (send the real camera), Q/Esc quit. Ctrl-C (SIGINT), SIGTERM and
closing the window stop the session cleanly: the threads end, the camera, the virtual camera and
the recording are released/finished, and :meth:`LiveEngine.run` returns a :class:`LiveReport`.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.errors import AvatarError
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor, RenderedFrame
from avatar_engine.renderers import create_renderer
from avatar_engine.face.source import SourceConfig, SourceFace, prepare_source

from runtime.capture import CameraSource, CaptureConfig, CaptureThread, open_camera
from runtime.neutral import NeutralCalibrator, NeutralConfig
from runtime.overlay import HOTKEY_HELP, draw_banner, draw_guide, draw_inset, draw_points, draw_stats
from runtime.sinks import (FrameSink, OutputInfo, PreviewWindow, RecorderSink, VirtualCameraConfig, VirtualCameraError,
                    VirtualCameraSink, display_available)
from runtime.slots import Frame, LatestSlot, SlotClosed
from runtime.stats import LiveStats, speed_advice

__all__ = ["LiveConfig", "LiveReport", "LiveEngine", "COMMANDS", "HOTKEYS"]

log = logging.getLogger("avatar_engine")

COMMANDS = ("recalibrate", "stats", "pause", "passthrough", "quit")
"""What :meth:`LiveEngine.command` accepts (pause and passthrough toggle)."""

HOTKEYS = {ord("c"): "recalibrate", ord("s"): "stats", ord("p"): "pause", ord(" "): "pause",
           ord("t"): "passthrough", ord("q"): "quit", 27: "quit"}
"""Preview-window keys (lower case; upper case works too) -> command."""

_MAX_CONSECUTIVE_ERRORS = 25
ADVICE_AFTER_S = 8.0
"""Seconds of processing before the engine checks once whether it keeps up with the camera."""


@dataclass
class LiveConfig:
    """Options of a live session (``avatar-engine start``).

    Attributes:
        source: portrait photo (path, or ``(H, W, 3) uint8`` RGB).
        camera: device index, video file path (played as a camera), or a :class:`CameraSource`.
        camera_width, camera_height, camera_fps: capture format (device) / resize and playing rate (file);
            None = the device default / the file's own.
        loop: replay a video file camera when it ends. realtime: play a file camera at its frame rate
            (False: as fast as frames are processed, nothing dropped, output unpaced).
        renderer: renderer name (``avatar_engine.renderers.RENDERER_NAMES``). size: face-crop side (256/512).
        device: torch device. threads: torch intra-op threads (None: torch's default).
        paste_back: output the whole source photo with the face pasted back (False: the face crop).
        preview: show the preview window (skipped with a warning when there is no display).
        virtual_camera: send to a virtual camera. vcam: its size, mirror, backend, device.
        output: record the output to this video file. output_fps: rate of the virtual camera and recording.
        sinks: extra outputs (:class:`~runtime.sinks.FrameSink`), closed at the end of the session.
        calibrate: take the neutral pose with the "look at the camera" step (False: the first frame
            with a face is the neutral). neutral: criteria of that step.
        stats_overlay: start with the stats overlay shown.
        max_frames: stop after this many processed camera frames. duration_s: stop after this many seconds.
        capture: camera reconnection policy. reenact: driving pipeline options.
        handle_signals: turn SIGINT/SIGTERM into a clean stop (only when run from the main thread).
    """

    source: str | Path | np.ndarray
    camera: str | int | CameraSource = 0
    camera_width: int | None = None
    camera_height: int | None = None
    camera_fps: float | None = None
    loop: bool = False
    realtime: bool = True
    renderer: str = "mesh"
    size: int = 256
    device: str = "cpu"
    threads: int | None = None
    paste_back: bool = True
    preview: bool = True
    virtual_camera: bool = True
    vcam: VirtualCameraConfig = field(default_factory=VirtualCameraConfig)
    output: Path | None = None
    output_fps: float = 30.0
    sinks: list[FrameSink] = field(default_factory=list)
    calibrate: bool = True
    neutral: NeutralConfig = field(default_factory=NeutralConfig)
    stats_overlay: bool = False
    max_frames: int | None = None
    duration_s: float | None = None
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    reenact: ReenactConfig = field(default_factory=ReenactConfig)
    handle_signals: bool = True

    def __post_init__(self) -> None:
        if self.size not in (256, 512):
            raise ValueError(f"size must be 256 or 512, got {self.size}")
        if self.output_fps <= 0:
            raise ValueError(f"output_fps must be > 0, got {self.output_fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")


@dataclass
class LiveReport:
    """What a live session did.

    Attributes:
        stop_reason: ``"interrupted"`` (Ctrl-C/SIGTERM), ``"quit"`` (hotkey/command), ``"window closed"``,
            ``"camera ended"`` (a file camera reached its end), ``"max frames"``, ``"duration"``.
        seconds: wall time of the live loop.
        frames_captured: camera frames read. frames_processed: frames turned into avatar frames
            (or passed through). frames_no_face: processed frames without a face.
        frames_output: new frames sent out. frames_repeated: repeats of the last frame (pacing).
        dropped_camera: camera frames never processed (processing was busy). dropped_output: processed
            frames superseded before output.
        fps: processed frames per second (steady state: first to last processed frame).
        latency_p50_ms, latency_p99_ms, latency_mean_ms: capture-to-output latency of new frames.
        stage_ms: mean per-stage processing time.
        reconnects: times the camera came back after failing.
        calibrated: the neutral pose was taken by the calibration step.
        virtual_camera: the device frames went to ("" if none). virtual_camera_frames: frames sent.
        virtual_camera_error: why the virtual camera did not open (None if it did or was not asked for).
        recording: the file written (None if none). recording_frames: its frames.
        preview: whether the preview window was shown.
    """

    stop_reason: str
    seconds: float
    frames_captured: int
    frames_processed: int
    frames_no_face: int
    frames_output: int
    frames_repeated: int
    dropped_camera: int
    dropped_output: int
    fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    stage_ms: dict[str, float]
    reconnects: int
    calibrated: bool
    virtual_camera: str
    virtual_camera_frames: int
    virtual_camera_error: str | None
    recording: Path | None
    recording_frames: int
    preview: bool

    def summary(self) -> str:
        """A few human-readable lines for the end of a session."""
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        lines = [f"stopped ({self.stop_reason}) after {self.seconds:.1f} s: {self.frames_processed} frames at "
                 f"{self.fps:.1f} fps, capture-to-output latency p50 {self.latency_p50_ms:.0f} ms / "
                 f"p99 {self.latency_p99_ms:.0f} ms, dropped {self.dropped_camera} camera frames, "
                 f"{self.frames_no_face} without a face, {self.reconnects} camera reconnects",
                 f"per-stage ms: {stages}"]
        if self.virtual_camera:
            lines.append(f"virtual camera {self.virtual_camera}: {self.virtual_camera_frames} frames sent")
        elif self.virtual_camera_error:
            lines.append("virtual camera: not available (see the warning above, or run: avatar-engine doctor)")
        if self.recording is not None:
            lines.append(f"recorded {self.recording}: {self.recording_frames} frames")
        return "\n".join(lines)


@dataclass
class _Result:
    """One processed frame, from the processing thread to the output loop.

    Attributes:
        avatar: ``(H, W, 3) uint8`` RGB frame for the virtual camera and recording.
        camera: ``(h, w, 3) uint8`` RGB driving frame. driving: its landmarks ``(478, 3)`` or None.
        index, t_capture: of the camera frame. face_found: the driving frame had a face.
        guide: ``(box, ok, progress, hint)`` while the neutral is being taken, else None.
        mode: ``"avatar"``, or ``"passthrough"`` when ``avatar`` is the camera frame itself.
    """

    avatar: np.ndarray
    camera: np.ndarray
    driving: np.ndarray | None
    index: int
    t_capture: float
    face_found: bool
    guide: tuple[tuple[int, int, int, int], bool, float, str] | None
    mode: str = "avatar"


@dataclass
class _Pending:
    """A camera frame between the two halves of processing: ``rendered`` is None in passthrough;
    ``hold_neutral``: show the source's neutral instead (the driver's neutral is not taken yet)."""

    frame: Frame
    rendered: RenderedFrame | None
    guide: tuple[tuple[int, int, int, int], bool, float, str] | None
    hold_neutral: bool


class _FrameErrors:
    """Frames that failed in a row in one thread: each is skipped (a bug must not take the meeting
    down); ``_MAX_CONSECUTIVE_ERRORS`` in a row end the session with the error."""

    def __init__(self, stage: str, fail: Callable[[BaseException], None]):
        self.stage, self.fail, self.count = stage, fail, 0

    def failed(self, exc: Exception) -> bool:
        """Count a failure; True when the session must end."""
        self.count += 1
        if self.count == 1:
            log.exception("%s a frame failed; skipping it", self.stage)
        if self.count >= _MAX_CONSECUTIVE_ERRORS:
            self.fail(RuntimeError(f"{self.count} frames in a row failed to process: {exc}"))
            return True
        return False

    def ok(self) -> None:
        self.count = 0


class LiveEngine:
    """Runs one live session. ``LiveEngine(config).run()`` blocks until the session stops; an engine
    runs a single session.

    Args:
        config: session options.
    """

    def __init__(self, config: LiveConfig):
        self.config = config
        self.stats = LiveStats()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._recalibrate = threading.Event()
        self._mode = "avatar"  # "avatar" | "paused" | "passthrough"
        self._show_stats = config.stats_overlay
        self._calibrated = False
        self._fatal: BaseException | None = None
        self._t_first_processed: float | None = None
        self._speed_advised = False
        self._half_ms = {"process": 0.0, "finish": 0.0}
        self._t_last_processed: float | None = None
        self._ran = False

    # ----------------------------------------------------------------------------------------- control
    def command(self, name: str) -> None:
        """Apply a hotkey command from any thread: one of :data:`COMMANDS`."""
        if name == "recalibrate":
            self._recalibrate.set()
            log.info("re-taking the neutral pose: look at the camera")
        elif name == "stats":
            self._show_stats = not self._show_stats
        elif name == "pause":
            self._mode = "avatar" if self._mode == "paused" else "paused"
            log.info("paused: the avatar is frozen" if self._mode == "paused" else "resumed")
        elif name == "passthrough":
            self._mode = "avatar" if self._mode == "passthrough" else "passthrough"
            log.info("passthrough: sending your real camera" if self._mode == "passthrough"
                     else "back to the avatar")
        elif name == "quit":
            self.stop("quit")
        else:
            raise ValueError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")

    def handle_key(self, key: int) -> str | None:
        """Act on a preview-window key code (``cv2.waitKey``; -1 = none). Returns the command run, or None."""
        if key < 0:
            return None
        name = HOTKEYS.get(ord(chr(key).lower()) if key < 128 else key)
        if name is not None:
            self.command(name)
        return name

    def stop(self, reason: str = "quit") -> None:
        """End the session (from any thread); :meth:`run` returns shortly after."""
        if not self._stop_reason:
            self._stop_reason = reason
        self._stop.set()

    @property
    def mode(self) -> str:
        """``"avatar"``, ``"paused"`` or ``"passthrough"``."""
        return self._mode

    # ----------------------------------------------------------------------------------------- session
    def run(self) -> LiveReport:
        """Run the session until it stops; release everything; report.

        Raises:
            CameraError: the camera is missing at start (the message lists the cameras found).
            AvatarError: unusable source photo; the virtual camera failed and there is no other output.
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
        capture: CaptureThread | None = None
        processor: threading.Thread | None = None
        reenactor: Reenactor | None = None
        sinks = _Sinks()
        try:
            camera.open()
            source = prepare_source(cfg.source, SourceConfig(size=cfg.size))
            renderer = create_renderer(cfg.renderer, cfg.device)
            reenactor = Reenactor(source, renderer, cfg.reenact)
            neutral_frame = self._neutral_frame(source, renderer)
            sinks.open(cfg, neutral_frame.shape[1::-1])
            log.info("live: %s -> %s renderer at %d px -> %s", camera.name, cfg.renderer, cfg.size, sinks.describe())
            if sinks.preview is not None:
                log.info("hotkeys: %s", HOTKEY_HELP)

            cam_slot: LatestSlot[Frame] = LatestSlot()
            out_slot: LatestSlot[_Result] = LatestSlot()
            capture = CaptureThread(camera, cam_slot, cfg.capture)
            processor = threading.Thread(target=self._process_loop, name="processing", daemon=True,
                                         args=(cam_slot, out_slot, reenactor, neutral_frame, not camera.realtime))
            t_start = time.monotonic()
            capture.start()
            processor.start()
            self._output_loop(out_slot, sinks, capture, neutral_frame, t_start)
            seconds = time.monotonic() - t_start
        finally:
            self._stop.set()
            if capture is not None:
                capture.stop()
                capture.slot.close()
            if processor is not None:
                processor.join(timeout=10.0)
            if capture is not None:
                capture.join(timeout=5.0)
            if capture is not None and capture.is_alive():  # stuck in a driver call: it closes the camera itself
                log.warning("%s did not stop within 5 s; leaving it to close when its read returns", camera.name)
            else:
                camera.close()
            if reenactor is not None and not (processor is not None and processor.is_alive()):
                reenactor.close()
            sinks.close(cfg.sinks)
            restore_signals()
            if cfg.threads:
                torch.set_num_threads(old_threads)
        if self._fatal is not None:
            raise self._fatal
        return self._report(seconds, capture, camera, sinks, cam_slot, out_slot)

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

    def _neutral_frame(self, source: SourceFace, renderer) -> np.ndarray:
        """The avatar at the source's own pose (shown until the driver's neutral is taken)."""
        crop = renderer.render(source, source.landmarks)
        return source.crop.paste_back(source.image, crop) if self.config.paste_back else crop

    # ----------------------------------------------------------------------------------------- threads
    def _process_loop(self, cam_slot: LatestSlot[Frame], out_slot: LatestSlot[_Result], reenactor: Reenactor,
                      neutral_frame: np.ndarray, lockstep: bool) -> None:
        """Processing thread: camera frames -> avatar frames, until stopped or the camera ends.

        ``lockstep`` (a camera that is not real time): wait until the output took the previous
        result, so that every camera frame is output exactly once. With a super-resolution stage the
        second half of each frame (SR, paste-back) runs in a "finishing" thread, one frame behind
        (:meth:`_finish_loop`), so the two halves of consecutive frames share the cores.
        """
        cfg = self.config
        calibrator = NeutralCalibrator(cfg.neutral)
        if cfg.calibrate:
            calibrator.start()
            log.info("look at the camera: taking your neutral pose")
        errors = _FrameErrors("processing", self._fail)
        handoff: LatestSlot[_Pending] | None = None
        finisher: threading.Thread | None = None
        if reenactor.super_resolver is not None:
            handoff = LatestSlot()
            finisher = threading.Thread(target=self._finish_loop, name="finishing", daemon=True,
                                        args=(handoff, out_slot, reenactor, neutral_frame, lockstep))
            finisher.start()
        delivered = 0
        try:
            while not self._stop.is_set():
                if handoff is not None and finisher is not None and not self._finisher_ready(handoff, finisher):
                    return
                try:
                    frame = cam_slot.get(timeout=0.1)
                except SlotClosed:
                    self._set_end_reason("camera ended")
                    return
                if frame is None:
                    continue
                if self._recalibrate.is_set():
                    self._recalibrate.clear()
                    calibrator.start()
                if self._mode == "paused":
                    continue
                try:
                    t0 = time.perf_counter()
                    pending = self._process(frame, reenactor, calibrator)
                    self._time_half("process", t0)
                    result = None if handoff is not None else self._finish(pending, reenactor, neutral_frame)
                except Exception as exc:  # a bug must not take the meeting down: skip the frame
                    if errors.failed(exc):
                        return
                    continue
                errors.ok()
                if handoff is not None:
                    handoff.put(pending)  # empty: _finisher_ready waited for the finisher to take the last one
                    continue
                delivered += 1
                if not self._deliver(result, out_slot, lockstep, delivered):
                    return
        finally:
            if handoff is not None and finisher is not None:
                handoff.close()  # the finisher outputs the frame it was handed, then closes the output
                finisher.join(timeout=10.0)
            else:
                out_slot.close()

    def _finisher_ready(self, handoff: LatestSlot["_Pending"], finisher: threading.Thread) -> bool:
        """Wait until the finishing thread took the last frame, and then for as long as its work
        outlasts the processing half (running means of both), so that the next camera frame is read as
        late as possible: the freshest one, waiting for no one. False when the session ends meanwhile."""
        while not handoff.wait_empty(0.1):
            if self._stop.is_set() or not finisher.is_alive():
                return False
        # just in time: start the next frame so that it is rendered when the finisher is free again
        lead_s = (self._half_ms["finish"] - self._half_ms["process"]) / 1e3 - 0.005
        if lead_s > 0 and self._stop.wait(min(lead_s, 0.5)):
            return False
        return finisher.is_alive()

    def _finish_loop(self, handoff: LatestSlot["_Pending"], out_slot: LatestSlot[_Result],
                     reenactor: Reenactor, neutral_frame: np.ndarray, lockstep: bool) -> None:
        """Finishing thread (sessions with super-resolution): second halves of frames, in order."""
        errors = _FrameErrors("finishing", self._fail)
        delivered = 0
        try:
            while True:
                try:
                    pending = handoff.get(timeout=0.1)
                except SlotClosed:  # the processing thread has ended and nothing is left
                    return
                if pending is None:
                    if self._stop.is_set():
                        return
                    continue
                try:
                    t0 = time.perf_counter()
                    result = self._finish(pending, reenactor, neutral_frame)
                    self._time_half("finish", t0)
                except Exception as exc:  # as in the processing thread: skip the frame
                    if errors.failed(exc):
                        return
                    continue
                errors.ok()
                delivered += 1
                if not self._deliver(result, out_slot, lockstep, delivered):
                    return
        finally:
            out_slot.close()

    def _fail(self, error: BaseException) -> None:
        """End the session with ``error`` (raised again by :meth:`run`)."""
        self._fatal = error
        self.stop("error")

    def _time_half(self, half: str, t0: float) -> None:
        """Running mean (ms) of one half of the per-frame work (each half is written by one thread)."""
        self._half_ms[half] += 0.1 * ((time.perf_counter() - t0) * 1e3 - self._half_ms[half])

    def _deliver(self, result: _Result, out_slot: LatestSlot[_Result], lockstep: bool, delivered: int) -> bool:
        """Hand the ``delivered``-th result to the output loop; False when the session ends here."""
        if lockstep:
            while not out_slot.wait_empty(0.1):
                if self._stop.is_set():
                    return False
        out_slot.put(result)
        if self.config.max_frames is not None and delivered >= self.config.max_frames:
            self._set_end_reason("max frames")
            return False
        return True

    def _process(self, frame: Frame, reenactor: Reenactor, calibrator: NeutralCalibrator) -> "_Pending":
        """First half of a camera frame: landmarks, retargeting, rendering, the neutral-pose step."""
        if self._mode == "passthrough":
            return _Pending(frame, None, None, False)
        rendered = reenactor.render(frame.image, frame.t_capture)
        guide, hold_neutral = None, False
        if calibrator.active:
            h, w = frame.image.shape[:2]
            neutral = calibrator.feed(rendered.driving, (w, h), frame.t_capture)
            if neutral is not None:
                reenactor.set_neutral(neutral)
                self._calibrated = True
            else:
                guide = (calibrator.guide_box((w, h)), calibrator.ok, calibrator.progress, calibrator.hint)
                hold_neutral = not self._calibrated  # the avatar holds the source's neutral until the driver's is taken
        return _Pending(frame, rendered, guide, hold_neutral)

    def _finish(self, pending: "_Pending", reenactor: Reenactor, neutral_frame: np.ndarray) -> _Result:
        """Second half: super-resolution and paste-back (or the camera itself in passthrough)."""
        frame = pending.frame
        if pending.rendered is None:
            self._count_processed({}, True, frame)
            return _Result(frame.image, frame.image, None, frame.index, frame.t_capture, True, None, "passthrough")
        result = reenactor.finish(pending.rendered)
        avatar = neutral_frame if pending.hold_neutral else result.frame
        self._count_processed(result.timings_ms, result.face_found, frame)
        return _Result(avatar, frame.image, result.driving, frame.index, frame.t_capture, result.face_found,
                       pending.guide)

    def _count_processed(self, timings_ms: dict[str, float], face_found: bool, frame: Frame) -> None:
        now = time.monotonic()
        if self._t_first_processed is None:
            self._t_first_processed = now
        self._t_last_processed = now
        self.stats.on_processed(timings_ms, face_found, frame.index, frame.t_capture)
        if not self._speed_advised and now - self._t_first_processed >= ADVICE_AFTER_S:
            self._speed_advised = True  # once per session, after the first seconds (model warm-up) have passed
            cfg = self.config
            advice = speed_advice(self.stats.snapshot(0), cfg.size, cfg.renderer, str(cfg.device))
            if advice:
                log.warning("%s", advice)

    def _set_end_reason(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason

    def _output_loop(self, out_slot: LatestSlot[_Result], sinks: "_Sinks", capture: CaptureThread,
                     neutral_frame: np.ndarray, t_start: float) -> None:
        """Output loop (calling thread): pace, send, record, preview, hotkeys."""
        cfg = self.config
        pacer = _Pacer(cfg.output_fps, t_start) if capture.source.realtime else None
        last: _Result | None = None
        sent = neutral_frame
        frozen: np.ndarray | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if cfg.duration_s is not None and now - t_start >= cfg.duration_s:
                self._set_end_reason("duration")
                break
            if sinks.preview is not None and sinks.preview.closed_by_user:
                self._set_end_reason("window closed")
                break
            timeout = 0.1 if pacer is None else min(max(pacer.repeat_due - now, 0.0), 0.1)
            try:
                item = out_slot.get(timeout=timeout)
            except SlotClosed:
                break
            now = time.monotonic()
            if item is None:
                if pacer is None or now < pacer.repeat_due:
                    self._poll_preview(sinks, last, sent, capture)
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
            if self._mode == "paused":
                frozen = sent if frozen is None else frozen
                frame = frozen
            else:
                frozen = None
                frame = last.avatar if last is not None else neutral_frame
            fresh = item is not None and frozen is None  # made from a camera frame not shown before
            sinks.send(frame)
            t_out = time.monotonic()
            if pacer is not None:
                pacer.sent(t_out, new=fresh)
            if cfg.sinks:
                info = OutputInfo(-1 if last is None else last.index, math.nan if last is None else last.t_capture,
                                  t_out, fresh, last is not None and last.face_found,
                                  "paused" if frozen is not None else ("avatar" if last is None else last.mode),
                                  (cfg.calibrate and not self._calibrated) if last is None else last.guide is not None)
                for extra in cfg.sinks:
                    extra.send(frame, info)
            if sinks.recorder is not None:
                if pacer is not None:  # constant frame rate on the wall clock: repeat or skip to keep up
                    due = int((t_out - t_start) * cfg.output_fps) + 1
                    sinks.recorder.write(frame, max(0, due - sinks.recorder.frames_written))
                elif fresh:
                    sinks.recorder.write(frame)
            self.stats.on_output((t_out - item.t_capture) * 1e3 if fresh else None)
            sent = frame
            self._poll_preview(sinks, last, sent, capture)

    def _poll_preview(self, sinks: "_Sinks", last: _Result | None, sent: np.ndarray, capture: CaptureThread) -> None:
        """Show the preview (when there is one) and act on the key pressed."""
        if sinks.preview is None:
            return
        self.handle_key(sinks.preview.show(self._preview_image(last, sent, capture)))

    def _preview_image(self, last: _Result | None, sent: np.ndarray, capture: CaptureThread) -> np.ndarray:
        """What the preview shows: the output (or, while calibrating, the camera with the guide) + overlays."""
        if last is not None and last.guide is not None:
            box, ok, progress, hint = last.guide
            main = _preview_size(last.camera)
            k = main.shape[0] / last.camera.shape[0]
            main = draw_guide(main, tuple(round(v * k) for v in box), ok, progress, hint)
            if last.driving is not None:
                main = draw_points(main, last.driving * k)
            main = draw_inset(main, sent)
        else:
            main = _preview_size(sent)
            if last is not None and self._mode != "passthrough":
                main = draw_inset(main, last.camera)
        if capture.state == "reconnecting":
            main = draw_banner(main, f"{capture.source.name} lost: reconnecting (the avatar holds its last frame)")
        elif self._mode == "paused":
            main = draw_banner(main, "PAUSED: the avatar is frozen (P to resume)")
        elif self._mode == "passthrough":
            main = draw_banner(main, "PASSTHROUGH: your real camera is live (T: back to the avatar)")
        elif last is not None and not last.face_found:
            main = draw_banner(main, "no face in view: the avatar returns to its neutral pose")
        if self._show_stats:
            main = draw_stats(main, self.stats.snapshot(self._dropped(capture)))
        return main

    # ----------------------------------------------------------------------------------------- report
    def _dropped(self, capture: CaptureThread) -> int:
        return capture.slot.dropped + int(getattr(capture.source, "skipped", 0))

    def _report(self, seconds: float, capture: CaptureThread, camera: CameraSource, sinks: "_Sinks",
                cam_slot: LatestSlot[Frame], out_slot: LatestSlot[_Result]) -> LiveReport:
        st = self.stats
        span = (self._t_last_processed or 0.0) - (self._t_first_processed or 0.0)
        fps = (st.processed - 1) / span if st.processed > 1 and span > 0 else 0.0
        return LiveReport(
            stop_reason=self._stop_reason or "quit", seconds=seconds, frames_captured=capture.frames,
            frames_processed=st.processed, frames_no_face=st.no_face, frames_output=st.outputs_new,
            frames_repeated=st.outputs_repeated, dropped_camera=self._dropped(capture),
            dropped_output=out_slot.dropped, fps=fps, latency_p50_ms=st.latency.percentile(50),
            latency_p99_ms=st.latency.percentile(99), latency_mean_ms=st.latency.mean,
            stage_ms=st.stages.means(), reconnects=capture.reconnects, calibrated=self._calibrated,
            virtual_camera=sinks.vcam_device, virtual_camera_frames=sinks.vcam_frames,
            virtual_camera_error=sinks.vcam_error, recording=sinks.recording_path,
            recording_frames=sinks.recording_frames, preview=sinks.preview_shown)


class _Pacer:
    """When the output loop sends, with a real-time camera.

    New frames go out as soon as they are ready, within a token bucket of ``fps`` tokens per second
    (at most 2 saved up), so the output never runs faster than ``fps`` on average. When no new frame
    came for 1.5 periods, the last frame is repeated, and then once per period while the stall lasts.

    Args:
        fps: the output rate. now: ``time.monotonic()`` at start.
    """

    def __init__(self, fps: float, now: float):
        self.period = 1.0 / fps
        self.tokens = 1.0
        self._t = now
        self.last_send = -math.inf
        self._repeating = True

    def _refill(self, now: float) -> None:
        self.tokens = min(2.0, self.tokens + (now - self._t) / self.period)
        self._t = now

    @property
    def repeat_due(self) -> float:
        """When the last frame is to be sent again if nothing new comes (``time.monotonic()``)."""
        return self.last_send + (1.0 if self._repeating else 1.5) * self.period

    def wait_for_new(self, now: float) -> float:
        """Seconds a new frame must wait before it may go out (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) * self.period

    def sent(self, now: float, new: bool) -> None:
        """A frame went out at ``now`` (``new``: made from a new camera frame, else a repeat)."""
        self._refill(now)
        self.tokens -= 1.0
        self.last_send = now
        self._repeating = not new


def _preview_size(img: np.ndarray, lo: int = 480, hi: int = 900) -> np.ndarray:
    """``img`` scaled so that its height is within ``[lo, hi]`` (overlays stay readable)."""
    h = img.shape[0]
    if lo <= h <= hi:
        return img
    s = (lo if h < lo else hi) / h
    return cv2.resize(img, (round(img.shape[1] * s), round(h * s)), interpolation=cv2.INTER_LINEAR)


class _Sinks:
    """The session's outputs: opened by :meth:`open`, all released by :meth:`close`."""

    def __init__(self) -> None:
        self.preview: PreviewWindow | None = None
        self.vcam: VirtualCameraSink | None = None
        self.recorder: RecorderSink | None = None
        self.vcam_error: str | None = None
        self.vcam_device = ""
        self.vcam_frames = 0
        self.recording_path: Path | None = None
        self.recording_frames = 0
        self.preview_shown = False

    def open(self, cfg: LiveConfig, frame_size: tuple[int, int]) -> None:
        """Open what ``cfg`` asks for; ``frame_size = (W, H)`` of the avatar frames.

        Raises:
            VirtualCameraError: the virtual camera failed and there is no other output (preview,
                recording, or an extra sink from ``cfg.sinks`` such as a WebRTC track).
        """
        if cfg.preview:
            if display_available():
                self.preview = PreviewWindow()
                self.preview.open()
                self.preview_shown = True
            else:
                log.warning("no display: running without the preview window (hotkeys need it; stop with Ctrl-C)")
        if cfg.output is not None:
            self.recorder = RecorderSink(cfg.output, cfg.output_fps, frame_size)
            self.recorder.open()
            self.recording_path = Path(cfg.output)
        if cfg.virtual_camera:
            vcam = VirtualCameraSink(cfg.vcam, cfg.output_fps)
            try:
                vcam.open()
            except VirtualCameraError as exc:
                self.vcam_error = str(exc)
                others = [name for name, there in (("preview", self.preview is not None),
                                                   ("recording", self.recorder is not None),
                                                   ("other outputs", bool(cfg.sinks))) if there]
                if not others:
                    raise
                log.warning("%s; the %s keep%s working", exc, " and ".join(others), "" if len(others) > 1 else "s")
            else:
                self.vcam = vcam
                self.vcam_device = vcam.device

    def describe(self) -> str:
        parts = []
        if self.vcam is not None:
            parts.append(f"virtual camera {self.vcam_device} ({self.vcam.config.width}x{self.vcam.config.height} "
                         f"@ {self.vcam.fps:g} fps)")
        if self.recorder is not None:
            parts.append(f"recording {self.recorder.path}")
        if self.preview is not None:
            parts.append("preview window")
        return ", ".join(parts) or "no output (headless run)"

    def send(self, frame: np.ndarray) -> None:
        if self.vcam is not None:
            self.vcam.send(frame)

    def close(self, extra: list[FrameSink]) -> None:
        """Release everything (and close the ``extra`` sinks); one failing sink does not keep the others open."""
        errors = []
        for sink in extra:
            try:
                sink.close()
            except Exception as exc:
                errors.append(f"{type(sink).__name__}: {exc}")
        for attr in ("vcam", "recorder", "preview"):
            sink = getattr(self, attr)
            if sink is None:
                continue
            if attr == "vcam":
                self.vcam_frames = sink.frames_sent
            elif attr == "recorder":
                self.recording_frames = sink.frames_written
            try:
                sink.close()
            except Exception as exc:  # report, keep closing the others
                errors.append(f"{attr}: {exc}")
            setattr(self, attr, None)
        if errors:
            raise AvatarError("could not close outputs cleanly: " + "; ".join(errors))
