"""The eye layer: eyeballs that follow the gaze and lids that close, redrawn on a rendered crop.

A warp alone cannot move an iris across the sclera (it drags the whole eye opening with the lids)
nor close a lid (it stretches the lash line and the squeezed eyeball into a dark smear). Per eye,
this layer redraws, in the target's eye region of a rendered ``(S, S, 3)`` crop:

* the *eyeball* inside the target lid opening: the source's sclera with its iris removed
  (inpainted from the sclera colour), mapped column by column from the source opening to the
  target opening, and over it the source iris (its lid-covered part completed with the iris's own
  colour per radius) centred on the target iris landmark (its motion amplified by ``gaze_gain``);
* the *lids* where they cover more of the eye than in the source: between the source's lid line
  (in the target eye's frame) and the target lid line, the source's lid skin colour (sampled in a
  band above the upper / below the lower lid), a lash line along the upper lid's edge.

Everything is in crop pixels of the source crop / rendered crop (same size ``S``), landmarks
``(478, 2|3)``; see :mod:`.openings` for the eye frame. Source-only work is done once in
:class:`EyeLayer`; a frame costs two remaps of small patches.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from avatar_engine.face import topology
from avatar_engine.geometry.openings import Opening, OpeningFrame, opening_frame, patch_around, sample

__all__ = ["EyeLayerConfig", "EyeLayer", "EYES", "scale_lids"]

EYES: tuple[tuple[Opening, int, tuple[int, ...]], ...] = (
    (Opening(tuple(int(i) for i in topology.RIGHT_EYE_LOOP), 33, 133), topology.RIGHT_IRIS_CENTER, (469, 470, 471, 472)),
    (Opening(tuple(int(i) for i in topology.LEFT_EYE_LOOP), 362, 263), topology.LEFT_IRIS_CENTER, (474, 475, 476, 477)),
)
"""Per eye: the lid opening, the iris centre landmark and its 4 contour landmarks."""


@dataclass(frozen=True)
class EyeLayerConfig:
    """Options of the eye layer.

    Attributes:
        min_source_gap: eyes whose source opening (lid gap / eye width) is below this are left to the
            renderer (a closed or squinting source has no eyeball to show).
        lid_band: the lid skin colour is sampled this far (eye widths) above the upper lid line (the
            ``lid_percentile`` of the samples per column by brightness, the brightest by default: the part of
            the lid that shows when the eye closes is folded away when it is open, so crease shadow, lashes
            and eyeliner must not count; at 70 the closed lids of val photos came out grey-brown) ...
        lower_lid_band: ... and this far below the lower lid line.
        lid_percentile: see ``lid_band``.
        lid_smooth: the lid colour per column is the median of this many neighbouring columns (of 25
            along the eye): a column whose band crosses lashes or eyeliner otherwise draws a dark stripe
            down the closed lid.
        lid_reach: the lowered lid is drawn from this far (eye widths) above the source's lid line, where
            the warp stretches the crease and lashes.
        lid_feather: the lowered lid fades in over this far (eye widths) from its top edge and from the
            eye corners, so it blends into the skin around it instead of showing as a flat box.
        lash_darkness: darkening of the lash line drawn along a lowered upper lid, in [0, 1].
        closed_gap_px: where the target lid gap is below this (pixels; or half the source's gap at that
            point along the eye, where that is smaller: the corners of an eye at rest stay as they are),
            the eyeball fades to the lash colour (a closing eye shows lashes, not a squeezed sclera).
        iris_limits: the target iris radius is kept within these factors of the source's (scaled).
        gaze_gain: the iris moves this many times its landmark's motion relative to the source iris (in
            the eye's frame), clamped to the eye opening (see ``iris_margin``). Mediapipe's iris
            landmarks understate the motion of the iris they track (on rendered irises moved by known
            amounts they moved about 0.65x as far); on val, a gain of 1.5 gave an output gaze amplitude
            1.3x the driver's (self- and cross-reenactment), hence 1.15; with the lid gain of
            :class:`~avatar_engine.geometry.retarget.RetargetConfig` (1.5, narrower lids over the iris)
            1.15 gave 1.19 on 6 val clips and 1.05 gives 1.14. With the row-filled sclera (its iris hole
            no longer shows a dark smear mediapipe reads as iris) 1.05 fell to 0.92 on the full val
            self-reenactment (1.15: 0.96, 1.25: 1.01, cross-reenactment gaze correlation 0.48 -> 0.53),
            hence 1.25.
        iris_margin: the drawn iris centre is kept at least this many iris radii inside the target lid
            opening (vertically, at its column; on the lid midline where the opening is narrower than
            that), and within 0.3 eye widths of the corners' midpoint horizontally, so an extreme gaze
            does not push the iris under a lid and show a white eye. On val clips mediapipe puts the
            iris centre at least 0.4 radii inside the lids in 99 % of the open-eye frames.
    """

    min_source_gap: float = 0.12
    lid_band: tuple[float, float] = (0.12, 0.45)
    lower_lid_band: tuple[float, float] = (0.08, 0.2)
    lid_percentile: float = 100.0
    lid_smooth: int = 9
    lid_feather: float = 0.2
    lid_reach: float = 0.25
    lash_darkness: float = 0.7
    closed_gap_px: float = 4.0
    iris_limits: tuple[float, float] = (0.75, 1.35)
    gaze_gain: float = 1.25
    iris_margin: float = 0.25


def _profile(u: np.ndarray, knots: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Colours ``(K, 3)`` given at ``knots (K,)`` interpolated at ``u (...)`` -> ``(..., 3)``."""
    return np.stack([np.interp(u, knots, colours[:, k]) for k in range(3)], axis=-1)


def _iris(points: np.ndarray, centre: int, contour: tuple[int, ...]) -> tuple[np.ndarray, float]:
    p = np.asarray(points, np.float64)[:, :2]
    return p[centre], float(np.mean(np.linalg.norm(p[list(contour)] - p[centre], axis=1)))


def _fill_rows(image: np.ndarray, hole: np.ndarray, known: np.ndarray, default: np.ndarray) -> np.ndarray:
    """``image (h, w, 3) float32`` with its ``hole (h, w) bool`` pixels interpolated along each row between
    the nearest ``known & ~hole`` pixels left and right of them (the nearer one's colour past the last
    one; ``default (3,)`` in a row without any). A row-wise fill takes the sclera beside an iris, where
    an inpainting from the whole hole border would also draw in the lashes above and below it."""
    out = image.copy()
    cols = np.arange(image.shape[1])
    for y in np.flatnonzero(hole.any(axis=1)):
        src = known[y] & ~hole[y]
        fill = hole[y]
        if not src.any():
            out[y, fill] = default
            continue
        for k in range(3):
            out[y, fill, k] = np.interp(cols[fill], cols[src], image[y, src, k])
    return out


class _SourceEye:
    """The source-only data of one eye: frame, iris, sclera / iris textures, lid colours."""

    def __init__(self, crop: np.ndarray, points: np.ndarray, eye: tuple[Opening, int, tuple[int, ...]],
                 config: EyeLayerConfig):
        opening, centre, contour = eye
        self.opening, self.centre_idx, self.contour = opening, centre, contour
        self.frame = opening_frame(points, opening)
        self.iris_c, self.iris_r = _iris(points, centre, contour)
        self.usable = self.frame.gap() >= config.min_source_gap and self.iris_r > 0.5
        image = crop.astype(np.float32)
        self.sclera = image.copy()
        self.iris = image.copy()
        if self.usable:
            self._textures(image)
        u = np.linspace(-0.5, 0.5, 25)
        self.lid_u = u
        self.upper_colour = self._band(image, u, self.frame.upper(u), -np.asarray(config.lid_band),
                                       config.lid_percentile, config.lid_smooth)
        self.lower_colour = self._band(image, u, self.frame.lower(u), np.asarray(config.lower_lid_band), 50.0,
                                       config.lid_smooth)

    def _band(self, image: np.ndarray, u: np.ndarray, v: np.ndarray, band: np.ndarray, percentile: float,
              smooth: int) -> np.ndarray:
        """``(len(u), 3)`` colour per column over ``v + band`` (7 samples): the sample at ``percentile`` of
        their brightness, then the running median over ``smooth`` columns (edges repeated)."""
        offsets = np.linspace(band[0], band[1], 7)
        samples = sample(image, self.frame.to_pixels(u[:, None].repeat(7, 1), v[:, None] + offsets[None]))
        rank = np.argsort(samples.sum(axis=-1), axis=1)[:, int(round(percentile / 100.0 * 6))]
        return median_filter(samples[np.arange(len(u)), rank], size=(max(int(smooth), 1), 1), mode="nearest")

    def _textures(self, image: np.ndarray) -> None:
        f, c, r = self.frame, self.iris_c, self.iris_r
        loop = np.asarray(self.opening.loop)
        patch = patch_around(np.vstack([f.to_pixels(np.array([-0.5, 0.5]), np.zeros(2)), c[None] - r - 2,
                                        c[None] + r + 2]), 3.0, image.shape[:2])
        if patch.empty or len(loop) == 0:
            self.usable = False
            return
        xy = patch.xy
        inside = f.contains(xy)
        dist = np.linalg.norm(xy - c, axis=-1)
        block = image[patch.y0:patch.y1, patch.x0:patch.x1]
        luma = block.mean(axis=-1)
        sclera_px = inside & (dist > 1.15 * r)
        if sclera_px.sum() >= 4:
            bright = sclera_px & (luma >= np.percentile(luma[sclera_px], 40))
            sclera = np.median(block[bright], axis=0)
        else:
            sclera = np.array([210.0, 200.0, 195.0]) * min(1.0, float(np.median(luma)) / 150.0)
        # sclera texture: outside the opening the sclera colour, the iris disc filled from the sclera
        # beside it, row by row
        work = np.where(inside[..., None], block, sclera).astype(np.float32)
        self.sclera[patch.y0:patch.y1, patch.x0:patch.x1] = _fill_rows(work, (dist < 1.2 * r + 1.0) & inside,
                                                                       inside, sclera)
        # iris texture: the lid-covered part of the iris disc gets the visible iris colour at its radius
        visible = inside & (dist < r)
        iris_block = block.copy()
        covered = (dist < 1.15 * r + 1.0) & ~visible
        fallback = np.median(block[visible], axis=0) if visible.sum() >= 3 else np.array([70.0, 50.0, 40.0])
        edges = np.linspace(0.0, 1.15 * r + 1.0, 6)
        for lo, hi in zip(edges[:-1], edges[1:]):
            ring = (dist >= lo) & (dist < hi)
            seen = ring & visible
            iris_block[ring & covered] = np.median(block[seen], axis=0) if seen.sum() >= 3 else fallback
        self.iris[patch.y0:patch.y1, patch.x0:patch.x1] = iris_block


class EyeLayer:
    """Redraws both eyes of rendered crops of one source (see the module docstring).

    Args:
        crop: ``(S, S, 3) uint8`` source crop.
        points: ``(478, 2|3)`` source landmarks in crop pixels.
        config: options.
    """

    def __init__(self, crop: np.ndarray, points: np.ndarray, config: EyeLayerConfig = EyeLayerConfig()):
        self.config = config
        self.eyes = [_SourceEye(crop, points, eye, config) for eye in EYES]

    def apply(self, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Draw the eyes of ``target (478, 2|3)`` onto ``image (S, S, 3) uint8`` (returns a new array)."""
        out = image.copy()
        for eye in self.eyes:
            if eye.usable:
                self._draw(out, eye, np.asarray(target, np.float64))
        return out

    def irises(self, target: np.ndarray) -> list[tuple[np.ndarray, float] | None]:
        """Per eye (:data:`EYES` order), the iris drawn at ``target (478, 2|3)``: centre ``(2,)`` and radius
        in pixels; None for an eye left to the renderer."""
        target = np.asarray(target, np.float64)
        out: list[tuple[np.ndarray, float] | None] = []
        for eye in self.eyes:
            tgt = opening_frame(target, eye.opening)
            ok = eye.usable and np.isfinite(tgt.origin).all() and tgt.width >= 2.0
            out.append(self._iris(eye, tgt, target) if ok else None)
        return out

    def _iris(self, eye: _SourceEye, tgt: OpeningFrame, target: np.ndarray) -> tuple[np.ndarray, float]:
        """The target iris: its landmark's motion from the source's amplified by ``gaze_gain``, the centre
        clamped inside the target opening (``iris_margin``), the radius to ``iris_limits``."""
        cfg, src, w = self.config, eye.frame, tgt.width
        c_t, r_t = _iris(target, eye.centre_idx, eye.contour)
        rest_u, rest_v = src.to_frame(eye.iris_c)
        gu, gv = tgt.to_frame(c_t)
        r_ref = eye.iris_r * w / src.width
        r_t = float(np.clip(r_t, cfg.iris_limits[0] * r_ref, cfg.iris_limits[1] * r_ref))
        gu = float(np.clip(rest_u + cfg.gaze_gain * (gu - rest_u), -0.3, 0.3))
        up, lo = float(tgt.upper(gu)), float(tgt.lower(gu))
        margin = min(cfg.iris_margin * r_t / w, 0.5 * (lo - up))
        gv = float(np.clip(rest_v + cfg.gaze_gain * (gv - rest_v), up + margin, lo - margin))
        return tgt.to_pixels(np.array(gu), np.array(gv)), r_t

    def _draw(self, out: np.ndarray, eye: _SourceEye, target: np.ndarray) -> None:
        cfg = self.config
        src = eye.frame
        tgt = opening_frame(target, eye.opening)
        if not np.isfinite(tgt.origin).all() or tgt.width < 2.0:
            return
        u_line = np.linspace(-0.5, 0.5, 9)
        outline = np.vstack([tgt.to_pixels(u_line, np.minimum(src.upper(u_line) - cfg.lid_reach, tgt.upper(u_line))),
                             tgt.to_pixels(u_line, np.maximum(src.lower(u_line), tgt.lower(u_line)))])
        patch = patch_around(outline, 2.0, out.shape[:2])
        if patch.empty:
            return
        xy = patch.xy
        w = tgt.width
        u, v = tgt.to_frame(xy)
        vt_up, vt_lo, vs_up, vs_lo = tgt.upper(u), tgt.lower(u), src.upper(u), src.lower(u)
        across = np.clip((0.5 - np.abs(u)) * w + 0.5, 0.0, 1.0)
        block = out[patch.y0:patch.y1, patch.x0:patch.x1].astype(np.float32)
        # eyeball: sclera mapped column by column, iris moved to the target iris centre
        t = (v - vt_up) / np.maximum(vt_lo - vt_up, 1e-6)
        sclera = sample(eye.sclera, src.to_pixels(u, vs_up + np.clip(t, 0.0, 1.0) * (vs_lo - vs_up)))
        c_t, r_t = self._iris(eye, tgt, target)
        d = xy - c_t
        scale = eye.iris_r / r_t
        iris_xy = eye.iris_c + scale * ((d @ tgt.e1)[..., None] * src.e1 + (d @ tgt.e2)[..., None] * src.e2)
        iris_a = np.clip(r_t - np.linalg.norm(d, axis=-1) + 0.5, 0.0, 1.0)[..., None]
        ball = iris_a * sample(eye.iris, iris_xy) + (1.0 - iris_a) * sclera
        gap_px = (vt_lo - vt_up) * w
        closing_from = np.maximum(np.minimum(cfg.closed_gap_px, 0.5 * (vs_lo - vs_up) * w), 1e-3)
        closure = np.clip(1.0 - gap_px / closing_from, 0.0, 1.0)[..., None]
        ball = (1.0 - closure) * ball + closure * (1.0 - cfg.lash_darkness) * _profile(u, eye.lid_u, eye.upper_colour)
        ball_a = (np.clip(np.minimum(v - vt_up, vt_lo - v) * w + 0.5, 0.0, 1.0) * across)[..., None]
        # lids: lid skin where the target lid covers more of the eye than the source's
        lid = _profile(u, eye.lid_u, eye.upper_colour)
        lid *= (1.0 - cfg.lash_darkness * np.exp(-np.maximum(vt_up - v, 0.0) * w / 1.5))[..., None]
        drop = np.maximum(vt_up - vs_up, 0.0) * w  # how far the upper lid came down, px
        top = vs_up - cfg.lid_reach
        feather = np.maximum(cfg.lid_feather * w, 1.5)
        sides = np.clip((0.5 - np.abs(u)) * w / feather, 0.0, 1.0)
        lid_a = (np.clip((vt_up - v) * w + 0.5, 0.0, 1.0) * np.clip((v - top) * w / np.maximum(0.3 * drop, feather), 0, 1)
                 * np.clip(drop - 0.5, 0.0, 1.0) * across * sides)[..., None]
        lower = _profile(u, eye.lid_u, eye.lower_colour)
        rise = np.maximum(vs_lo - vt_lo, 0.0) * w
        low_a = (np.clip((v - vt_lo) * w + 0.5, 0.0, 1.0) * np.clip((vs_lo - v) * w / np.maximum(0.5 * rise, 1.5), 0, 1)
                 * np.clip(rise - 0.5, 0.0, 1.0) * across)[..., None]
        block = lid_a * lid + (1.0 - lid_a) * block
        block = low_a * lower + (1.0 - low_a) * block
        block = ball_a * ball + (1.0 - ball_a) * block
        out[patch.y0:patch.y1, patch.x0:patch.x1] = np.clip(block + 0.5, 0, 255).astype(np.uint8)


def scale_lids(points: np.ndarray, ratios: float | Sequence[float]) -> np.ndarray:
    """``(478, 2|3)`` ``points`` with each eye's lid landmarks (not the corners) moved to ``ratio`` times
    their distance from the lid midline, along the eye's vertical axis (the lid gap times ``ratio``).

    ``ratios``: one for both eyes, or one per eye in :data:`EYES` order (right eye, 33-133, first).
    Returns ``float32`` landmarks of the same shape."""
    per_eye = np.broadcast_to(np.asarray(ratios, np.float64), (len(EYES),))
    out = np.asarray(points, np.float32).copy()
    for (opening, _, _), ratio in zip(EYES, per_eye):
        frame = opening_frame(points, opening)
        for chain in opening.chains():
            inner = list(chain[1:-1])
            u, v = frame.to_frame(out[inner, :2])
            mid = 0.5 * (frame.upper(u) + frame.lower(u))
            out[inner, :2] = frame.to_pixels(u, mid + (v - mid) * ratio).astype(np.float32)
    return out


def retarget_lids(target: np.ndarray, source: np.ndarray, driver_neutral: np.ndarray, driver: np.ndarray,
                  max_ratio: float = 1.6, min_gap: float = 0.02, gain: float = 1.0) -> np.ndarray:
    """Eyelid opening as a *ratio* of the source's (LivePortrait-style open-ratio retargeting).

    Additive retargeting moves the source's lids by the driver's lid motion, so a small-eyed driver
    who closes their eyes leaves a large-eyed source half open. Here, along each eye (at each lid
    landmark's position ``u`` between the corners), the lid gap becomes the source's gap times the
    driver's open ratio there (gap now / gap at neutral, clamped to ``[0, max_ratio]``; 1 where the
    neutral gap is below ``min_gap`` eye widths), around the lids' midline of ``target`` (so the eye
    keeps its transferred position). When the source is the driver's neutral face (self-reenactment)
    this is exactly the additive result (with ``gain`` 1).

    Args:
        target: ``(478, 3)`` retargeted landmarks (source pixels) to correct.
        source: ``(478, 3)`` source landmarks.
        driver_neutral, driver: ``(478, 3)`` the driver's neutral and current landmarks in one head frame.
        max_ratio, min_gap: ratio clamp and the smallest neutral gap (eye widths) a ratio is taken of.
        gain: the ratio's departure from 1 is multiplied by this before the clamp.
    Returns:
        ``(478, 3) float32``: ``target`` with the lid landmarks (not the corners) moved along each eye's
        vertical axis.
    """
    out = np.asarray(target, np.float32).copy()
    for opening, _, _ in EYES:
        src, neutral, now = (opening_frame(p, opening) for p in (source, driver_neutral, driver))
        cur = opening_frame(out, opening)
        upper, lower = opening.chains()
        if np.mean(cur.to_frame(out[upper, :2])[1]) > np.mean(cur.to_frame(out[lower, :2])[1]):
            upper, lower = lower, upper
        for chain, sign in ((upper[1:-1], -0.5), (lower[1:-1], 0.5)):
            u, _ = cur.to_frame(out[chain, :2])
            neutral_gap = neutral.lower(u) - neutral.upper(u)
            ratio = np.where(neutral_gap > min_gap, (now.lower(u) - now.upper(u)) / np.maximum(neutral_gap, min_gap),
                             1.0)
            ratio = 1.0 + gain * (ratio - 1.0)
            gap = np.maximum(src.lower(u) - src.upper(u), 0.0) * np.clip(ratio, 0.0, max_ratio)
            mid = 0.5 * (cur.upper(u) + cur.lower(u))
            out[chain, :2] = cur.to_pixels(u, mid + sign * gap).astype(np.float32)
    return out
