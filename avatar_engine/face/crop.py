"""Face crops: an axis-aligned square around the face, resampling into it and pasting back.

Coordinates are continuous pixel coordinates with ``(0, 0)`` at the top-left *corner* of the
top-left pixel (the convention of :mod:`avatar_engine.face.landmarks`). A :class:`FaceCrop` maps the image
square ``[cx - side/2, cx + side/2] x [cy - side/2, cy + side/2]`` onto the crop ``[0, S] x [0, S]``
by ``u = k * (x - x0)`` with ``k = S / side`` (no rotation); ``z`` is scaled by ``k`` as well.

The square is sized and placed from *rigid* landmarks (eye corners, forehead, nose bridge and tip,
cheeks): their 3-D spread is unaffected by head rotation and by the mouth, so the crop does not
"breathe" when the jaw opens. It is expressed as the *face extent* ``E``: the longer side of the
2-D landmark box of a frontal face (forehead top to chin), calibrated on the val clips.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar_engine.face.landmarks import NUM_LANDMARKS

__all__ = ["CropConfig", "FaceCrop", "crop_from_landmarks", "face_extent"]

RIGID_POINTS = (33, 133, 362, 263, 10, 151, 9, 8, 168, 6, 197, 4, 1, 234, 454, 127, 356)
"""Mesh indices that move with the skull only (eye corners, forehead, nose ridge, cheeks)."""

# Median ratios over the val clips (frontal faces): RMS radius of the rigid points about their
# centroid / face extent, in 3-D (x, y, z pixels) and in 2-D; and the vertical distance from the
# rigid centroid down to the centre of the landmark box, / face extent.
_RIGID_RADIUS_3D = 0.318
_RIGID_RADIUS_2D = 0.256
_RIGID_TO_BOX_CENTRE = 0.175


@dataclass
class CropConfig:
    """How a face crop is framed.

    Crop side = ``scale * E`` and crop centre = face centre moved up by ``vertical_offset * E``,
    where ``E`` is the face extent (forehead-to-chin size; see :func:`face_extent`). The defaults
    give a talking-head crop: the whole face with some hair above and the top of the neck below.
    """

    size: int = 256
    """Output side ``S`` in pixels."""
    scale: float = 1.85
    """Crop side / face extent."""
    vertical_offset: float = 0.1
    """Crop centre above the face centre, in face extents."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


def _check_image(img: np.ndarray, name: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {desc}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name} is empty: {img.shape}")


def _check_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] not in (2, 3) or p.shape[0] == 0:
        raise ValueError(f"points must be (N, 2|3), got shape {p.shape}")
    return p


_SUPERSAMPLE_BELOW = 0.75
"""Scales below this are anti-aliased by supersampling (see :func:`_resample`)."""


def _resample(
    src: np.ndarray, scale: float, tx: float, ty: float, out_w: int, out_h: int
) -> np.ndarray:
    """Resample ``src`` so that ``dst(u) = src(v)`` with ``u = scale * v + (tx, ty)``.

    Continuous pixel-edge coordinates on both sides; outside ``src`` the border pixels are
    repeated. Enlarging and mild shrinking are bilinear. Stronger shrinking (``scale < 0.75``) is
    done at ``m = ceil(1 / scale)`` times the output resolution (bilinear samples at most one
    source pixel apart) and then box-averaged by ``m x m`` (``INTER_AREA`` at an integer factor, so
    the grids line up exactly): area-average quality without aliasing.

    Returns:
        ``(out_h, out_w, C)`` array of ``src``'s dtype.
    """
    m = math.ceil(1.0 / scale - 1e-9) if scale < _SUPERSAMPLE_BELOW else 1
    a, bx, by = scale * m, tx * m, ty * m
    # Inverse map in OpenCV's pixel-centre indices: i_src = (i_dst + 0.5 - b) / a - 0.5.
    inv = np.array([[1.0 / a, 0.0, (0.5 - bx) / a - 0.5], [0.0, 1.0 / a, (0.5 - by) / a - 0.5]])
    out = cv2.warpAffine(
        src, inv, (out_w * m, out_h * m),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    if m > 1:
        out = cv2.resize(out, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return out


def _edge_ramp(coords: np.ndarray, feather: float) -> np.ndarray:
    """Blend weight along one axis: 0 outside ``[0, 1]``, smooth ramp of width ``feather``, 1 inside."""
    d = np.minimum(coords, 1.0 - coords)
    if feather <= 0:
        return (d > 0).astype(np.float32)
    r = np.clip(d / feather, 0.0, 1.0)
    return (r * r * (3.0 - 2.0 * r)).astype(np.float32)


def _plateau(weight: np.ndarray) -> tuple[int, int]:
    """``[start, stop)`` of the run where a 0 -> 1 -> 0 ramp equals 1 (``(0, 0)`` when none)."""
    idx = np.flatnonzero(weight >= 1.0)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


@dataclass(frozen=True)
class FaceCrop:
    """A square region of an image and the scale that maps it onto an ``S x S`` crop.

    Attributes:
        center_x, center_y: centre of the square in image pixels (may lie outside the image).
        side: side of the square in image pixels (> 0).
        size: crop side ``S`` in pixels (>= 1).
    """

    center_x: float
    center_y: float
    side: float
    size: int = 256

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center_x) and math.isfinite(self.center_y)):
            raise ValueError("FaceCrop centre must be finite")
        if not (math.isfinite(self.side) and self.side > 0):
            raise ValueError(f"FaceCrop side must be > 0, got {self.side}")
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"FaceCrop size must be a positive integer, got {self.size}")

    @property
    def x0(self) -> float:
        """Left edge of the square in image pixels."""
        return self.center_x - 0.5 * self.side

    @property
    def y0(self) -> float:
        """Top edge of the square in image pixels."""
        return self.center_y - 0.5 * self.side

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel, ``S / side``."""
        return self.size / self.side

    @property
    def matrix(self) -> np.ndarray:
        """``(2, 3) float64`` affine map from image to crop coordinates: ``u = M @ [x, y, 1]``."""
        k = self.scale
        return np.array([[k, 0.0, -k * self.x0], [0.0, k, -k * self.y0]], dtype=np.float64)

    def with_size(self, size: int) -> "FaceCrop":
        """The same square region mapped onto a ``size x size`` crop (e.g. 512 for a 256 crop)."""
        return dataclasses.replace(self, size=int(size))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image pixels ``(N, 2|3)`` -> crop pixels, same shape and float dtype (z scaled by ``S/side``)."""
        p = _check_points(points)
        dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float32
        out = p.astype(np.float64) * self.scale
        out[:, 0] -= self.scale * self.x0
        out[:, 1] -= self.scale * self.y0
        return out.astype(dtype)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop pixels ``(N, 2|3)`` -> image pixels; the inverse of :meth:`to_crop`."""
        p = _check_points(points)
        dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float32
        out = p.astype(np.float64) / self.scale
        out[:, 0] += self.x0
        out[:, 1] += self.y0
        return out.astype(dtype)

    def crop_image(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        """Cut the square out of ``image`` and resample it to ``(S, S, 3) uint8``.

        Args:
            image: ``(H, W, 3) uint8``.
            size: output side; ``self.size`` when None.

        Shrinking is box-filtered (no aliasing), enlarging is bilinear; parts of the square outside
        the image repeat the image's border pixels.
        """
        _check_image(image, "image")
        s = self.size if size is None else int(size)
        if s < 1:
            raise ValueError(f"crop size must be >= 1, got {s}")
        k = s / self.side
        return _resample(image, k, -k * self.x0, -k * self.y0, s, s)

    def paste_back(self, full: np.ndarray, crop: np.ndarray, feather: float = 0.08) -> np.ndarray:
        """Blend a (rendered) crop back into the full image it was cut from.

        Args:
            full: ``(H, W, 3) uint8`` image.
            crop: ``(S', S', 3) uint8`` of any side ``S'``: it covers this crop's square region.
            feather: width of the soft blend band inside the crop border, as a fraction of the
                crop side in ``[0, 0.5]`` (0: hard edge).

        Returns:
            A new ``(H, W, 3) uint8`` image; the part of the crop outside the image is dropped.
        """
        _check_image(full, "full image")
        _check_image(crop, "crop")
        if crop.shape[0] != crop.shape[1]:
            raise ValueError(f"crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
        if not 0.0 <= feather <= 0.5:
            raise ValueError(f"feather must be in [0, 0.5], got {feather}")
        out = full.copy()
        h, w = full.shape[:2]
        ix0, iy0 = max(math.floor(self.x0), 0), max(math.floor(self.y0), 0)
        ix1 = min(math.ceil(self.x0 + self.side), w)
        iy1 = min(math.ceil(self.y0 + self.side), h)
        if ix1 <= ix0 or iy1 <= iy0:
            return out
        k = self.side / crop.shape[0]
        patch = _resample(crop, k, self.x0 - ix0, self.y0 - iy0, ix1 - ix0, iy1 - iy0)
        wx = _edge_ramp((np.arange(ix0, ix1) + 0.5 - self.x0) / self.side, feather)
        wy = _edge_ramp((np.arange(iy0, iy1) + 0.5 - self.y0) / self.side, feather)
        region = out[iy0:iy1, ix0:ix1]
        # The weight is wy (x) wx: copy the plateau where it is 1 and blend only the border band.
        r0, r1 = _plateau(wy)
        c0, c1 = _plateau(wx)
        region[r0:r1, c0:c1] = patch[r0:r1, c0:c1]
        h_r, w_r = region.shape[:2]
        for rows, cols in (
            (slice(0, r0), slice(0, w_r)),
            (slice(r1, h_r), slice(0, w_r)),
            (slice(r0, r1), slice(0, c0)),
            (slice(r0, r1), slice(c1, w_r)),
        ):
            weight = np.outer(wy[rows], wx[cols]).astype(np.float32)
            if weight.size:
                region[rows, cols] = cv2.blendLinear(patch[rows, cols], region[rows, cols], weight, 1.0 - weight)
        return out


def _rigid_frame(points: np.ndarray) -> tuple[float, float, float]:
    """``(centre_x, centre_y, extent)`` of the face from its rigid points (see module docstring)."""
    p = _check_points(points)
    if p.shape[0] < NUM_LANDMARKS - 10:
        raise ValueError(f"points must be the {NUM_LANDMARKS} (or 468) mesh landmarks, got {p.shape[0]}")
    r = p[list(RIGID_POINTS)].astype(np.float64)
    if not np.isfinite(r).all():
        raise ValueError("landmarks contain NaN or inf")
    c = r.mean(axis=0)
    radius = float(np.sqrt(((r - c) ** 2).sum(axis=1).mean()))
    extent = radius / (_RIGID_RADIUS_3D if p.shape[1] == 3 else _RIGID_RADIUS_2D)
    if extent <= 0:
        raise ValueError("degenerate landmarks (all rigid points coincide)")
    return float(c[0]), float(c[1]) + _RIGID_TO_BOX_CENTRE * extent, extent


def face_extent(points: np.ndarray) -> float:
    """Face extent ``E`` in pixels from landmarks ``(478, 2|3)``.

    ``E`` estimates the longer side of the 2-D landmark box of the face seen frontally (forehead
    top to chin) from the spread of the rigid points; with ``z`` (3 columns) it does not change
    when the head turns or the mouth opens.
    """
    return _rigid_frame(points)[2]


def crop_from_landmarks(points: np.ndarray, config: CropConfig | None = None) -> FaceCrop:
    """The talking-head crop of one face.

    Args:
        points: ``(478, 2|3)`` landmarks in image pixels (3 columns preferred: see :func:`face_extent`).
        config: framing (defaults if None).

    Returns:
        A :class:`FaceCrop` of side ``config.scale * E`` centred ``config.vertical_offset * E``
        above the face centre, with ``size = config.size``.
    """
    cfg = config if config is not None else CropConfig()
    cx, cy, extent = _rigid_frame(points)
    return FaceCrop(cx, cy - cfg.vertical_offset * extent, cfg.scale * extent, cfg.size)
