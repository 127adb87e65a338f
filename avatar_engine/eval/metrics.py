"""Image, landmark and temporal quality metrics (pure functions on numpy arrays).

Conventions: images are ``(H, W, 3) uint8`` RGB; landmarks are ``(478, 3) float32`` (x, y, z in the
pixels of the image they were detected on, see :mod:`avatar_engine.face.landmarks`). Every function is
deterministic and keeps no state.

* :func:`mse`, :func:`psnr_from_mse`, :func:`psnr`: in 8-bit levels; PSNR is ``inf`` for equal images.
* :func:`ssim`: Wang et al. 2004 (Gaussian window 11 / sigma 1.5, K1 = 0.01, K2 = 0.03, range 255),
  per RGB channel, averaged over the channels and the "valid" window positions (no padding).
* :func:`region_masks` + :func:`masked_l1`: mean absolute error in ``[0, 1]`` inside the mouth or eye
  regions (convex hulls of the lip / eye landmarks, grown by a margin in inter-ocular distances).
* :func:`expression_error`: head pose removed by a 3-D similarity fitted on the rigid (skull)
  landmarks of the reference (:func:`avatar_engine.geometry.retarget.rigid_indices`), then the mean 3-D
  distance over the non-rigid landmarks (lips, jaw, eyes, brows, cheeks, irises), divided by the
  reference's inter-ocular distance (outer eye corners).
* :func:`pose_error_deg`: the rotation of that same rigid fit as yaw / pitch / roll in degrees.
* :func:`warp_error`: flicker: frame ``t-1`` warped onto frame ``t`` by the sequence's own optical
  flow (OpenCV Farneback, both directions), pixels failing the forward-backward consistency test
  (occlusions, flow failures) masked out; the mean absolute residual in ``[0, 1]``.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from avatar_engine.geometry.flow import FlowConfig, consistent_flow, optical_flow
from avatar_engine.face import topology
from avatar_engine.geometry.retarget import fit_similarity, rigid_indices

__all__ = [
    "mse", "psnr_from_mse", "psnr", "ssim", "interocular_distance", "region_masks", "masked_l1",
    "expression_error", "rotation_to_euler_deg", "pose_error_deg", "FlowConfig", "optical_flow",
    "warp_error",
]

OUTER_EYE_CORNERS = (33, 263)
"""Landmarks whose distance is the inter-ocular distance (right and left outer eye corners)."""


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"images must both be (H, W, 3) of one shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two ``(H, W, 3) uint8`` images, in squared 8-bit levels."""
    x, y = _check_pair(a, b)
    return float(np.mean((x - y) ** 2))


def psnr_from_mse(value: float, peak: float = 255.0) -> float:
    """``10 log10(peak^2 / mse)`` in dB; ``inf`` when ``mse == 0``."""
    return math.inf if value <= 0.0 else float(10.0 * math.log10(peak * peak / value))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two ``(H, W, 3) uint8`` images (``inf`` when equal)."""
    return psnr_from_mse(mse(a, b))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two ``(H, W, 3) uint8`` images, in ``[-1, 1]`` (1 = equal).

    Images smaller than the 11 x 11 window raise ``ValueError``.
    """
    x, y = _check_pair(a, b)
    win, sigma, pad = 11, 1.5, 5
    if min(x.shape[:2]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win}, got {x.shape[1]}x{x.shape[0]}")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (win, win), sigma, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def interocular_distance(points: np.ndarray) -> float:
    """Distance between the outer eye corners of ``(478, 2|3)`` landmarks (2-D or 3-D), in their pixels."""
    p = np.asarray(points, np.float64)
    return float(np.linalg.norm(p[OUTER_EYE_CORNERS[0]] - p[OUTER_EYE_CORNERS[1]]))


_REGIONS: dict[str, tuple[np.ndarray, ...]] = {
    "mouth": (topology.LIPS_IDX,),
    "eyes": (topology.LEFT_EYE_IDX, topology.RIGHT_EYE_IDX),
}


def region_masks(points: np.ndarray, shape: tuple[int, int], margin: float = 0.1) -> dict[str, np.ndarray]:
    """Mouth and eye masks from landmarks.

    Args:
        points: ``(478, 2|3)`` landmarks in the pixels of the image the masks are for.
        shape: ``(H, W)`` of that image.
        margin: each region (convex hull of its landmarks, one hull per eye) is grown by this many
            inter-ocular distances (a disc dilation), so the skin around lips and lids counts too.
    Returns:
        ``{"mouth": (H, W) bool, "eyes": (H, W) bool}``.
    """
    p = np.asarray(points, np.float64)
    radius = max(1, int(round(margin * interocular_distance(p))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    shift = 4  # fixed-point sub-pixel bits for fillConvexPoly
    masks = {}
    for name, parts in _REGIONS.items():
        m = np.zeros(shape, np.uint8)
        for idx in parts:
            # landmark x, y are continuous coordinates with pixel centres at +0.5
            hull = cv2.convexHull(np.round((p[idx, :2] - 0.5) * (1 << shift)).astype(np.int32))
            cv2.fillConvexPoly(m, hull, 1, lineType=cv2.LINE_8, shift=shift)
        masks[name] = cv2.dilate(m, kernel).astype(bool)
    return masks


def masked_l1(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference in ``[0, 1]`` of two ``(H, W, 3) uint8`` images inside ``(H, W) bool``.

    ``nan`` when the mask is empty.
    """
    x, y = _check_pair(a, b)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the images {x.shape[:2]}")
    if not mask.any():
        return math.nan
    return float(np.abs(x[mask] - y[mask]).mean() / 255.0)


def _rigid_fit(pred: np.ndarray, ref: np.ndarray):
    p = np.asarray(pred, np.float64)
    r = np.asarray(ref, np.float64)
    if p.shape != (topology.NUM_LANDMARKS, 3) or r.shape != p.shape:
        raise ValueError(f"landmarks must both be ({topology.NUM_LANDMARKS}, 3), got {p.shape} and {r.shape}")
    rigid = rigid_indices(r)
    return p, r, rigid, fit_similarity(p[rigid], r[rigid])


def expression_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """Landmark error with the head pose removed, in inter-ocular distances of ``ref``.

    Args:
        pred: ``(478, 3)`` landmarks detected on the output.
        ref: ``(478, 3)`` reference landmarks (ground truth, or the retargeted target), same pixels.
    Returns:
        mean 3-D distance over the non-rigid landmarks after a similarity fit on the rigid ones
        (0 for equal or similar-transformed sets).
    """
    p, r, rigid, fit = _rigid_fit(pred, ref)
    mobile = np.setdiff1d(np.arange(topology.NUM_LANDMARKS), rigid)
    aligned = fit.apply(p).astype(np.float64)
    err = np.linalg.norm(aligned[mobile] - r[mobile], axis=1).mean()
    return float(err / max(interocular_distance(r), 1e-6))


def rotation_to_euler_deg(rotation: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` degrees of a rotation ``R = Rz(roll) Ry(yaw) Rx(pitch)``.

    Axes are the landmark axes: x right, y down, z into the image; yaw turns about y (head
    shaking "no"), pitch about x (nodding), roll about z (tilting in the image plane).
    """
    r = np.asarray(rotation, np.float64)
    yaw = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def pose_error_deg(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Absolute ``(yaw, pitch, roll)`` difference in degrees between two ``(478, 3)`` landmark sets.

    The relative head rotation is that of the similarity carrying ``pred``'s rigid landmarks onto
    ``ref``'s (the fit of :func:`expression_error`).
    """
    _, _, _, fit = _rigid_fit(pred, ref)
    return tuple(abs(a) for a in rotation_to_euler_deg(fit.rotation))  # type: ignore[return-value]


def warp_error(prev_rgb: np.ndarray, cur_rgb: np.ndarray, config: FlowConfig | None = None) -> float:
    """Flow-compensated temporal difference of two consecutive ``(H, W, 3) uint8`` frames.

    ``prev_rgb`` is warped onto ``cur_rgb`` with the backward flow ``cur -> prev``; pixels that fail
    the forward-backward consistency test or sample outside the frame are excluded.

    Returns:
        mean absolute residual in ``[0, 1]`` over the kept pixels and channels (0 for equal frames;
        ``nan`` if no pixel is kept).
    """
    c = config or FlowConfig()
    x, y = _check_pair(prev_rgb, cur_rgb)
    if np.array_equal(prev_rgb, cur_rgb):
        return 0.0
    h, w = x.shape[:2]
    bwd, keep = consistent_flow(cur_rgb, prev_rgb, c)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(x, gx + bwd[..., 0], gy + bwd[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if not keep.any():
        return math.nan
    return float(np.abs(warped[keep] - y[keep]).mean() / 255.0)
