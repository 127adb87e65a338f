"""One live session: its options (:class:`LiveConfig`), its shared state (:class:`SessionState`) and
what it did (:class:`LiveReport`)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar_engine.config import DEFAULT_RENDERER
from avatar_engine.pipeline.reenact import ReenactConfig

from runtime.capture import CameraSource, CaptureConfig
from runtime.neutral import NeutralConfig
from runtime.sinks import FrameSink
from runtime.vcam import VirtualCameraConfig

__all__ = ["LiveConfig", "LiveReport", "SessionState"]


@dataclass
class LiveConfig:
    """Options of a live session (``avatar-engine start``; ``avatar-engine serve`` runs its engines with it).

    Attributes:
        source: portrait photo (path, or ``(H, W, 3) uint8`` RGB).
        camera: device index, video file path (played as a camera), or a :class:`CameraSource`.
        camera_width, camera_height, camera_fps: capture format (device) / resize and playing rate (file);
            None = the device default / the file's own.
        loop: replay a video file camera when it ends. realtime: play a file camera at its frame rate
            (False: as fast as frames are processed, nothing dropped, output unpaced).
        renderer: renderer name (``avatar_engine.renderers.RENDERER_NAMES``). size: face-crop side (256/512).
        device: torch device. threads: torch intra-op threads (None: torch's default).
        backend: inference backend of the renderer and SR step (``avatar_engine.backends.BACKEND_CHOICES``).
        preview: show the preview window (skipped with a warning when there is no display).
        virtual_camera: send to a virtual camera. vcam: its size, mirror, backend, device.
        output: record the output to this video file. output_fps: rate of the virtual camera and recording.
        sinks: extra outputs (:class:`~runtime.sinks.FrameSink`), opened and closed with the session.
        neutral_pose: take the driver's neutral pose with the "look at the camera" step (False: the
            first frame with a face is the neutral). neutral: criteria of that step.
        stats_overlay: start with the stats overlay shown.
        max_frames: stop after this many processed camera frames. duration_s: stop after this many seconds.
        capture: camera reconnection policy.
        reenact: driving pipeline options (expression scale, paste-back, smoothing, super-resolution).
        handle_signals: turn SIGINT/SIGTERM into a clean stop (only when run from the main thread).
        renderer_options: keyword arguments of ``create_renderer`` (e.g. ``weights``: a profile's weights).
        pipelined: run each frame's second half in its own "finishing" thread, one frame behind the
            first (at 256: landmarks, retargeting and the mesh grid | drawing and paste-back; at 512: up to rendering |
            super-resolution and paste-back). More frames per second on a multi-core CPU; False: one
            processing thread.
    """

    source: str | Path | np.ndarray
    camera: str | int | CameraSource = 0
    camera_width: int | None = None
    camera_height: int | None = None
    camera_fps: float | None = None
    loop: bool = False
    realtime: bool = True
    renderer: str = DEFAULT_RENDERER
    size: int = 256
    device: str = "cpu"
    threads: int | None = None
    backend: str = "auto"
    preview: bool = True
    virtual_camera: bool = True
    vcam: VirtualCameraConfig = field(default_factory=VirtualCameraConfig)
    output: Path | None = None
    output_fps: float = 30.0
    sinks: list[FrameSink] = field(default_factory=list)
    neutral_pose: bool = True
    neutral: NeutralConfig = field(default_factory=NeutralConfig)
    stats_overlay: bool = False
    max_frames: int | None = None
    duration_s: float | None = None
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    reenact: ReenactConfig = field(default_factory=ReenactConfig)
    handle_signals: bool = True
    renderer_options: dict = field(default_factory=dict)
    pipelined: bool = True

    def __post_init__(self) -> None:
        if self.size not in (256, 512):
            raise ValueError(f"size must be 256 or 512, got {self.size}")
        if self.output_fps <= 0:
            raise ValueError(f"output_fps must be > 0, got {self.output_fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")


class SessionState:
    """What every thread of one session shares: whether it is stopping, why, and a fatal error."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.reason = ""
        self.fatal: BaseException | None = None

    def stop(self, reason: str) -> None:
        """End the session (from any thread); the first reason given is kept."""
        self.end_reason(reason)
        self.stopping.set()

    def end_reason(self, reason: str) -> None:
        """Say why the session ends, unless a reason was already given."""
        if not self.reason:
            self.reason = reason

    def fail(self, error: BaseException) -> None:
        """End the session with ``error`` (raised again by :meth:`LiveEngine.run <runtime.engine.LiveEngine.run>`)."""
        self.fatal = error
        self.stop("error")


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
        neutral_taken: the driver's neutral pose was taken by the neutral-pose step.
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
    neutral_taken: bool
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
