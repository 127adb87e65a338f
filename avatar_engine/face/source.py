"""The source portrait, prepared once: photo, face crop, landmarks, identity key.

Everything a renderer needs that depends only on the source is derived from a :class:`SourceFace`,
and renderers cache their own source-only work under :attr:`SourceFace.key`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.face.crop import CropConfig, FaceCrop, crop_from_landmarks
from avatar_engine.errors import NoFaceError
from avatar_engine.io.image import read_image
from avatar_engine.face.landmarks import LandmarkConfig, detect_source_landmarks

__all__ = ["crop_source", "SourceConfig", "SourceFace", "prepare_source"]

log = logging.getLogger("avatar_engine")


@dataclass
class SourceConfig:
    """How a source photo is prepared.

    Attributes:
        size: side of the face crop the renderers work at (256 or 512).
        max_side: photos whose long side exceeds this are downscaled first (paste-back output size).
        crop: face-crop geometry (its ``size`` is overridden by ``size``).
        landmarks: detector options.
    """

    size: int = 256
    max_side: int = 1280
    crop: CropConfig = field(default_factory=CropConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)


@dataclass(frozen=True, eq=False)
class SourceFace:
    """A prepared source portrait.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB full photo (after the ``max_side`` downscale); paste-back target.
        crop: the face crop (full photo -> ``size x size``).
        crop_image: ``(S, S, 3) uint8`` RGB face crop the renderers animate.
        landmarks: ``(478, 3) float32`` source landmarks in crop pixels.
        faces_found: how many faces the photo had (the largest is used).
        key: content hash identifying this source (image bytes + crop), for renderer caches.
    """

    image: np.ndarray
    crop: FaceCrop
    crop_image: np.ndarray
    landmarks: np.ndarray
    faces_found: int
    key: str

    @property
    def size(self) -> int:
        return int(self.crop_image.shape[0])


def crop_source(crop_image: np.ndarray, landmarks: np.ndarray, key: str) -> SourceFace:
    """A :class:`SourceFace` of an already cropped face (a prepared cache frame): ``crop_image (S, S, 3)
    uint8`` is also the full photo, ``landmarks (478, 3)`` in its pixels, ``key`` names it for caches."""
    image = np.array(crop_image, np.uint8)
    size = image.shape[0]
    return SourceFace(image=image, crop=FaceCrop(size / 2, size / 2, size, size), crop_image=image,
                      landmarks=np.array(landmarks, np.float32), faces_found=1, key=key)


def prepare_source(image: np.ndarray | str | Path, config: SourceConfig | None = None) -> SourceFace:
    """Read (if a path), detect the face, crop, and map landmarks into the crop.

    Args:
        image: a path, or ``(H, W, 3) uint8`` RGB.
        config: preparation options.
    Raises:
        ImageReadError: unreadable file. NoFaceError: no face in the photo.
    """
    cfg = config or SourceConfig()
    what = str(image) if isinstance(image, (str, Path)) else "the source image"
    rgb = read_image(image) if isinstance(image, (str, Path)) else np.ascontiguousarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"source image must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    long_side = max(rgb.shape[:2])
    if long_side > cfg.max_side:
        f = cfg.max_side / long_side
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=cv2.INTER_AREA)
    try:
        points, n_faces = detect_source_landmarks(rgb, cfg.landmarks)
    except NoFaceError:
        raise NoFaceError(f"no face found in {what}: use a clear, front-facing photo of one person") from None
    if n_faces > 1:
        log.warning("found %d faces in %s; using the largest", n_faces, what)
    crop_cfg = CropConfig(**{**cfg.crop.__dict__, "size": cfg.size})
    crop = crop_from_landmarks(points, crop_cfg)
    crop_image = crop.crop_image(rgb)
    landmarks = crop.to_crop(points).astype(np.float32)
    digest = hashlib.sha1(rgb.tobytes())
    digest.update(np.asarray(crop.matrix, np.float64).tobytes())
    digest.update(str(cfg.size).encode())
    return SourceFace(rgb, crop, crop_image, landmarks, n_faces, digest.hexdigest()[:16])
