"""Face openings (eyes, mouth) as two lid / lip curves in a local frame, and pixel patches around them.

An opening is a closed landmark loop split at its two corners into an upper and a lower chain. Its
*frame* has the origin at the corners' midpoint, ``e1`` along the corner axis (pointing to the
image's right for an upright face), ``e2`` perpendicular to it (pointing down the face), and lengths
in units of the corner distance ``width``. In that frame each chain is a curve ``v(u)`` for ``u`` in
``[-0.5, 0.5]`` (the corners), the upper chain above the lower one (smaller ``v``).

Used by the eye and mouth layers (:mod:`.eyes`, :mod:`.mouth`), which redraw the inside of an
opening on a rendered face crop. Points are ``(478, 2|3)`` in crop pixels (mediapipe convention:
pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face import topology

__all__ = ["Opening", "OpeningFrame", "opening_frame", "Patch", "patch_around", "sample", "smoothstep", "MOUTH"]


@dataclass(frozen=True)
class Opening:
    """Which landmarks make an opening.

    Attributes:
        loop: the closed landmark loop.
        left, right: its corner landmarks, ``left`` on the image's left for an upright face.
    """

    loop: tuple[int, ...]
    left: int
    right: int

    def chains(self) -> tuple[list[int], list[int]]:
        """The loop split at the corners: two chains, each from ``left`` to ``right``."""
        loop = list(self.loop)
        i = loop.index(self.left)
        loop = loop[i:] + loop[:i]
        j = loop.index(self.right)
        return loop[: j + 1], [self.left] + loop[:j:-1] + [self.right]


MOUTH = Opening(tuple(int(i) for i in topology.INNER_LIPS_LOOP), 78, 308)
"""The inner-lip opening, split at the mouth corners."""


@dataclass(frozen=True)
class OpeningFrame:
    """An opening measured on one face (see the module docstring).

    Attributes:
        origin: ``(2,)`` corners' midpoint, pixels.
        e1, e2: ``(2,)`` unit axes.
        width: corner distance, pixels.
        upper_u, upper_v, lower_u, lower_v: chain vertices in frame units, ``u`` increasing.
    """

    origin: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    width: float
    upper_u: np.ndarray
    upper_v: np.ndarray
    lower_u: np.ndarray
    lower_v: np.ndarray

    def to_frame(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions ``(..., 2)`` -> ``(u, v)`` arrays of shape ``(...)``."""
        d = (np.asarray(xy, np.float64) - self.origin) / self.width
        return d @ self.e1, d @ self.e2

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Frame coordinates -> pixel positions ``(..., 2)``."""
        return self.origin + self.width * (np.asarray(u)[..., None] * self.e1 + np.asarray(v)[..., None] * self.e2)

    def upper(self, u: np.ndarray) -> np.ndarray:
        """``v`` of the upper chain at ``u`` (held constant beyond the corners)."""
        return np.interp(u, self.upper_u, self.upper_v)

    def lower(self, u: np.ndarray) -> np.ndarray:
        """``v`` of the lower chain at ``u``."""
        return np.interp(u, self.lower_u, self.lower_v)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """``(...) bool``: pixel positions ``xy (..., 2)`` inside the opening (between the corners and
        strictly between the two chains)."""
        u, v = self.to_frame(xy)
        return (np.abs(u) < 0.5) & (v > self.upper(u)) & (v < self.lower(u))

    def gap(self) -> float:
        """Mean opening ``lower - upper`` over the middle half (``|u| <= 0.25``), frame units."""
        u = np.linspace(-0.25, 0.25, 9)
        return float(np.mean(self.lower(u) - self.upper(u)))


def _monotone(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(u, kind="stable")
    return np.maximum.accumulate(u[order]), v[order]


def opening_frame(points: np.ndarray, opening: Opening) -> OpeningFrame:
    """The frame and chains of ``opening`` on ``points (478, 2|3)`` (crop pixels)."""
    p = np.asarray(points, np.float64)[:, :2]
    a, b = p[opening.left], p[opening.right]
    axis = b - a
    width = max(float(np.linalg.norm(axis)), 1e-6)
    e1 = axis / width
    e2 = np.array([-e1[1], e1[0]])
    origin = 0.5 * (a + b)
    frame = OpeningFrame(origin, e1, e2, width, *(np.zeros(0),) * 4)
    first, second = opening.chains()
    uv = [frame.to_frame(p[c]) for c in (first, second)]
    if np.mean(uv[0][1]) > np.mean(uv[1][1]):  # the first chain is the lower one
        uv = uv[::-1]
    (uu, vu), (ul, vl) = (_monotone(u, v) for u, v in uv)
    return OpeningFrame(origin, e1, e2, width, uu, vu, ul, vl)


@dataclass(frozen=True)
class Patch:
    """A pixel box of an ``H x W`` image: rows ``y0:y1``, columns ``x0:x1``, and its pixel centres.

    Attributes:
        xy: ``(h, w, 2)`` pixel-centre positions (x, y) of the box.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    xy: np.ndarray

    @property
    def empty(self) -> bool:
        return self.y1 <= self.y0 or self.x1 <= self.x0

    def blend(self, image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """A copy of ``image (H, W, 3) uint8`` with this box blended towards ``colour (h, w, 3)`` float by
        ``alpha (h, w, 1)`` in ``[0, 1]`` (rounded to uint8)."""
        out = image.copy()
        block = out[self.y0:self.y1, self.x0:self.x1].astype(np.float32)
        out[self.y0:self.y1, self.x0:self.x1] = np.clip(alpha * colour + (1.0 - alpha) * block + 0.5, 0, 255
                                                        ).astype(np.uint8)
        return out


def smoothstep(x, lo: float, hi: float):
    """0 below ``lo``, 1 above ``hi``, the cubic ``3t^2 - 2t^3`` in between (``x``: array or float)."""
    t = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image (H, W[, C])`` at pixel positions ``xy (..., 2)`` (pixel centres at
    ``+0.5``, the border repeated) -> ``(...[, C])`` of ``image``'s dtype."""
    shape = xy.shape[:-1]
    m = (np.asarray(xy).reshape(-1, 1, 2) - 0.5).astype(np.float32)
    out = cv2.remap(image, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(*shape, *image.shape[2:])


def patch_around(xy: np.ndarray, margin: float, shape: tuple[int, int]) -> Patch:
    """The box around points ``(N, 2)`` grown by ``margin`` pixels, clipped to ``shape (H, W)``."""
    pts = np.asarray(xy, np.float64)
    lo = np.floor(pts.min(axis=0) - margin).astype(int)
    hi = np.ceil(pts.max(axis=0) + margin).astype(int)
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], shape[1]), min(hi[1], shape[0])
    gx, gy = np.meshgrid(np.arange(x0, max(x1, x0)) + 0.5, np.arange(y0, max(y1, y0)) + 0.5)
    return Patch(y0, y1, x0, x1, np.stack([gx, gy], axis=-1))
