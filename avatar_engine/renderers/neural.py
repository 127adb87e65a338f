"""The ``neural`` renderer: the trained warping + refinement model (:mod:`avatar_engine.models.base_model`).

Per source (cached under ``source.key``): the mesh warp of the source (the geometric prior), the
identity embedding z_id (dlib descriptor of the source crop, :mod:`avatar_engine.face.identity`) and both
networks' source encoders. Per frame: the mesh grid for the target landmarks (PyTorch), then one graph
(:class:`~avatar_engine.models.frame_graph.NeuralFrameGraph`: connectivity lines, residual flow,
warp, refinement, detail transfer) run by the inference backend (``backend``, :mod:`avatar_engine.backends`), loaded
once: the per-source tensors are its inputs, so a new source needs no new graph.

The model renders at its own crop size (256 for the shipped weights); sources prepared at another
size (512) are rendered at the model size and resized.

:func:`create_neural_renderer` is what ``create_renderer("neural")`` calls: when the weight file is
missing or corrupt it logs a warning and returns the mesh renderer instead.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_engine.backends import BackendChoice, BackendOptions, Runner, accelerate, check_backend
from avatar_engine.errors import WeightsError
from avatar_engine.models.base_model import DEFAULT_WEIGHTS, NeuralAvatar, NeuralSourceCache, load_model
from avatar_engine.io.image import image_to_tensor, tensor_to_image
from avatar_engine.renderers.base import Renderer
from avatar_engine.renderers.mesh import MeshRenderer
from avatar_engine.face.source import SourceFace
from avatar_engine.geometry.mesh_warp import MeshWarp
from avatar_engine.models.frame_graph import DetailTransfer, NeuralFrameGraph

__all__ = ["NeuralRenderer", "create_neural_renderer"]

log = logging.getLogger("avatar_engine")


class NeuralRenderer(Renderer):
    """Renderer running a :class:`~avatar_engine.models.base_model.NeuralAvatar`.

    Args:
        device: torch device.
        weights: safetensors file (default: the shipped lite model).
        model: an already built model (overrides ``weights``; tests, training previews).
        backend: inference backend of the per-frame graph (:data:`avatar_engine.backends.BACKEND_CHOICES`).
        backend_options: its options (cache folder, threads, GPU precision).
        detail: put the warped photo's fine detail back into the refined image
            (:class:`~avatar_engine.models.frame_graph.DetailTransfer`; False: the network's image as it is).
    Attributes:
        backend_choice: what the backend request resolved to (None until the first source is prepared).
    Raises:
        WeightsError: the weight file is missing, corrupt or does not fit.
        ValueError: unknown backend.
    """

    name = "neural"

    def __init__(self, device: torch.device | str = "cpu", weights: str | Path | None = None,
                 model: NeuralAvatar | None = None, backend: str = "eager",
                 backend_options: BackendOptions | None = None, detail: bool = True):
        super().__init__(device)
        self.detail = DetailTransfer() if detail else None
        check_backend(backend)
        self.backend, self.backend_options = backend, backend_options
        self.backend_choice: BackendChoice | None = None
        self._graph: Runner | None = None
        self._source_inputs: tuple[torch.Tensor, ...] = ()
        self.model = (model.to(self.device).eval() if model is not None
                      else load_model(weights or DEFAULT_WEIGHTS, self.device))
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._identity = None
        self._mesh: MeshWarp | None = None
        self._cache: NeuralSourceCache | None = None
        self._scale = 1.0

    def _z_id(self, crop: np.ndarray, points: np.ndarray) -> np.ndarray:
        """dlib descriptor of the source crop; zeros (with a warning) when dlib is unavailable or finds no face."""
        from avatar_engine.face.identity import IdentityEncoder

        try:
            if self._identity is None:
                self._identity = IdentityEncoder()
            z = self._identity.embed(crop, points)
        except WeightsError as exc:
            log.warning("neural renderer: %s; rendering without the identity code", exc)
            z = None
        if z is None:
            log.warning("neural renderer: no identity code for this source (dlib found no face)")
            return np.zeros(self.model.config.refine.id_dim, np.float32)
        return z

    def _prepare(self, source: SourceFace) -> None:
        cfg = self.model.config
        self._scale = cfg.size / source.size
        crop, pts = source.crop_image, source.landmarks.astype(np.float32)
        if source.size != cfg.size:
            crop = cv2.resize(crop, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
            pts = pts * self._scale
        self._mesh = MeshWarp(pts, cfg.size, cfg.mesh_warp_config(), self.device)
        z = torch.from_numpy(self._z_id(crop, pts)).to(self.device)[None]
        with torch.inference_mode():
            self._cache = self.model.encode_source(image_to_tensor(crop, self.device),
                                                   torch.from_numpy(pts).to(self.device)[None], z)
        if self._graph is None:
            self._graph = self._load_graph(self._points(pts))
        inputs = NeuralFrameGraph.source_inputs(self._cache)
        # once per source, not every frame: the ONNX runtimes read contiguous host arrays
        self._source_inputs = tuple(t.contiguous() for t in inputs) if self._graph.host_arrays else inputs

    def _points(self, pts: np.ndarray) -> torch.Tensor:
        """``(478, 2|3)`` model-size crop px -> the graph's ``(1, 478, 3)`` float32 input (z = 0 if absent)."""
        if pts.shape[1] == 2:
            pts = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], 1)
        return torch.from_numpy(np.ascontiguousarray(pts, np.float32)).to(self.device)[None]

    def _load_graph(self, points: torch.Tensor) -> Runner:
        """The per-frame graph through the backend, with this source's tensors as example inputs."""
        assert self._mesh is not None and self._cache is not None
        with torch.inference_mode():
            grid = self._mesh.grid(points)
        spec = NeuralFrameGraph(self.model, self.detail).to(self.device).eval().spec(self._cache, points, grid)
        runner, self.backend_choice = accelerate(spec, self.backend, self.backend_options)
        return runner

    def _geometry(self, source: SourceFace, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points (1, 478, 3), mesh grid (1, S, S, 2))`` at the model size: the graph's per-frame inputs."""
        assert self._mesh is not None
        pts = self._points(target * self._scale)
        return pts, self._mesh.grid(pts).contiguous()

    def _render(self, source: SourceFace, target: np.ndarray,
                geometry: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        assert self._graph is not None
        (out,) = self._graph(*geometry, *self._source_inputs)
        image = tensor_to_image(out)
        if image.shape[0] != source.size:
            image = cv2.resize(image, (source.size, source.size), interpolation=cv2.INTER_LINEAR)
        return image


def create_neural_renderer(device: torch.device | str = "cpu", **kwargs) -> Renderer:
    """A :class:`NeuralRenderer`, or, when its weights are missing or corrupt, a :class:`MeshRenderer`
    with a warning (logger ``avatar_engine``)."""
    try:
        return NeuralRenderer(device, **kwargs)
    except WeightsError as exc:
        log.warning("%s; falling back to the mesh renderer", exc)
        return MeshRenderer(device)
