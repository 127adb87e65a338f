"""The live engine's processing threads: camera frames -> avatar frames.

The processing thread takes the newest camera frame from the capture slot and runs the first half
of the pipeline (:meth:`Reenactor.render <avatar_engine.pipeline.reenact.Reenactor.render>`:
landmarks, retargeting, rendering) and the neutral-pose step (:mod:`runtime.neutral`), then the
second half (:meth:`~avatar_engine.pipeline.reenact.Reenactor.finish`: super-resolution,
paste-back), and hands the result to the output loop through a latest-value slot.

With ``LiveConfig.pipelined`` (the default) the second half runs in a fourth, "finishing" thread
one frame behind, joined by another latest-value slot that is always taken before the next frame is
put; the processing thread starts each frame just in time for the finisher (running means of both
halves). Where the split falls: with a super-resolution stage (``--size 512``) after rendering (the
finisher runs SR and paste-back); without one, after the renderer's geometry (landmarks,
retargeting and the mesh grid here; the finisher draws the frame, network included, and pastes it
back: drawing is most of a 256 frame's cost). More frames per second on a
multi-core CPU, at the cost of the stages slowing each other down a little.

Until the driver's neutral pose is taken, the avatar shows the source's own pose
(:func:`neutral_avatar`), made by the same ``finish`` path as every other frame.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from avatar_engine.pipeline.reenact import Reenactor, RenderedFrame

from runtime.controls import Controls
from runtime.neutral import NeutralGuide, NeutralPoseStep
from runtime.session import LiveConfig, SessionState
from runtime.slots import Frame, LatestSlot, SlotClosed
from runtime.stats import LiveStats, speed_advice

__all__ = ["Processed", "neutral_avatar", "Processing", "MAX_CONSECUTIVE_ERRORS", "ADVICE_AFTER_S"]

log = logging.getLogger("avatar_engine")

MAX_CONSECUTIVE_ERRORS = 25
"""Frames failing in a row in one thread that end the session (fewer are skipped)."""
ADVICE_AFTER_S = 8.0
"""Seconds of processing before the engine checks once whether it keeps up with the camera."""


@dataclass
class Processed:
    """One processed frame, from the processing threads to the output loop.

    Attributes:
        avatar: ``(H, W, 3) uint8`` RGB frame for the outputs.
        camera: ``(h, w, 3) uint8`` RGB driving frame. driving: its landmarks ``(478, 3)`` or None.
        index, t_capture: of the camera frame. face_found: the driving frame had a face.
        guide: the neutral-pose guide while that step runs, else None.
        mode: ``"avatar"``, or ``"passthrough"`` when ``avatar`` is the camera frame itself.
    """

    avatar: np.ndarray
    camera: np.ndarray
    driving: np.ndarray | None
    index: int
    t_capture: float
    face_found: bool
    guide: NeutralGuide | None
    mode: str = "avatar"


@dataclass
class _Pending:
    """A camera frame between the two halves of processing: ``rendered`` is None in passthrough;
    ``hold_neutral``: show the source's neutral instead (the driver's neutral is not taken yet)."""

    frame: Frame
    rendered: RenderedFrame | None
    guide: NeutralGuide | None
    hold_neutral: bool


def neutral_avatar(reenactor: Reenactor) -> np.ndarray:
    """The avatar at the source's own pose, through the same finish path (super-resolution,
    paste-back) as every driven frame.

    Call it before the session's frames; the super-resolution history is left empty, so the first
    driven frame is made as if this one had not been.

    Returns:
        ``(H, W, 3) uint8`` RGB, the size of every other avatar frame.
    """
    source = reenactor.render_source
    crop = reenactor.renderer.render(source, source.landmarks)
    frame = reenactor.finish(RenderedFrame(crop, source.landmarks.copy(), None, False, {})).frame
    if reenactor.super_resolver is not None:
        reenactor.super_resolver.reset()
    return frame


class _FrameErrors:
    """Frames that failed in a row in one thread: each is skipped (a bug must not take the meeting
    down); :data:`MAX_CONSECUTIVE_ERRORS` in a row end the session with the error."""

    def __init__(self, stage: str, fail: Callable[[BaseException], None]):
        self.stage, self.fail, self.count = stage, fail, 0

    def failed(self, exc: Exception) -> bool:
        """Count a failure; True when the session must end."""
        self.count += 1
        if self.count == 1:
            log.exception("%s a frame failed; skipping it", self.stage)
        if self.count >= MAX_CONSECUTIVE_ERRORS:
            self.fail(RuntimeError(f"{self.count} frames in a row failed to process: {exc}"))
            return True
        return False

    def ok(self) -> None:
        self.count = 0


class Processing:
    """The processing thread (and the finishing thread, when pipelined) of one session.

    Args:
        config: the session's options (neutral-pose step, max frames, what the speed advice names).
        reenactor: the driving pipeline.
        neutral_frame: :func:`neutral_avatar` of ``reenactor``.
        state, controls, stats: the session's shared state, user controls and statistics.

    Attributes:
        neutral_taken: the driver's neutral pose was taken by the neutral-pose step.
        t_first, t_last: ``time.monotonic()`` of the first and last processed frame (None: none yet).
    """

    def __init__(self, config: LiveConfig, reenactor: Reenactor, neutral_frame: np.ndarray, state: SessionState,
                 controls: Controls, stats: LiveStats):
        self.config = config
        self.reenactor = reenactor
        self.neutral_frame = neutral_frame
        self.state, self.controls, self.stats = state, controls, stats
        self.neutral_taken = False
        self.t_first: float | None = None
        self.t_last: float | None = None
        self._speed_advised = False
        self._half_ms = {"process": 0.0, "finish": 0.0}
        self._thread: threading.Thread | None = None

    def start(self, cam_slot: LatestSlot[Frame], out_slot: LatestSlot[Processed], lockstep: bool) -> None:
        """Start the thread(s): camera frames from ``cam_slot``, results to ``out_slot`` (closed at the end).

        ``lockstep`` (a camera that is not real time): wait until the output took the previous
        result, so that every camera frame is output exactly once.
        """
        self._thread = threading.Thread(target=self._process_loop, name="processing", daemon=True,
                                        args=(cam_slot, out_slot, lockstep))
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the thread(s) to end; True when they have (the reenactor may then be closed)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------------------------ threads
    def _process_loop(self, cam_slot: LatestSlot[Frame], out_slot: LatestSlot[Processed], lockstep: bool) -> None:
        """Processing thread: camera frames -> avatar frames, until stopped or the camera ends."""
        cfg, stopping = self.config, self.state.stopping
        step = NeutralPoseStep(cfg.neutral)
        if cfg.neutral_pose:
            step.start()
            log.info("look at the camera: taking your neutral pose")
        errors = _FrameErrors("processing", self.state.fail)
        handoff: LatestSlot[_Pending] | None = None
        finisher: threading.Thread | None = None
        if cfg.pipelined:
            handoff = LatestSlot()
            finisher = threading.Thread(target=self._finish_loop, name="finishing", daemon=True,
                                        args=(handoff, out_slot, lockstep))
            finisher.start()
        delivered = 0
        try:
            while not stopping.is_set():
                if handoff is not None and finisher is not None and not self._finisher_ready(handoff, finisher):
                    return
                try:
                    frame = cam_slot.get(timeout=0.1)
                except SlotClosed:
                    self.state.end_reason("camera ended")
                    return
                if frame is None:
                    continue
                if self.controls.retake_neutral.is_set():
                    self.controls.retake_neutral.clear()
                    step.start()
                if self.controls.mode == "paused":
                    continue
                try:
                    t0 = time.perf_counter()
                    pending = self._render(frame, step)
                    self._time_half("process", t0)
                    result = None if handoff is not None else self._finish(pending)
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

    def _finisher_ready(self, handoff: LatestSlot[_Pending], finisher: threading.Thread) -> bool:
        """Wait until the finishing thread took the last frame, and then for as long as its work
        outlasts the processing half (running means of both), so that the next camera frame is read as
        late as possible: the freshest one, waiting for no one. False when the session ends meanwhile."""
        stopping = self.state.stopping
        while not handoff.wait_empty(0.1):
            if stopping.is_set() or not finisher.is_alive():
                return False
        # just in time: start the next frame so that it is rendered when the finisher is free again
        lead_s = (self._half_ms["finish"] - self._half_ms["process"]) / 1e3 - 0.005
        if lead_s > 0 and stopping.wait(min(lead_s, 0.5)):
            return False
        return finisher.is_alive()

    def _finish_loop(self, handoff: LatestSlot[_Pending], out_slot: LatestSlot[Processed], lockstep: bool) -> None:
        """Finishing thread (pipelined sessions): second halves of frames, in order."""
        errors = _FrameErrors("finishing", self.state.fail)
        delivered = 0
        try:
            while True:
                try:
                    pending = handoff.get(timeout=0.1)
                except SlotClosed:  # the processing thread has ended and nothing is left
                    return
                if pending is None:
                    if self.state.stopping.is_set():
                        return
                    continue
                try:
                    t0 = time.perf_counter()
                    result = self._finish(pending)
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

    def _time_half(self, half: str, t0: float) -> None:
        """Running mean (ms) of one half of the per-frame work (each half is written by one thread)."""
        self._half_ms[half] += 0.1 * ((time.perf_counter() - t0) * 1e3 - self._half_ms[half])

    def _deliver(self, result: Processed, out_slot: LatestSlot[Processed], lockstep: bool, delivered: int) -> bool:
        """Hand the ``delivered``-th result to the output loop; False when the session ends here."""
        if lockstep:
            while not out_slot.wait_empty(0.1):
                if self.state.stopping.is_set():
                    return False
        out_slot.put(result)
        if self.config.max_frames is not None and delivered >= self.config.max_frames:
            self.state.end_reason("max frames")
            return False
        return True

    # ------------------------------------------------------------------------------------ one frame
    def _render(self, frame: Frame, step: NeutralPoseStep) -> _Pending:
        """First half of a camera frame: landmarks, retargeting, the neutral-pose step, the renderer's
        plan, and drawing unless the finishing thread does it (pipelined, no super-resolution)."""
        if self.controls.mode == "passthrough":
            return _Pending(frame, None, None, False)
        draw = not self.config.pipelined or self.reenactor.super_resolver is not None
        rendered = self.reenactor.render(frame.image, frame.t_capture, draw=draw)
        guide, hold_neutral = None, False
        if step.active:
            h, w = frame.image.shape[:2]
            neutral = step.feed(rendered.driving, (w, h), frame.t_capture)
            if neutral is not None:
                self.reenactor.set_neutral(neutral)
                self.neutral_taken = True
            else:
                guide = step.guide((w, h))
                hold_neutral = not self.neutral_taken  # the source's neutral until the driver's is taken
        return _Pending(frame, rendered, guide, hold_neutral)

    def _finish(self, pending: _Pending) -> Processed:
        """Second half: rendering if the first half left it, super-resolution and paste-back (or the
        camera itself in passthrough)."""
        frame = pending.frame
        if pending.rendered is None:
            self._count(frame, {}, True)
            return Processed(frame.image, frame.image, None, frame.index, frame.t_capture, True, None, "passthrough")
        result = self.reenactor.finish(pending.rendered)
        avatar = self.neutral_frame if pending.hold_neutral else result.frame
        self._count(frame, result.timings_ms, result.face_found)
        return Processed(avatar, frame.image, result.driving, frame.index, frame.t_capture, result.face_found,
                         pending.guide)

    def _count(self, frame: Frame, timings_ms: dict[str, float], face_found: bool) -> None:
        now = time.monotonic()
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.stats.on_processed(timings_ms, face_found, frame.index, frame.t_capture)
        if not self._speed_advised and now - self.t_first >= ADVICE_AFTER_S:
            self._speed_advised = True  # once per session, after the first seconds (model warm-up) have passed
            cfg = self.config
            advice = speed_advice(self.stats.snapshot(0), cfg.size, cfg.renderer, str(cfg.device))
            if advice:
                log.warning("%s", advice)
