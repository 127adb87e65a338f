"""The renderer interface.

A renderer turns a prepared source portrait and target landmarks into an output face crop:

    renderer.render(source, target_landmarks) -> (S, S, 3) uint8 RGB

The source-only work (tensors on the device, triangulations, encoder features, identity codes) is
done once per source and cached under ``source.key``; calling ``render`` with a new source
re-prepares.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from avatar_engine.face.source import SourceFace

__all__ = ["Renderer"]


class Renderer(ABC):
    """Base class: per-source caching around :meth:`_prepare` and :meth:`_render`.

    Args:
        device: torch device the renderer runs on.
    """

    name: str = ""
    backend: str = "eager"
    """Inference backend requested for this renderer's graph and the stages after it (the SR step)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._source_key: str | None = None

    def render(self, source: SourceFace, target: np.ndarray) -> np.ndarray:
        """Render the source face at the target landmarks.

        Args:
            source: prepared source portrait.
            target: ``(478, 3)`` (or ``(478, 2)``) float target landmarks in source-crop pixels.
        Returns:
            ``(S, S, 3) uint8`` RGB face crop, ``S = source.size``.
        """
        if self._source_key != source.key:
            self._prepare(source)
            self._source_key = source.key
        with torch.inference_mode():
            return self._render(source, np.asarray(target, np.float32))

    @abstractmethod
    def _prepare(self, source: SourceFace) -> None:
        """Do and cache the source-only work."""

    @abstractmethod
    def _render(self, source: SourceFace, target: np.ndarray) -> np.ndarray:
        """Render one frame (source already prepared)."""
