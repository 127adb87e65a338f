"""The renderer interface.

A renderer turns a prepared source portrait and target landmarks into an output face crop:

    renderer.render(source, target_landmarks) -> (S, S, 3) uint8 RGB

The source-only work (tensors on the device, triangulations, encoder features, identity codes) is
done once per source and cached under ``source.key``; calling ``render`` with a new source
re-prepares.

Every renderer's output then gets the face layers (:mod:`avatar_engine.geometry.face_layers`: eyes
that follow the gaze and close, a mouth interior with teeth) unless its ``layers`` is None, and then
the learned mouth stage (:mod:`avatar_engine.models.mouth_net`: lips, teeth and cavity redrawn by a
small network trained on the corpus's mouths) when its ``mouth_weights`` names one (off by default: an
enrolled profile's personalized stage, or the shipped one with ``--mouth-net``). The ``source``
renderer, the no-motion baseline, has neither.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar_engine.errors import WeightsError
from avatar_engine.face.source import SourceFace
from avatar_engine.geometry.face_layers import FaceLayers, FaceLayersConfig
from avatar_engine.geometry.teeth import TeethCue
from avatar_engine.geometry.mouth_bank import MouthBank, load_mouth_bank
from avatar_engine.models.mouth_net import MouthNet, MouthStage, load_mouth_net

__all__ = ["Renderer", "RenderPlan"]

log = logging.getLogger("avatar_engine")


@dataclass(frozen=True)
class RenderPlan:
    """A frame planned by :meth:`Renderer.plan`: the source it is for (``SourceFace.key``), the target
    landmarks ``(478, 2|3)`` float32 in source-crop pixels, the renderer's geometry for them
    (e.g. the mesh grid ``(1, S, S, 2)``; None for renderers without one), and the teeth the driver
    shows (for the mouth layer; None: not known)."""

    source_key: str
    target: np.ndarray
    geometry: object = None
    teeth: TeethCue | None = None


class Renderer(ABC):
    """Base class: per-source caching around :meth:`_prepare` and :meth:`_render`.

    Args:
        device: torch device the renderer runs on.

    Attributes:
        layers: face layers drawn over every output (None: off); set before the first ``render``.
        mouth_bank: the person's own mouth interiors for the mouth layer
            (:mod:`~avatar_engine.geometry.mouth_bank`: a file, e.g. an enrolled profile's, or a bank;
            None, the default: the procedural interior); a missing or corrupt file logs one warning.
        mouth_weights: the learned mouth stage's weight file (None, the default: off; the shipped
            :data:`~avatar_engine.models.mouth_net.DEFAULT_MOUTH_WEIGHTS` or a profile's); drawn with the
            face layers (never when ``layers`` is None); set before the first ``render``. A missing or
            corrupt file logs one warning and the stage stays off.
    """

    name: str = ""
    backend: str = "eager"
    """Inference backend requested for this renderer's graph and the stages after it (the SR step)."""
    default_layers: FaceLayersConfig | None = FaceLayersConfig()

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.layers: FaceLayersConfig | None = self.default_layers
        self.mouth_weights: str | Path | None = None
        self._source_key: str | None = None
        self._layers: FaceLayers | None = None
        self.mouth_bank: str | Path | MouthBank | None = None
        self._loaded: dict[str, tuple[Path, object]] = {}  # attribute -> (file, what it loaded or None if it failed)
        self._mouth: MouthStage | None = None

    def render(self, source: SourceFace, target: np.ndarray, teeth: TeethCue | None = None) -> np.ndarray:
        """Render the source face at the target landmarks: :meth:`draw` of :meth:`plan`.

        Args:
            source: prepared source portrait.
            target: ``(478, 3)`` (or ``(478, 2)``) float target landmarks in source-crop pixels.
            teeth: the teeth the driving frame shows (:func:`~avatar_engine.geometry.teeth.teeth_cue`), for
                the mouth layer; None: its configured teeth.
        Returns:
            ``(S, S, 3) uint8`` RGB face crop, ``S = source.size``.
        """
        return self.draw(source, self.plan(source, target, teeth))

    def plan(self, source: SourceFace, target: np.ndarray, teeth: TeethCue | None = None) -> RenderPlan:
        """First half of :meth:`render`: the source-only work when ``source`` is new, and the frame's
        geometry (the mesh warp's sampling grid), which needs no network. A live engine runs it in
        the thread that finds the landmarks, and :meth:`draw` in another."""
        if self._source_key != source.key:
            self._prepare(source)
            self._layers = None if self.layers is None else FaceLayers(source.crop_image, source.landmarks, self.layers,
                                                                       self._load_mouth_bank())
            net = None if self.layers is None else self._load_mouth_net()
            self._mouth = None if net is None else MouthStage(net, source.crop_image, source.landmarks)
            self._source_key = source.key
        target = np.array(target, np.float32)  # own, writable copy (a cache may hand a read-only view)
        with torch.inference_mode():
            geometry = self._geometry(source, target)
        return RenderPlan(source.key, target, geometry, teeth)

    def draw(self, source: SourceFace, plan: RenderPlan) -> np.ndarray:
        """Second half of :meth:`render`: the image of a :meth:`plan` of ``source`` (arguments and
        result as there), face layers included."""
        if plan.source_key != source.key or self._source_key != source.key:
            plan = self.plan(source, plan.target, plan.teeth)  # planned for another source: plan again
        with torch.inference_mode():
            image = self._render(source, plan.target, plan.geometry)
        if self._layers is not None:
            image = self._layers.apply(image, plan.target, plan.teeth)
        return image if self._mouth is None else self._mouth.apply(image, plan.target)

    def _load_mouth_net(self) -> MouthNet | None:
        """The learned mouth network of ``mouth_weights``, loaded once (None: off, or the file failed)."""
        return self._load_once("mouth_weights", lambda p: load_mouth_net(p, self.device),
                               "drawing the mouth without the learned stage")

    def _load_mouth_bank(self) -> MouthBank | None:
        """The mouth bank of ``mouth_bank`` (a file loaded once, or a bank given as is; None: off or failed)."""
        if isinstance(self.mouth_bank, MouthBank):
            return self.mouth_bank
        return self._load_once("mouth_bank", load_mouth_bank, "drawing the procedural mouth interior")

    def _load_once(self, attribute: str, loader: Callable[[Path], object], fallback: str):
        """``loader(path)`` of the file named by ``attribute``, cached per path; a WeightsError logs one
        warning naming ``fallback`` and gives None (also for the next calls with the same path)."""
        value = getattr(self, attribute)
        if value is None:
            return None
        path = Path(value)
        cached = self._loaded.get(attribute)
        if cached is None or cached[0] != path:
            try:
                obj = loader(path)
            except WeightsError as exc:
                log.warning("%s; %s", exc, fallback)
                obj = None
            cached = self._loaded[attribute] = (path, obj)
        return cached[1]

    def _geometry(self, source: SourceFace, target: np.ndarray) -> object:
        """The per-frame work that needs no network (source prepared; default: none)."""
        return None

    @abstractmethod
    def _prepare(self, source: SourceFace) -> None:
        """Do and cache the source-only work."""

    @abstractmethod
    def _render(self, source: SourceFace, target: np.ndarray, geometry: object) -> np.ndarray:
        """Render one frame (source already prepared; ``geometry`` from :meth:`_geometry`)."""
