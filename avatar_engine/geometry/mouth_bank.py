"""A person's own mouth interiors: exemplar mouths from an enrollment capture, drawn by the mouth layer.

The procedural interior of :mod:`.mouth` (a dark cavity and white teeth bands) is the same for
everyone; a network trained on the corpus (:mod:`avatar_engine.models.mouth_net`) blurs teeth it has
never seen into a grey average. An enrollment capture shows the person's real teeth, tongue and
cavity at many openings, so the mouth layer can draw those instead: a :class:`MouthBank` keeps a few
capture frames' mouths, spread over the openings seen (one per opening bin, the sharpest and most
frontal), and for a target mouth the exemplar whose opening is nearest is mapped into the target's
inner-lip opening. The mapping works in the opening frame of :mod:`.openings`: a target pixel at
``(u, v)`` (across the mouth, down the face, in mouth widths) samples the exemplar at the same ``u``
and at the same fraction of the way from its upper to its lower inner lip, so the exemplar's lips
land on the target's lips and its teeth stay under the upper lip.

Exemplars are stored as ``(h, w, 3) uint8`` blocks around the outer lips with their landmarks in
block pixels; :meth:`MouthBank.save` / :func:`load_mouth_bank` use safetensors. Landmarks are
``(478, 2|3)`` crop pixels (pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_engine.errors import WeightsError
from avatar_engine.face import topology
from avatar_engine.geometry.head_pose import head_pose
from avatar_engine.geometry.openings import MOUTH, OpeningFrame, opening_frame, patch_around
from avatar_engine.geometry.teeth import TeethCue, teeth_cue

__all__ = ["MouthBankConfig", "MouthBank", "mouth_shape", "lip_colour", "build_mouth_bank", "load_mouth_bank", "BANK_VERSION",
           "TEETH_WEIGHT"]

BANK_VERSION = 1
TEETH_WEIGHT = 1.0
"""Weight of the teeth shares' squared difference against the mouth shape's in :meth:`MouthBank.nearest`."""


@dataclass(frozen=True)
class MouthBankConfig:
    """How exemplars are chosen and matched.

    Attributes:
        exemplars: at most this many, spread over the mouth shapes seen (greedy farthest-point choice
            in the shape space, starting from the widest opening).
        min_gap: frames whose opening (:meth:`OpeningFrame.gap`, mouth widths) is below this show no
            interior worth keeping.
        margin: block margin around the outer lips, in mouth widths.
        max_yaw: frames turned further than this (degrees) are not exemplars (unless no frame is within it).
        smile_scale: how much one unit of smile (lip-corner distance / inter-ocular distance) counts
            against one unit of opening when shapes are compared.
    """

    exemplars: int = 12
    min_gap: float = 0.06
    margin: float = 0.25
    max_yaw: float = 15.0
    smile_scale: float = 1.0


def lip_colour(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(3,) float64`` median RGB of the lips (outer loop minus the inner opening) of ``image (H, W, 3)``."""
    p = np.asarray(points, np.float64)[:, :2]
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(p[topology.OUTER_LIPS_LOOP] - 0.5).astype(np.int32)], 1)
    cv2.fillPoly(mask, [np.round(p[topology.INNER_LIPS_LOOP] - 0.5).astype(np.int32)], 0)
    lips = image[mask.astype(bool)]
    return np.median(lips, axis=0).astype(np.float64) if len(lips) else np.array([150.0, 80.0, 80.0])


def mouth_shape(points: np.ndarray, frame: OpeningFrame | None = None) -> np.ndarray:
    """``(2,)`` shape of a mouth: the inner opening (mouth widths) and the smile (lip-corner distance over
    the inter-ocular distance) of ``points (478, 2|3)`` (``frame``: their :data:`MOUTH` opening frame,
    when already at hand)."""
    p = np.asarray(points, np.float64)[:, :2]
    iod = max(float(np.linalg.norm(p[33] - p[263])), 1e-6)
    frame = frame if frame is not None else opening_frame(p, MOUTH)
    return np.array([frame.gap(), float(np.linalg.norm(p[61] - p[291])) / iod])


@dataclass
class MouthBank:
    """Exemplar mouths of one person (module docstring).

    Attributes:
        blocks: ``K`` blocks ``(h_k, w_k, 3) uint8`` around the exemplars' lips.
        points: ``K`` landmark arrays ``(478, 2) float32`` in block pixels.
        shapes: ``(K, 2)`` their :func:`mouth_shape` (opening, smile).
        lips: ``(K, 3)`` their median lip colours (RGB), for matching the colour to a source photo.
        smile_scale: :attr:`MouthBankConfig.smile_scale`.
        teeth: ``(K, 2)`` (computed, not stored) the exemplars' own
            :class:`~avatar_engine.geometry.teeth.TeethCue` shares (upper, lower), for :meth:`nearest`.
    """

    blocks: list[np.ndarray]
    points: list[np.ndarray]
    shapes: np.ndarray
    lips: np.ndarray
    smile_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.blocks)

    def __post_init__(self) -> None:
        cues = [teeth_cue(b, p) for b, p in zip(self.blocks, self.points)]
        self.teeth = np.array([[0.0, 0.0] if c is None else [c.upper, c.lower] for c in cues], np.float64).reshape(-1, 2)

    def nearest(self, shape: np.ndarray, teeth: TeethCue | None = None) -> int:
        """Index of the exemplar whose :func:`mouth_shape` is nearest ``shape (2,)`` and, with the driver's
        ``teeth``, whose teeth show most alike (squared differences of the two shares, times
        :data:`TEETH_WEIGHT`, added to the shape's)."""
        d = self.shapes - np.asarray(shape, np.float64)
        cost = d[:, 0] ** 2 + (self.smile_scale * d[:, 1]) ** 2
        if teeth is not None:
            cost = cost + TEETH_WEIGHT * ((self.teeth - np.array([teeth.upper, teeth.lower])) ** 2).sum(axis=1)
        return int(np.argmin(cost))

    def save(self, path: str | Path, meta: dict[str, str] | None = None) -> None:
        """Write the bank as safetensors (``block_k``, ``points_k``, ``shapes``, ``lips``)."""
        from safetensors.numpy import save_file

        tensors = {"shapes": self.shapes.astype(np.float32), "lips": self.lips.astype(np.float32),
                   "smile_scale": np.array([self.smile_scale], np.float32)}
        for k, (b, p) in enumerate(zip(self.blocks, self.points)):
            tensors[f"block_{k}"] = np.ascontiguousarray(b, np.uint8)
            tensors[f"points_{k}"] = np.ascontiguousarray(p, np.float32)
        info = {"kind": "mouth_bank", "version": str(BANK_VERSION), "exemplars": str(len(self))} | (meta or {})
        save_file(tensors, str(path), metadata={k: json.dumps(v) if not isinstance(v, str) else v
                                                for k, v in info.items()})


def load_mouth_bank(path: str | Path) -> MouthBank:
    """Read a bank written by :meth:`MouthBank.save`.

    Raises:
        WeightsError: missing, corrupt, another kind of file or inconsistent arrays.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"mouth bank not found: {p}")
    try:
        with safe_open(str(p), "np") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt mouth bank {p}: {exc}") from None
    if meta.get("kind") != "mouth_bank" or meta.get("version") != str(BANK_VERSION):
        raise WeightsError(f"{p} is not a version-{BANK_VERSION} mouth bank")
    try:
        shapes, lips = tensors["shapes"].astype(np.float64), tensors["lips"].astype(np.float64)
        scale = float(tensors["smile_scale"][0])
        k = len(shapes)
        blocks = [tensors[f"block_{i}"] for i in range(k)]
        points = [tensors[f"points_{i}"] for i in range(k)]
    except KeyError as exc:
        raise WeightsError(f"corrupt mouth bank {p}: missing {exc}") from None
    ok = (k > 0 and shapes.shape == (k, 2) and lips.shape == (k, 3) and np.isfinite(shapes).all()
          and all(b.ndim == 3 and b.shape[2] == 3 and b.dtype == np.uint8 and min(b.shape[:2]) >= 4 for b in blocks)
          and all(q.shape == (topology.NUM_LANDMARKS, 2) and np.isfinite(q).all() for q in points))
    if not ok:
        raise WeightsError(f"corrupt mouth bank {p}: arrays do not fit")
    return MouthBank(blocks, points, shapes, lips, scale)


def _sharpness(image: np.ndarray, points: np.ndarray) -> float:
    """Sharpness (Laplacian variance of the inner mouth) of a candidate exemplar."""
    box = patch_around(np.asarray(points, np.float64)[topology.INNER_LIPS_LOOP, :2], 1.0, image.shape[:2])
    if box.empty:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(image[box.y0:box.y1, box.x0:box.x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def build_mouth_bank(frames: Iterable[tuple[np.ndarray, np.ndarray]],
                     config: MouthBankConfig = MouthBankConfig()) -> MouthBank | None:
    """Choose exemplars from ``(crop (S, S, 3) uint8, landmarks (478, 3))`` frames of one person.

    Candidates: frames that open the mouth by ``min_gap``, within ``max_yaw`` of frontal, and at
    least half as sharp as the median such frame (motion blur). The first exemplar is the widest opening; each next one
    is the candidate farthest (in :func:`mouth_shape` space) from those already chosen.

    Returns:
        the bank, or None when no frame opens the mouth by ``min_gap``.
    """
    cands = []
    for image, pts in frames:
        pts = np.asarray(pts, np.float64)
        frame = opening_frame(pts, MOUTH)
        shape = mouth_shape(pts, frame)
        if not np.isfinite(shape).all() or shape[0] < config.min_gap or frame.width < 8.0:
            continue
        yaw = abs(head_pose(pts).yaw) if pts.shape[1] == 3 else 0.0
        cands.append((shape, yaw <= config.max_yaw, _sharpness(image, pts), image, pts))
    if not cands:
        return None
    if any(c[1] for c in cands):
        cands = [c for c in cands if c[1]]
    sharp = 0.5 * np.median([c[2] for c in cands])  # drop motion-blurred frames
    cands = [c for c in cands if c[2] >= sharp]
    scale = np.array([1.0, config.smile_scale])
    feats = np.stack([c[0] for c in cands]) * scale
    chosen = [int(np.argmax(feats[:, 0]))]
    dist = np.linalg.norm(feats - feats[chosen[0]], axis=1)
    while len(chosen) < min(config.exemplars, len(cands)) and dist.max() > 1e-3:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(feats - feats[chosen[-1]], axis=1))
    blocks, points, lips = [], [], []
    for i in chosen:
        image, pts = cands[i][3], cands[i][4]
        width = opening_frame(pts, MOUTH).width
        box = patch_around(pts[topology.OUTER_LIPS_LOOP, :2], config.margin * width * 2.0, image.shape[:2])
        blocks.append(np.ascontiguousarray(image[box.y0:box.y1, box.x0:box.x1]))
        points.append((pts[:, :2] - np.array([box.x0, box.y0])).astype(np.float32))
        lips.append(lip_colour(image, pts))
    return MouthBank(blocks, points, np.stack([cands[i][0] for i in chosen]), np.array(lips), config.smile_scale)
