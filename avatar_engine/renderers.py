"""Renderer interface and the built-in renderers.

A renderer turns a prepared source portrait and target landmarks into an output face crop:

    renderer.render(source, target_landmarks) -> (S, S, 3) uint8 RGB

The source-only work (tensors on the device, triangulations, encoder features, identity codes) is
done once per source and cached under ``source.key``; calling ``render`` with a new source
re-prepares. Implementations:

* ``source``: no motion, returns the source crop (the evaluation baseline).
* ``mesh``: the dense-landmark warp (:mod:`avatar_engine.warp`), no learned weights.
* ``neural``: the trained warping + refinement model (:mod:`avatar_engine.neural_renderer`); falls
  back to ``mesh`` with a warning when its weights are missing or corrupt.

``create_renderer(name)`` builds one by name; ``RENDERER_NAMES`` lists the names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch

from .source import SourceFace
from .warp import MeshWarp, WarpConfig

__all__ = ["Renderer", "SourceRenderer", "MeshRenderer", "create_renderer", "RENDERER_NAMES",
           "image_to_tensor", "tensor_to_image"]


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(1, 3, H, W) float in [0, 1]`` on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W) | (3, H, W) float in [0, 1]`` -> ``(H, W, 3) uint8`` (on the CPU)."""
    t = tensor[0] if tensor.dim() == 4 else tensor
    return t.detach().clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class Renderer(ABC):
    """Base class: per-source caching around :meth:`_prepare` and :meth:`_render`.

    Args:
        device: torch device the renderer runs on.
    """

    name: str = ""

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


class SourceRenderer(Renderer):
    """The unmoved source crop, whatever the target: the no-motion baseline."""

    name = "source"

    def _prepare(self, source: SourceFace) -> None:
        pass

    def _render(self, source: SourceFace, target: np.ndarray) -> np.ndarray:
        return source.crop_image.copy()


class MeshRenderer(Renderer):
    """Piecewise-affine warp of the source crop along the landmark triangle mesh.

    Args:
        device: torch device.
        config: mesh warp options.
    """

    name = "mesh"

    def __init__(self, device: torch.device | str = "cpu", config: WarpConfig | None = None):
        super().__init__(device)
        self.config = config or WarpConfig()
        self._warp: MeshWarp | None = None
        self._source_tensor: torch.Tensor | None = None

    def _prepare(self, source: SourceFace) -> None:
        self._warp = MeshWarp(source.landmarks, source.size, self.config, self.device)
        self._source_tensor = image_to_tensor(source.crop_image, self.device)

    def _render(self, source: SourceFace, target: np.ndarray) -> np.ndarray:
        assert self._warp is not None and self._source_tensor is not None
        grid = self._warp.grid(torch.from_numpy(target).to(self.device)[None])
        return tensor_to_image(self._warp.warp(self._source_tensor, grid))


def _neural(device: torch.device | str = "cpu", **kwargs: Any) -> Renderer:
    from .neural_renderer import create_neural_renderer  # imports this module: resolved at call time

    return create_neural_renderer(device, **kwargs)


_RENDERERS: dict[str, Callable[..., Renderer]] = {"source": SourceRenderer, "mesh": MeshRenderer, "neural": _neural}
RENDERER_NAMES: tuple[str, ...] = tuple(_RENDERERS)


def create_renderer(name: str, device: torch.device | str = "cpu", **kwargs: Any) -> Renderer:
    """Build a renderer by name (one of :data:`RENDERER_NAMES`)."""
    try:
        cls = _RENDERERS[name]
    except KeyError:
        raise ValueError(f"unknown renderer {name!r}; choose from {', '.join(RENDERER_NAMES)}") from None
    return cls(device, **kwargs)
