"""The ``source`` renderer: the unmoved source crop (the evaluation's no-motion baseline)."""
from __future__ import annotations

import numpy as np

from avatar_engine.face.source import SourceFace
from avatar_engine.renderers.base import Renderer

__all__ = ["SourceRenderer"]


class SourceRenderer(Renderer):
    """The unmoved source crop, whatever the target: the no-motion baseline."""

    name = "source"
    default_layers = None  # the unmoved photo: nothing drawn over it

    def _prepare(self, source: SourceFace) -> None:
        pass

    def _render(self, source: SourceFace, target: np.ndarray, geometry: object) -> np.ndarray:
        return source.crop_image.copy()
