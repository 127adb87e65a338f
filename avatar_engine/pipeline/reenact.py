"""The per-frame driving pipeline: driving frame -> avatar frame.

``Reenactor`` is the pipeline around a renderer (the model wrapper): landmarks on the driving frame
(tracking mode, smoothed), retargeting onto the source face, rendering, paste-back into the source
photo. It is used the same way by the offline ``render`` command, the live engine and evaluation.

When the driving frame has no face, the avatar holds its last pose for ``hold_s`` seconds, then eases
back to the source's neutral pose; when the face returns it eases into the driven pose again. A
tracker jump (the target's head moving by more than ``jump`` source face extents in one frame) is not
followed at once: the first frame of a jump holds the last pose (a one-frame glitch is never shown),
and a jump that persists is eased into like a returning face.

With a source prepared at 512 and ``ReenactConfig.super_resolution`` set (the default), the renderer
works at 256 on the downscaled source and the temporal super-resolution stage
(:class:`~avatar_engine.pipeline.super_resolution.SuperResolver`: causal, streaming) lifts each rendered crop to
512 before paste-back; its frame history restarts when the driving face is lost.

``step`` is ``finish(render(frame))``: :meth:`Reenactor.render` (landmarks, retargeting, rendering) and
:meth:`Reenactor.finish` (super-resolution, paste-back) touch separate state, so the live engine can
run them in two threads, one frame apart (each method called from one thread, frames in order).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from avatar_engine.face.crop import face_extent
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.renderers.base import RenderPlan, Renderer
from avatar_engine.geometry.teeth import teeth_cue
from avatar_engine.geometry.retarget import MotionRetargeter, RetargetConfig
from avatar_engine.face.source import SourceFace
from avatar_engine.pipeline.super_resolution import SuperResolutionConfig, SuperResolver, downscale_source

__all__ = ["ReenactConfig", "RenderedFrame", "FrameResult", "Reenactor"]


@dataclass
class ReenactConfig:
    """Options of the driving pipeline.

    Attributes:
        landmarks: driving-frame detector options (tracking mode, One-Euro smoothing).
        retarget: motion retargeting options.
        paste_back: paste the rendered crop back into the full source photo.
        hold_s: with no face in view, hold the last pose this long ...
        ease_out_s: ... then ease back to neutral over about this long;
        ease_in_s: when the face returns, ease into the driven pose over about this long.
        super_resolution: the SR stage for 512 sources (render at 256, lift to 512); None renders
            at the source size directly.
        jump: a head move of more than this many source face extents between two frames is a tracker
            jump (see the module docstring); None = follow every frame.
    """

    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    paste_back: bool = True
    hold_s: float = 0.5
    ease_out_s: float = 1.0
    ease_in_s: float = 0.25
    super_resolution: SuperResolutionConfig | None = field(default_factory=SuperResolutionConfig)
    jump: float | None = 0.2


@dataclass
class RenderedFrame:
    """A driving frame rendered at the renderer's size, before super-resolution and paste-back.

    Attributes:
        crop: ``(s, s, 3) uint8`` RGB rendered crop (``s`` = the renderer's source size), or None when
            drawing was left to :meth:`Reenactor.finish` (``render(..., draw=False)``: then ``plan``
            holds the renderer's plan of the frame, :meth:`Renderer.plan <avatar_engine.renderers.base.Renderer.plan>`).
        target: ``(478, 3) float32`` landmarks rendered, in that crop's pixels.
        driving: ``(478, 3) float32`` driving landmarks in driving-frame pixels, or None (no face).
        face_lost: the driving face left the view at this frame (the SR history restarts here).
        timings_ms: per-stage milliseconds so far (landmarks, retarget, render).
    """

    crop: np.ndarray | None
    target: np.ndarray
    driving: np.ndarray | None
    face_lost: bool
    timings_ms: dict[str, float]
    plan: RenderPlan | None = None


@dataclass
class FrameResult:
    """One output frame.

    Attributes:
        frame: ``(H, W, 3) uint8`` RGB: the source photo with the face pasted back, or the crop.
        crop: ``(S, S, 3) uint8`` RGB rendered face crop.
        target: ``(478, 3) float32`` landmarks rendered, in source-crop pixels.
        driving: ``(478, 3) float32`` driving landmarks in driving-frame pixels, or None (no face).
        face_found: whether the driving frame had a face.
        timings_ms: per-stage milliseconds (landmarks, retarget, render, [sr,] paste).
    """

    frame: np.ndarray
    crop: np.ndarray
    target: np.ndarray
    driving: np.ndarray | None
    face_found: bool
    timings_ms: dict[str, float]


class Reenactor:
    """Drives ``source`` with frames from one driving stream.

    Args:
        source: prepared source portrait.
        renderer: any :class:`~avatar_engine.renderers.base.Renderer`.
        config: pipeline options.
        detector: the driving landmark tracker (anything with ``detect(rgb, t)`` and ``close()``; closed
            with the reenactor); None builds a tracking :class:`LandmarkDetector` from ``config.landmarks``.
    """

    def __init__(self, source: SourceFace, renderer: Renderer, config: ReenactConfig | None = None,
                 detector: LandmarkDetector | None = None):
        self.config = config or ReenactConfig()
        self.source = source
        self.renderer = renderer
        self.super_resolver: SuperResolver | None = None
        self.render_source = source  # what the renderer animates: the 256 version under super-resolution
        if self.config.super_resolution is not None and source.size == 512:
            self.super_resolver = SuperResolver(config=self.config.super_resolution, device=renderer.device,
                                                backend=renderer.backend)
            self.render_source = downscale_source(source, self.super_resolver.input_size)
        self.detector = detector if detector is not None else LandmarkDetector(self.config.landmarks, static=False)
        self.retargeter = MotionRetargeter(self.render_source.landmarks, self.config.retarget,
                                           crop_size=self.render_source.size,
                                           source_image=self.render_source.crop_image)
        self._shown = self.render_source.landmarks.copy()
        self._last_t: float | None = None
        self._last_face_t: float | None = None
        self._recovering = False
        self._face_in_view = False
        self._jump_held = False
        self._had_face = False  # the previous target() call had a face
        self._rigid = self.retargeter.rigid
        self._jump_px = None if self.config.jump is None else self.config.jump * face_extent(self.render_source.landmarks)

    def recalibrate(self) -> None:
        """Take the next driving frame with a face as the driver's neutral pose."""
        self.retargeter.clear_neutral()

    def set_neutral(self, driving_points: np.ndarray) -> None:
        """Take ``driving_points`` ``(478, 3)`` (driving-frame pixels) as the neutral now."""
        self.retargeter.set_neutral(driving_points)

    def step(self, rgb: np.ndarray, timestamp: float | None = None) -> FrameResult:
        """Process one driving frame.

        Args:
            rgb: ``(H, W, 3) uint8`` RGB driving frame.
            timestamp: capture time in seconds (monotonic); None = wall clock.
        """
        return self.finish(self.render(rgb, timestamp))

    def render(self, rgb: np.ndarray, timestamp: float | None = None, draw: bool = True) -> RenderedFrame:
        """First half of :meth:`step`: landmarks, retargeting, rendering (arguments as there).

        ``draw=False`` stops after the renderer's geometry (:meth:`Renderer.plan
        <avatar_engine.renderers.base.Renderer.plan>`: the mesh grid; ``crop`` None): :meth:`finish`
        draws then, so that a live engine can run landmarks and drawing of consecutive frames in two
        threads."""
        t = time.monotonic() if timestamp is None else float(timestamp)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        points = self.detector.detect(rgb, t)
        t1 = time.perf_counter()
        timings["landmarks"] = (t1 - t0) * 1e3
        target = self.target(points, t)
        t2 = time.perf_counter()
        timings["retarget"] = (t2 - t1) * 1e3
        teeth = None if points is None or self.renderer.layers is None else teeth_cue(rgb, points)
        plan = self.renderer.plan(self.render_source, target, teeth)
        crop = self.renderer.draw(self.render_source, plan) if draw else None
        timings["render"] = (time.perf_counter() - t2) * 1e3
        face_lost = points is None and self._face_in_view
        self._face_in_view = points is not None
        return RenderedFrame(crop, target, points, face_lost, timings, None if draw else plan)

    def finish(self, rendered: RenderedFrame) -> FrameResult:
        """Second half of :meth:`step`: drawing (when :meth:`render` left it, ``draw=False``),
        super-resolution (512 sources) and paste-back."""
        timings = dict(rendered.timings_ms)
        crop, target = rendered.crop, rendered.target
        t3 = time.perf_counter()
        if crop is None:
            crop = self.renderer.draw(self.render_source, rendered.plan)
            t4 = time.perf_counter()
            timings["render"] = timings.get("render", 0.0) + (t4 - t3) * 1e3  # planning + drawing
            t3 = t4
        if self.super_resolver is not None:
            if rendered.face_lost:
                self.super_resolver.reset()  # face lost: restart the frame history
            crop = self.super_resolver(crop, self.render_source.key)
            target = (target * (self.source.size / self.render_source.size)).astype(np.float32)
            t4 = time.perf_counter()
            timings["sr"] = (t4 - t3) * 1e3
            t3 = t4
        frame = self.source.crop.paste_back(self.source.image, crop) if self.config.paste_back else crop
        timings["paste"] = (time.perf_counter() - t3) * 1e3
        return FrameResult(frame, crop, target, rendered.driving, rendered.driving is not None, timings)

    def target(self, points: np.ndarray | None, t: float) -> np.ndarray:
        """The landmarks to render for one frame's driving landmarks (the retargeting step of :meth:`render`).

        Args:
            points: ``(478, 3)`` driving landmarks (driving-frame pixels), or None when the frame has no face
                (then the last pose is held, then eased back to the source's neutral).
            t: frame time in seconds (increasing).
        Returns:
            ``(478, 3) float32`` target landmarks in the render source's crop pixels.
        """
        cfg = self.config
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        had_face, self._had_face = self._had_face, points is not None
        if points is not None:
            goal = self.retargeter(points)
            if had_face and self._is_jump(goal):
                self._last_face_t = t
                if not self._jump_held:  # first frame of a jump: hold (a one-frame glitch never shows)
                    self._jump_held = True
                    return self._shown.copy()
                self._recovering = True  # the jump persists: ease into it
            self._jump_held = False
            if self._recovering:
                self._shown = _ease(self._shown, goal, dt, cfg.ease_in_s)
                self._recovering = bool(np.abs(self._shown - goal).max() > 0.5)
            else:
                self._shown = goal
            self._last_face_t = t
            return self._shown.copy()
        self._recovering = True
        if self._last_face_t is None or t - self._last_face_t > cfg.hold_s:
            self._shown = _ease(self._shown, self.render_source.landmarks, dt, cfg.ease_out_s)
        return self._shown.copy()

    def _is_jump(self, goal: np.ndarray) -> bool:
        """Whether ``goal`` moves the head's rigid points further than ``config.jump`` from the last frame."""
        if self._jump_px is None or self._recovering:
            return False
        step = np.linalg.norm(goal[self._rigid, :2] - self._shown[self._rigid, :2], axis=1).max()
        return bool(step > self._jump_px)

    def close(self) -> None:
        self.detector.close()

    def __enter__(self) -> "Reenactor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ease(current: np.ndarray, goal: np.ndarray, dt: float, duration: float) -> np.ndarray:
    """Exponential approach: ~95 % of the way after ``duration`` seconds."""
    if duration <= 0:
        return goal.copy()
    keep = math.exp(-3.0 * dt / duration)
    return (goal + (current - goal) * keep).astype(np.float32)
