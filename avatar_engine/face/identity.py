"""Face identity embeddings: dlib's 128-D face descriptor (ResNet, LFW accuracy 99.38 %).

Two faces whose descriptors are closer than :data:`SAME_PERSON_THRESHOLD` (Euclidean) are the same
person by dlib's calibration. The embedding is used by the evaluation (identity preservation) and
as the identity code of learned renderers.

Pipeline of :meth:`IdentityEncoder.embed`: a face box (from our mediapipe landmarks when given,
otherwise dlib's HOG face detector), dlib's 5-point shape predictor inside the box, then the
descriptor of the aligned 150 x 150 face chip. The model files come from the
``face_recognition_models`` package (located without importing it: its ``__init__`` needs
``pkg_resources``) or from :attr:`IdentityConfig.models_dir`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar_engine.errors import WeightsError

__all__ = ["SAME_PERSON_THRESHOLD", "IdentityConfig", "IdentityEncoder", "default_models_dir"]

SAME_PERSON_THRESHOLD = 0.6
"""dlib's decision threshold on the descriptor distance: below = same person."""

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def default_models_dir() -> Path | None:
    """``.../face_recognition_models/models`` of the installed package, or None if not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@dataclass
class IdentityConfig:
    """Options of :class:`IdentityEncoder`.

    Attributes:
        models_dir: folder with the two dlib model files; None = the ``face_recognition_models`` package.
        upsample: times the HOG detector upsamples the image (only used without landmarks).
        padding: context around the aligned face chip (dlib's default 0.25).
        box_scale: side of the face box built from landmarks / width of the landmark box. The
            default reproduces dlib's own detector boxes (square, bottom at the chin) on the val clips.
    """

    models_dir: Path | None = None
    upsample: int = 1
    padding: float = 0.25
    box_scale: float = 1.05


class IdentityEncoder:
    """dlib face descriptors of face images (about 90 ms per face on one CPU core).

    Args:
        config: options.
    Raises:
        WeightsError: dlib or its model files are missing.
    """

    def __init__(self, config: IdentityConfig | None = None):
        self.config = config or IdentityConfig()
        try:
            import dlib
        except ImportError:
            raise WeightsError("identity embeddings need dlib: pip install dlib-bin face_recognition_models") from None
        models = self.config.models_dir or default_models_dir()
        if models is None:
            raise WeightsError("dlib face models not found: pip install face_recognition_models "
                               "or pass IdentityConfig(models_dir=...)")
        paths = [Path(models) / name for name in (SHAPE_PREDICTOR_FILE, DESCRIPTOR_FILE)]
        for p in paths:
            if not p.is_file():
                raise WeightsError(f"dlib model file missing: {p}")
        try:
            self._shape = dlib.shape_predictor(str(paths[0]))
            self._net = dlib.face_recognition_model_v1(str(paths[1]))
        except RuntimeError as exc:
            raise WeightsError(f"cannot load dlib face models from {models}: {exc}") from None
        self._dlib = dlib
        self._detector = None  # built on first use (only needed without landmarks)

    def _box(self, rgb: np.ndarray, landmarks: np.ndarray | None):
        dlib = self._dlib
        if landmarks is None:
            if self._detector is None:
                self._detector = dlib.get_frontal_face_detector()
            boxes = list(self._detector(rgb, self.config.upsample))
            return max(boxes, key=lambda r: r.area()) if boxes else None
        p = np.asarray(landmarks, np.float64)
        x0, x1 = p[:, 0].min(), p[:, 0].max()
        bottom = p[:, 1].max()
        side = self.config.box_scale * (x1 - x0)
        cx = 0.5 * (x0 + x1)
        return dlib.rectangle(int(round(cx - side / 2)), int(round(bottom - side)),
                              int(round(cx + side / 2)), int(round(bottom)))

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """The descriptor of the face in ``rgb``.

        Args:
            rgb: ``(H, W, 3) uint8`` RGB image (a face crop or a full photo).
            landmarks: ``(478, 2|3)`` mediapipe landmarks of the face in ``rgb`` pixels (faster and
                more robust on tight crops); None = run dlib's face detector (largest face).
        Returns:
            ``(128,) float32`` descriptor (unit-scale, compare with :meth:`distance`), or None when
            no face was found.
        """
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        img = np.ascontiguousarray(rgb)
        box = self._box(img, landmarks)
        if box is None:
            return None
        shape = self._shape(img, box)
        desc = self._net.compute_face_descriptor(img, shape, 0, self.config.padding)
        return np.asarray(desc, dtype=np.float32)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance of two ``(128,)`` descriptors (below 0.6 = same person)."""
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
