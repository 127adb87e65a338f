"""The mouth layer: a mouth interior (cavity, upper and lower teeth) where the target opens wider than the source.

A warp can only stretch what the source shows: a closed source mouth opened by the driver becomes
stretched lips. Inside the target's inner-lip opening this layer draws a procedural interior in the
source's colours, blended in by how much wider the target opens than the source:

* the cavity: the source's lip colour, darkened (more under the upper lip than towards the lower);
* the tongue, once the mouth opens ``tongue_from`` inter-ocular distances: a rounded bump rising from
  the lower lip, in a shade of the lip colour;
* the upper teeth: a band under the upper inner lip, in a teeth colour set by the face's brightness,
  with darker gaps between teeth (narrowing towards the corners) and shaded towards the corners;
* the lower teeth: a narrower, darker band above the lower lip.

How much teeth show follows the driver: :func:`~avatar_engine.geometry.teeth.teeth_cue` measures, on the driving frame, how much of
its opening's height is teeth under the upper and over the lower lip (a driver talking with the
teeth hidden gets no teeth drawn, one who grins gets both rows). Without a cue (landmarks only) the
bands take the configured heights (``upper_teeth``, and ``lower_teeth`` once the mouth is wide open).
On 6 val clips (mesh renderer, 30 frames each; 113 teeth-visible and 67 teeth-hidden driver frames),
teeth drawn when the driver shows none: 52 % of those frames without the cue, 9 % with it (teeth
shown when the driver shows them: 100 % either way); mouth L1 0.0617 (the configured bands in a
black-brown cavity, no tongue) -> 0.0577 (the cue) -> 0.0543 (the cue, the tongue, a cavity at 0.42
of the lip colour), against 0.0547 with no mouth layer at all.

A source that already shows an open mouth keeps its own interior (the warp moves it) until the
target opens clearly wider. With a person's :class:`~avatar_engine.geometry.mouth_bank.MouthBank` (from
an enrollment capture) the interior is their own instead: the exemplar of the nearest opening, mapped
into the target opening (upper inner lip to upper inner lip, lower to lower) and matched to the
source's lip colour. Landmarks ``(478, 2|3)`` in crop pixels; see :mod:`.openings`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face import topology
from avatar_engine.geometry.mouth_bank import MouthBank, lip_colour, mouth_shape
from avatar_engine.geometry.openings import MOUTH, Opening, OpeningFrame, opening_frame, patch_around, smoothstep
from avatar_engine.geometry.teeth import TeethCue, is_teeth

__all__ = ["MouthLayerConfig", "MouthLayer", "MOUTH", "retarget_lips"]

_OUTER_LIPS = Opening(tuple(int(i) for i in topology.OUTER_LIPS_LOOP), 61, 291)
# each lip line's two chains (corner to corner), the upper lip's first (it holds landmark 0 / 13)
_OUTER_CHAINS = tuple(sorted(_OUTER_LIPS.chains(), key=lambda chain: 0 not in chain))
_INNER_CHAINS = tuple(sorted(MOUTH.chains(), key=lambda chain: 13 not in chain))


_OUTER_EYE_CORNERS = (33, 263)
_SKIN_POINTS = (4, 5, 195, 197, 50, 280)  # nose bridge and cheeks: the face's brightness
_TOOTH_EDGES = (0.0, 0.13, 0.23, 0.31, 0.37)  # gaps between teeth, in mouth widths from the middle


@dataclass(frozen=True)
class MouthLayerConfig:
    """Options of the mouth layer.

    Attributes:
        ramp: the interior is blended in over this much extra opening (target gap minus source gap,
            in mouth widths); ``source_teeth_offset`` more when the source shows teeth itself.
        upper_teeth: visible height of the upper teeth, inter-ocular distances; at most
            ``upper_share`` of the opening.
        lower_teeth, lower_share: the same for the lower teeth, which show from ``lower_from``
            (opening in inter-ocular distances).
        teeth_colour: RGB of the teeth at a face brightness of 170 (scaled with the face, within 0.6..1.1).
        teeth_span: teeth show for ``|u|`` below this (mouth widths from the middle).
        cavity_darkness: the cavity is the lip colour times this.
        tongue: height of the tongue's bump, in shares of the opening (0: no tongue); it shows once the
            opening is ``tongue_from`` inter-ocular distances, in the lip colour times ``tongue_shade``.
        closed_gap_px: where the target's inner-lip gap is below this (pixels; or half the source's gap
            at that point along the mouth, where that is smaller), an open source mouth closes: the
            squeezed teeth fade to the lips' colour with a darker seam where the lips meet (0: off).
        seam_darkness: darkening of that seam, in [0, 1].
    """

    ramp: float = 0.06
    source_teeth_offset: float = 0.08
    upper_teeth: float = 0.085
    upper_share: float = 0.6
    lower_teeth: float = 0.035
    lower_share: float = 0.25
    lower_from: float = 0.2
    teeth_colour: tuple[float, float, float] = (226.0, 219.0, 203.0)
    teeth_span: float = 0.4
    cavity_darkness: float = 0.42
    tongue: float = 0.5
    tongue_from: float = 0.15
    tongue_shade: float = 0.9
    closed_gap_px: float = 4.0
    seam_darkness: float = 0.45


def _teeth_share(block: np.ndarray, inside: np.ndarray) -> float:
    """Share of bright, low-saturation pixels in ``block (h, w, 3) uint8`` where ``inside``."""
    if not inside.any():
        return 0.0
    return float(is_teeth(block[inside]).mean())


class MouthLayer:
    """The mouth interior of one source (see the module docstring), built from the source crop
    ``crop (S, S, 3) uint8`` and its landmarks ``points (478, 2|3)``: lip and face colours, the source's
    own opening and whether it shows teeth; with ``bank``, the person's own exemplar interiors."""

    def __init__(self, crop: np.ndarray, points: np.ndarray, config: MouthLayerConfig = MouthLayerConfig(),
                 bank: MouthBank | None = None):
        self.config = config
        self.bank = bank
        self._bank_frames: list[OpeningFrame] = [] if bank is None else [opening_frame(q, MOUTH) for q in bank.points]
        p = np.asarray(points, np.float64)[:, :2]
        self.frame = opening_frame(p, MOUTH)
        self.source_gap = self.frame.gap()
        skin = np.array([crop[int(np.clip(p[i, 1], 0, crop.shape[0] - 1)), int(np.clip(p[i, 0], 0, crop.shape[1] - 1))]
                         for i in _SKIN_POINTS], np.float64)
        brightness = float(np.clip(np.median(skin.mean(axis=1)) / 170.0, 0.6, 1.1))
        self.teeth = np.asarray(config.teeth_colour) * brightness
        outer = patch_around(p[topology.OUTER_LIPS_IDX], 0.0, crop.shape[:2])
        self.lip = lip = lip_colour(crop, p)
        # exemplar colours matched to this photo's lips (the capture's light may differ)
        self._bank_gain = None if bank is None else np.clip(lip / np.maximum(bank.lips, 1.0), 0.7, 1.4)
        self.cavity = lip * config.cavity_darkness
        self.tongue = lip * config.tongue_shade
        inner = patch_around(p[topology.INNER_LIPS_IDX], 0.0, crop.shape[:2])
        shows = False
        if not inner.empty and not outer.empty:
            block = crop[inner.y0:inner.y1, inner.x0:inner.x1]
            inside = self.frame.contains(inner.xy)
            shows = inside.sum() >= 12 and _teeth_share(np.ascontiguousarray(block), inside) >= 0.1
        self.source_shows_teeth = shows

    def apply(self, image: np.ndarray, target: np.ndarray, teeth: TeethCue | None = None) -> np.ndarray:
        """Draw the interior of ``target (478, 2|3)``'s mouth onto ``image (S, S, 3) uint8`` (a new array);
        ``teeth``: what the driver's mouth shows (:func:`~avatar_engine.geometry.teeth.teeth_cue`; None: the configured teeth heights)."""
        cfg = self.config
        t = np.asarray(target, np.float64)[:, :2]
        tgt = opening_frame(t, MOUTH)
        if tgt.width < 2.0 or not np.isfinite(tgt.origin).all():
            return image
        image = self._close(image, t, tgt)
        offset = cfg.source_teeth_offset if self.source_shows_teeth else 0.0
        weight = float(np.clip((tgt.gap() - self.source_gap - offset) / cfg.ramp, 0.0, 1.0))
        if weight <= 0.0:
            return image
        patch = patch_around(t[list(MOUTH.loop)], 1.0, image.shape[:2])
        if patch.empty:
            return image
        w = tgt.width
        u, v = tgt.to_frame(patch.xy)
        up, lo = tgt.upper(u), tgt.lower(u)
        if self.bank is not None:
            colour = self._bank_interior(tgt, t, u, v, up, lo, teeth)
        else:
            iod = float(np.linalg.norm(t[_OUTER_EYE_CORNERS[0]] - t[_OUTER_EYE_CORNERS[1]]))
            colour = self._procedural(tgt, u, v, up, lo, iod, teeth)
        below_up, above_lo = (v - up) * w, (lo - v) * w  # px from the upper / lower inner lip
        across = np.abs(u)
        alpha = (weight * np.clip(np.minimum(below_up, above_lo) + 0.5, 0.0, 1.0)
                 * np.clip((0.5 - across) * w + 0.5, 0.0, 1.0))[..., None]
        return patch.blend(image, alpha, colour)

    def _close(self, image: np.ndarray, t: np.ndarray, tgt: OpeningFrame) -> np.ndarray:
        """Where ``t``'s lips come closer than ``closed_gap_px`` (or half the source's gap there), the warped
        source interior (squeezed teeth) fades to the lip colour, with a seam along the lips' midline.
        Returns ``image`` itself when nothing closes, else a new array."""
        cfg = self.config
        w = tgt.width
        if cfg.closed_gap_px <= 0:
            return image
        patch = patch_around(t[list(MOUTH.loop)], 2.0, image.shape[:2])
        if patch.empty:
            return image
        u, v = tgt.to_frame(patch.xy)
        up, lo = tgt.upper(u), tgt.lower(u)
        source_px = np.maximum(self.frame.lower(u) - self.frame.upper(u), 0.0) * w  # the source's gap, at this scale
        closing_from = np.minimum(cfg.closed_gap_px, 0.5 * source_px)
        gap_px = np.maximum(lo - up, 0.0) * w
        closure = np.where(closing_from > 1.0, np.clip(1.0 - gap_px / np.maximum(closing_from, 1e-6), 0.0, 1.0), 0.0)
        if not closure.any():
            return image
        mid = 0.5 * (up + lo)
        # the band between the inner lips, one pixel wider on each side (the squeezed teeth's edge)
        band = np.clip(np.minimum(v - up, lo - v) * w + 1.5, 0.0, 1.0)
        ends = np.clip((0.5 - np.abs(u)) * w / 2.0, 0.0, 1.0)
        alpha = (closure * band * ends)[..., None]
        seam = 1.0 - cfg.seam_darkness * np.exp(-np.abs(v - mid) * w / 0.8)
        colour = self.lip[None, None] * np.where(v < mid, 0.9, 1.0)[..., None] * seam[..., None]
        return patch.blend(image, alpha, colour)

    def _bank_interior(self, tgt: OpeningFrame, t: np.ndarray, u: np.ndarray, v: np.ndarray, up: np.ndarray,
                       lo: np.ndarray, teeth: TeethCue | None = None) -> np.ndarray:
        """``(h, w, 3)`` float colours of the exemplar nearest the target ``t``'s mouth shape (and the
        driver's ``teeth``) at the patch's frame coordinates ``u, v`` (inner lips ``up``, ``lo`` there)."""
        assert self.bank is not None and self._bank_gain is not None
        k = self.bank.nearest(mouth_shape(t, tgt), teeth)
        ex = self._bank_frames[k]
        ue = np.clip(u, -0.5, 0.5)
        top, bottom = ex.upper(ue), ex.lower(ue)
        gap, ex_gap = np.maximum(lo - up, 1e-6), np.maximum(bottom - top, 1e-6)
        below_up, above_lo, half = v - up, lo - v, 0.5 * ex_gap
        # a target that opens less than the exemplar squeezes it; one that opens wider keeps the teeth at
        # their size under the upper / over the lower lip and repeats the exemplar's middle row between
        squeezed = top + np.clip(below_up / gap, 0.0, 1.0) * ex_gap
        anchored = np.where(below_up < half, top + below_up, np.where(above_lo < half, bottom - above_lo, top + half))
        xy = ex.to_pixels(ue, np.where(gap <= ex_gap, squeezed, anchored)).astype(np.float32) - 0.5
        sample = cv2.remap(self.bank.blocks[k], xy[..., 0], xy[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        return sample.astype(np.float32) * self._bank_gain[k].astype(np.float32)

    def _procedural(self, tgt: OpeningFrame, u: np.ndarray, v: np.ndarray, up: np.ndarray, lo: np.ndarray,
                    iod: float, teeth: TeethCue | None = None) -> np.ndarray:
        """``(h, w, 3)`` float colours of the procedural cavity, tongue and teeth at frame coordinates ``u, v``."""
        cfg = self.config
        w = tgt.width
        gap_px = np.maximum(lo - up, 0.0) * w
        below_up, above_lo = (v - up) * w, (lo - v) * w  # px from the upper / lower inner lip
        across = np.abs(u)
        depth = np.clip(below_up / np.maximum(gap_px, 1e-6), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower
        colour = self.cavity * ((0.75 + 0.5 * np.minimum(across, 0.5)) * (0.8 + 0.4 * depth))[..., None]
        open_px = tgt.gap() * w
        if cfg.tongue > 0 and open_px >= cfg.tongue_from * iod:
            # the tongue: a rounded bump rising from the lower lip, lit from the front
            top = 1.0 - cfg.tongue * np.sqrt(np.clip(1.0 - (across / 0.38) ** 2, 0.0, 1.0))
            tongue_a = np.clip((depth - top) * gap_px / 2.0 + 0.25, 0.0, 1.0) * (top < 1.0)  # 2 px soft edge
            lit = 1.05 - 0.25 * np.minimum(across / 0.38, 1.0) ** 2  # rounder: lighter in the middle
            colour = tongue_a[..., None] * (self.tongue * lit[..., None]) + (1.0 - tongue_a[..., None]) * colour
        shade = np.clip(1.0 - 0.6 * (across / cfg.teeth_span) ** 2, 0.0, 1.0)
        gaps = np.min(np.abs(across[..., None] - np.asarray(_TOOTH_EDGES)), axis=-1) * w
        lip_shadow = 1.0 - 0.3 * np.exp(-np.maximum(below_up, 0.0) / 1.2)
        tooth = self.teeth * (shade * lip_shadow * (1.0 - 0.18 * np.exp(-gaps / 0.5)))[..., None]
        span = np.clip((cfg.teeth_span - across) * w, 0.0, 1.0)
        if teeth is None:
            h_up = np.minimum(cfg.upper_teeth * iod, cfg.upper_share * gap_px)
            lower = open_px >= cfg.lower_from * iod
            h_lo = np.minimum(cfg.lower_teeth * iod, cfg.lower_share * gap_px)
        else:
            h_up = teeth.upper * gap_px
            lower = teeth.lower > 0
            h_lo = teeth.lower * gap_px
        upper_a = (np.clip(h_up - below_up + 0.5, 0.0, 1.0) * span)[..., None]
        colour = upper_a * tooth + (1.0 - upper_a) * colour
        if lower:
            lower_a = (np.clip(h_lo - above_lo + 0.5, 0.0, 1.0) * np.clip((0.75 * cfg.teeth_span - across) * w, 0, 1))
            colour = lower_a[..., None] * (0.85 * tooth) + (1.0 - lower_a[..., None]) * colour
        return colour


def _signed_gap(points: np.ndarray, frame: OpeningFrame, u: np.ndarray) -> np.ndarray:
    """Inner-lip gap of ``points`` at ``u`` in ``frame``'s units, the upper lip told by its landmark (13), not by
    which chain lies higher: negative where the lips crossed."""
    upper, lower = (_chain_v(points, frame, chain, u) for chain in _INNER_CHAINS)
    return lower - upper


def retarget_lips(target: np.ndarray, source: np.ndarray, driver_neutral: np.ndarray, driver: np.ndarray,
                  min_gap: float = 0.03, ratio: bool = True, zero: bool = False, zero_tolerance: float = 0.05,
                  zero_limit: tuple[float, float] = (0.4, 0.6), zero_strength: float = 1.0) -> np.ndarray:
    """A closing mouth as a *ratio* of the source's opening (as :func:`~avatar_engine.geometry.eyes.retarget_lids`
    does for the lids), and, with ``zero``, from a closed mouth.

    Additive retargeting closes the source's mouth by as much as the driver's closed since the neutral:
    a photo that smiles with its teeth showing, driven by someone whose neutral has the lips apart,
    keeps its teeth when the driver closes the lips. Here, along the mouth (at each inner-lip column
    ``u`` between the corners), wherever the driver's inner-lip gap is below its neutral gap, the
    target's gap becomes the source's gap times the driver's ratio (now / neutral) where that is
    narrower than the additive gap (a photo more open than the driver's neutral): lips the driver
    closes close on the avatar too. Where the driver opens wider than at neutral, or the additive
    gap is already the narrower (a photo less open than the neutral), the additive result stays.
    Columns whose neutral gap is below ``min_gap`` mouth widths (a closed neutral) keep the additive
    result (faded in between ``min_gap`` and twice that).

    With ``zero`` (LivePortrait's "lip zero"), the source's lips are first closed by as much as they are
    more open than the driver's neutral (the *excess*, in mouth widths, at each column): the additive
    start is then the driver's neutral opening, not the photo's. A photo that smiles with its teeth
    showing closes its lips whenever the driver's are closed (at the driver's closed-mouth neutral too,
    where the ratio above keeps the photo's opening) and opens as wide as the driver does. Excesses
    below ``zero_tolerance`` are left (two mediapipe readings of one mouth, on a photo and on a video
    frame, differ by up to about that much), fully removed from twice that, smoothly in between. The
    lips never cross, and a photo no more open than the neutral is retargeted as before. A photo with
    its jaw dropped (a shout: a mean excess over the middle of the mouth from ``zero_limit[0]`` mouth
    widths) would need its chin raised too, not only its lips closed: there the zero fades out, and
    from ``zero_limit[1]`` the photo keeps its open mouth. Where the zero acts it replaces the ratio rule
    (applying both would close the excess twice); where it fades (small excess, a shout, a smaller
    ``zero_strength``) the ratio rule takes over.

    The correction moves every lip landmark of the column along the mouth's vertical axis, the upper
    lip by half of it and the lower lip by the other half, so the lips keep their thickness and meet in
    the middle; the skin next to the lips follows part of the way (:func:`_narrow_lips`).

    Args:
        target: ``(478, 3)`` retargeted landmarks (source pixels) to correct.
        source: ``(478, 3)`` source landmarks.
        driver_neutral, driver: ``(478, 3)`` the driver's neutral and current landmarks in one head frame.
        min_gap: the smallest neutral gap (mouth widths) a ratio is taken of.
        ratio: apply the ratio rule.
        zero: close the source's excess over the driver's neutral (in place of the ratio rule where it acts).
        zero_tolerance: the excess (mouth widths) below which ``zero`` leaves a column alone.
        zero_limit: the mean excess (mouth widths, ``|u| <= 0.25``) over which ``zero`` fades out.
        zero_strength: the share of the excess ``zero`` removes (the retargeter's expression scale, at most 1).
    Returns:
        ``(478, 3) float32``: ``target`` with the lip landmarks moved (the mouth corners stay).
    """
    out = np.asarray(target, np.float32).copy()
    src, neutral, now, cur = (opening_frame(p, MOUTH) for p in (source, driver_neutral, driver, out))
    u = np.linspace(-0.5, 0.5, 33)
    g_neutral = neutral.lower(u) - neutral.upper(u)
    g_now = now.lower(u) - now.upper(u)
    gap = _signed_gap(out, cur, u)
    g_src = src.lower(u) - src.upper(u)
    change = np.zeros_like(u)
    if ratio:
        wanted = np.maximum(g_src, 0.0) * np.clip(g_now / np.maximum(g_neutral, 1e-6), 0.0, 1.0)
        weight = smoothstep(g_neutral, min_gap, 2.0 * min_gap)
        change = np.where(g_now < g_neutral, weight * np.maximum(gap - wanted, 0.0), 0.0)
    if zero:
        excess = g_src - g_neutral
        keep = zero_strength * (1.0 - smoothstep(float(np.mean(excess[np.abs(u) <= 0.25])), *zero_limit))
        acts = keep * smoothstep(excess, zero_tolerance, 2.0 * zero_tolerance)  # (33,) in [0, 1]
        change = np.clip(acts * excess + (1.0 - acts) * change, 0.0, np.maximum(gap, 0.0))
    if not np.any(change):
        return out
    return _narrow_lips(out, cur, u, change)


def _chain_v(points: np.ndarray, frame: OpeningFrame, chain: list[int], u: np.ndarray) -> np.ndarray:
    """``v`` of the landmark ``chain`` of ``points`` at the frame positions ``u`` (interpolated along ``u``)."""
    cu, cv = frame.to_frame(np.asarray(points, np.float64)[chain, :2])
    order = np.argsort(cu, kind="stable")
    return np.interp(u, cu[order], cv[order])


def _narrow_lips(points: np.ndarray, frame: OpeningFrame, u: np.ndarray, change: np.ndarray,
                 reach: float = 0.2) -> np.ndarray:
    """``points (478, 3)`` with the inner-lip gap narrowed by ``change`` (frame units) at the columns ``u``:
    every point of the upper lip moves down by half of it and every point of the lower lip up by the
    other half (the lips keep their thickness: all four of mediapipe's lip rings move, not only the
    contours, or the outer contour folds over the rings inside it), and the skin within ``reach`` mouth
    widths of the outer lip line follows with a smooth fall-off. The mouth corners stay."""
    out = points.copy()
    pu, pv = frame.to_frame(out[:, :2])
    mid = np.interp(pu, u, 0.5 * (frame.upper(u) + frame.lower(u)))
    upper = pv < mid
    top, bottom = (_chain_v(out, frame, chain, pu) for chain in _OUTER_CHAINS)
    beyond = np.where(upper, top - pv, pv - bottom)  # > 0 outside the outer lip line
    follow = 1.0 - smoothstep(beyond, 0.0, reach)
    follow[[MOUTH.left, MOUTH.right, _OUTER_LIPS.left, _OUTER_LIPS.right]] = 0.0
    shift = 0.5 * np.where(upper, 1.0, -1.0) * np.interp(pu, u, change, left=0.0, right=0.0) * follow
    moved = np.nonzero(shift)[0]
    out[moved, :2] = frame.to_pixels(pu[moved], pv[moved] + shift[moved]).astype(np.float32)
    return out
