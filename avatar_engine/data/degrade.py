"""Per-frame capture and coding degradations of face-crop clips (sensor noise, JPEG blocks).

Real 256 frames reach the super-resolution stage with artifacts that change from frame to frame:
sensor noise and the blocks and ringing of a lossy codec fall differently on every frame, even on a
still face. A network that sees one frame at a time can only guess which detail is real; one that
sees the last ``T`` frames can tell steady detail from noise that moves. Training the SR stage on
clips degraded this way (:class:`~avatar_engine.training.sr.SRWindowDataset`) teaches it to, and
``benchmarks/eval_sr.py`` scores it on val clips degraded the same way at one fixed level.

A degradation is drawn once per clip (:func:`sample_degradation`: one noise level and one codec
quality, as one camera and one encoder would have) and applied to every frame with its own noise
(:func:`degrade_clip`).

Images: ``(T, H, W, 3) uint8`` RGB, any ``H, W``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["DegradeConfig", "Degradation", "sample_degradation", "degrade_clip"]


@dataclass
class DegradeConfig:
    """Distribution of clip degradations (training augmentation).

    Attributes:
        probability: share of clips degraded at all (the rest stay clean).
        noise_sigma: range of the Gaussian noise's standard deviation, in 8-bit levels (uniform).
        jpeg_probability: share of degraded clips that are also JPEG-coded.
        jpeg_quality: range of the JPEG quality (uniform, inclusive).
    """

    probability: float = 0.0
    noise_sigma: tuple[float, float] = (0.0, 8.0)
    jpeg_probability: float = 0.7
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        self.noise_sigma = (float(self.noise_sigma[0]), float(self.noise_sigma[1]))
        self.jpeg_quality = (int(self.jpeg_quality[0]), int(self.jpeg_quality[1]))
        if not (0.0 <= self.probability <= 1.0 and 0.0 <= self.jpeg_probability <= 1.0):
            raise ValueError("probability and jpeg_probability must be in [0, 1]")
        if not 0.0 <= self.noise_sigma[0] <= self.noise_sigma[1]:
            raise ValueError(f"noise_sigma must be a range of non-negative values, got {self.noise_sigma}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be a range within 1..100, got {self.jpeg_quality}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DegradeConfig":
        """From a TOML table (``[degrade]``); unknown keys raise ``TypeError``."""
        return cls(**data)


@dataclass(frozen=True)
class Degradation:
    """One clip's degradation: Gaussian noise ``sigma`` (8-bit levels), then JPEG at ``quality``
    (``None``: not coded)."""

    sigma: float = 0.0
    quality: int | None = None

    @property
    def is_identity(self) -> bool:
        return self.sigma <= 0.0 and self.quality is None


def sample_degradation(config: DegradeConfig, rng: np.random.Generator) -> Degradation:
    """Draw one clip's degradation from ``config`` (identity with probability ``1 - probability``)."""
    if rng.random() >= config.probability:
        return Degradation()
    sigma = float(rng.uniform(*config.noise_sigma))
    quality = None
    if rng.random() < config.jpeg_probability:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return Degradation(sigma, quality)


def degrade_clip(frames: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Degrade every frame of ``frames (T, H, W, 3) uint8`` with its own noise draw.

    Returns a new ``(T, H, W, 3) uint8`` array (``frames`` itself, unchanged, for the identity).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if degradation.is_identity:
        return frames
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        img = frame.astype(np.float32)
        if degradation.sigma > 0:
            img += rng.normal(0.0, degradation.sigma, img.shape).astype(np.float32)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if degradation.quality is not None:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]),  # OpenCV codes BGR
                                   [cv2.IMWRITE_JPEG_QUALITY, degradation.quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        out[i] = img
    return out
