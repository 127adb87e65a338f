"""The offline ``render`` job: source photo + driving video -> mp4 with the driving audio."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from avatar_engine.errors import NoFaceError
from avatar_engine.face.landmarks import LandmarkDetector
from avatar_engine.pipeline.neutral import TYPICAL_S, NeutralChoice, choose_neutral_frame, neutral_at
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.renderers import DEFAULT_RENDERER, create_renderer
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.io.video import VideoWriter, iter_frames, probe_video

__all__ = ["RenderJobConfig", "RenderReport", "TrackedStart", "track_start", "choose_neutral", "render_video"]

log = logging.getLogger("avatar_engine")


@dataclass
class RenderJobConfig:
    """Options of ``avatar-engine render``.

    Attributes:
        source: the portrait photo. driving: the driving video. output: the mp4 to write.
        renderer: renderer name (see ``avatar_engine.renderers.RENDERER_NAMES``).
        size: face-crop side the renderer works at (256 or 512).
        device: torch device. backend: inference backend (``avatar_engine.backends.BACKEND_CHOICES``). audio: mux the driving clip's audio. max_frames: stop early.
        progress: show a progress bar.
        renderer_options: keyword arguments of ``create_renderer`` (e.g. ``weights``: a profile's weights).
        neutral_frame: the driving frame (0-based) whose face is the neutral pose; None = the most
            frontal, still frame of the first ``neutral_window_s`` seconds with a face
            (:func:`~avatar_engine.pipeline.neutral.choose_neutral_frame`), with the typical brows and
            lids of the first ``neutral_typical_s`` seconds.
    """

    source: Path
    driving: Path
    output: Path
    renderer: str = DEFAULT_RENDERER
    size: int = 256
    device: str = "cpu"
    backend: str = "eager"
    audio: bool = True
    max_frames: int | None = None
    progress: bool = True
    neutral_frame: int | None = None
    neutral_window_s: float = 3.0
    neutral_typical_s: float = TYPICAL_S
    reenact: ReenactConfig = field(default_factory=ReenactConfig)
    renderer_options: dict = field(default_factory=dict)


@dataclass
class RenderReport:
    """What a render did."""

    output: Path
    frames: int
    no_face_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    faces_in_source: int
    seconds: float
    neutral: NeutralChoice


class TrackedStart:
    """The driving tracker after :func:`track_start`: the landmarks it already gave for the first frames,
    replayed in order, then the same tracker, which goes on from where it stopped (so the render pass
    tracks exactly as one uninterrupted pass would, without tracking the start twice).

    Args:
        points: per-frame landmarks of the frames already tracked (None: no face).
        detector: the tracking detector that gave them, positioned after the last one.
    """

    def __init__(self, points: list, detector: LandmarkDetector):
        self._points, self._next, self.detector = points, 0, detector

    def detect(self, rgb, timestamp: float | None = None):
        """The next frame's landmarks (see :meth:`LandmarkDetector.detect`)."""
        if self._next < len(self._points):
            self._next += 1
            return self._points[self._next - 1]
        return self.detector.detect(rgb, timestamp)

    def close(self) -> None:
        self.detector.close()


def track_start(cfg: RenderJobConfig) -> tuple[NeutralChoice, TrackedStart]:
    """Track the start of the driving video as the pipeline will, and take its neutral frame.

    Returns the choice and the tracker to render with (the caller closes it).
    Raises:
        NoFaceError: no face in the frames looked at, or in ``cfg.neutral_frame``.
    """
    detector = LandmarkDetector(cfg.reenact.landmarks, static=False)
    try:
        times, points = _track_start(cfg, detector)
        if cfg.neutral_frame is not None:
            choice = neutral_at(times, points, cfg.neutral_frame)
        else:
            try:
                choice = choose_neutral_frame(times, points, cfg.neutral_window_s, cfg.neutral_typical_s)
            except NoFaceError:
                raise NoFaceError(f"no face found in any frame of the driving video {cfg.driving}") from None
    except BaseException:
        detector.close()
        raise
    return choice, TrackedStart(points, detector)


def _track_start(cfg: RenderJobConfig, detector: LandmarkDetector) -> tuple[list[float], list]:
    """Timestamps and landmarks (None: no face) of the driving frames the neutral choice looks at."""
    times: list[float] = []
    points = []
    first_face_t = None
    for i, (rgb, t) in enumerate(iter_frames(cfg.driving)):
        pts = detector.detect(rgb, t)
        times.append(t)
        points.append(pts)
        if first_face_t is None and pts is not None:
            first_face_t = t
        if cfg.neutral_frame is not None:
            if i >= cfg.neutral_frame:
                break
        elif first_face_t is not None and t - first_face_t > max(cfg.neutral_window_s, cfg.neutral_typical_s):
            break
    return times, points


def choose_neutral(cfg: RenderJobConfig) -> NeutralChoice:
    """The neutral frame of :func:`track_start` alone.

    Raises:
        NoFaceError: no face in the frames looked at, or in ``cfg.neutral_frame``.
    """
    choice, tracked = track_start(cfg)
    tracked.close()
    return choice


def render_video(cfg: RenderJobConfig) -> RenderReport:
    """Render ``cfg.source`` driven by ``cfg.driving`` into ``cfg.output``.

    Raises:
        AvatarError subclasses for unreadable inputs or no face (source, or the whole driving clip).
    """
    start = time.perf_counter()
    info = probe_video(cfg.driving)
    source = prepare_source(cfg.source, SourceConfig(size=cfg.size))
    renderer = create_renderer(cfg.renderer, cfg.device, backend=cfg.backend, **cfg.renderer_options)
    total = info.frames if cfg.max_frames is None else min(info.frames, cfg.max_frames)
    out_h, out_w = source.image.shape[:2] if cfg.reenact.paste_back else (cfg.size, cfg.size)
    audio_from = cfg.driving if (cfg.audio and info.has_audio) else None
    neutral, tracked = track_start(cfg)
    if neutral.problem and cfg.neutral_frame is None:
        log.warning("no frontal face in the first %.0f s of the driving video; the neutral is the best one, %s: "
                    "the avatar turns as the driver is turned (pass --neutral-frame N to choose the neutral frame)",
                    cfg.neutral_window_s, neutral.describe())
    else:
        log.info("neutral pose: %s", neutral.describe())
    frames = no_face = 0
    with Reenactor(source, renderer, cfg.reenact, detector=tracked) as reenactor, \
            VideoWriter(cfg.output, info.fps, (out_w, out_h), audio_from=audio_from) as writer, \
            tqdm(total=total, unit="frame", desc="render", disable=not cfg.progress, leave=False) as bar:
        reenactor.set_neutral(neutral.points)
        for rgb, t in iter_frames(cfg.driving, max_frames=cfg.max_frames):
            result = reenactor.step(rgb, t)
            writer.write(result.frame)
            frames += 1
            no_face += not result.face_found
            bar.update(1)
    if frames and no_face == frames:
        Path(cfg.output).unlink(missing_ok=True)
        raise NoFaceError(f"no face found in any frame of the driving video {cfg.driving}")
    if no_face:
        log.warning("no face in %d of %d driving frames: held the last pose, then eased to neutral", no_face, frames)
    return RenderReport(Path(cfg.output), frames, no_face, info.fps, out_w, out_h, audio_from is not None,
                        source.faces_found, time.perf_counter() - start, neutral)
