"""Face layers: the eye and mouth layers drawn over any renderer's output crop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from avatar_engine.geometry.eyes import EyeLayer, EyeLayerConfig
from avatar_engine.geometry.mouth import MouthLayer, MouthLayerConfig
from avatar_engine.geometry.teeth import TeethCue

if TYPE_CHECKING:
    from avatar_engine.geometry.mouth_bank import MouthBank

__all__ = ["FaceLayersConfig", "FaceLayers"]


@dataclass(frozen=True)
class FaceLayersConfig:
    """Which layers to draw, and their options (None: that layer is off)."""

    eyes: EyeLayerConfig | None = field(default_factory=EyeLayerConfig)
    mouth: MouthLayerConfig | None = field(default_factory=MouthLayerConfig)


class FaceLayers:
    """The layers of one source: ``FaceLayers(crop, points).apply(rendered, target) -> crop``.

    Args:
        crop: ``(S, S, 3) uint8`` source crop.
        points: ``(478, 2|3)`` source landmarks in crop pixels.
        config: which layers.
        mouth_bank: the person's own mouth interiors for the mouth layer (None: the procedural one).
    """

    def __init__(self, crop: np.ndarray, points: np.ndarray, config: FaceLayersConfig = FaceLayersConfig(),
                 mouth_bank: MouthBank | None = None):
        self.config = config
        self.eyes = EyeLayer(crop, points, config.eyes) if config.eyes is not None else None
        self.mouth = MouthLayer(crop, points, config.mouth, mouth_bank) if config.mouth is not None else None

    def apply(self, image: np.ndarray, target: np.ndarray, teeth: TeethCue | None = None) -> np.ndarray:
        """``image (S, S, 3) uint8`` rendered at ``target (478, 2|3)`` -> the same with the layers drawn
        (``teeth``: what the driver's mouth shows, :func:`~avatar_engine.geometry.teeth.teeth_cue`)."""
        out = image
        if self.eyes is not None:
            out = self.eyes.apply(out, target)
        if self.mouth is not None:
            out = self.mouth.apply(out, target, teeth)
        return out
