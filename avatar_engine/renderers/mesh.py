"""The ``mesh`` renderer: the dense-landmark warp (:mod:`avatar_engine.geometry.mesh_warp`), no learned weights."""
from __future__ import annotations

import numpy as np
import torch

from avatar_engine.face.source import SourceFace
from avatar_engine.geometry.mesh_warp import MeshWarp, WarpConfig
from avatar_engine.io.image import image_to_tensor, tensor_to_image
from avatar_engine.renderers.base import Renderer

__all__ = ["MeshRenderer"]


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

    def _geometry(self, source: SourceFace, target: np.ndarray) -> torch.Tensor:
        assert self._warp is not None
        return self._warp.grid(torch.from_numpy(target).to(self.device)[None])

    def _render(self, source: SourceFace, target: np.ndarray, geometry: torch.Tensor) -> np.ndarray:
        assert self._warp is not None and self._source_tensor is not None
        return tensor_to_image(self._warp.warp(self._source_tensor, geometry))
