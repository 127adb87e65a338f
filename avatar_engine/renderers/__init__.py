"""Renderers: a prepared source portrait + target landmarks -> an output face crop.

Implementations, one module each:

* ``source`` (:mod:`.source`): no motion, returns the source crop (the evaluation baseline).
* ``mesh`` (:mod:`.mesh`): the dense-landmark warp, no learned weights.
* ``neural`` (:mod:`.neural`): the trained warping + refinement model; falls back to ``mesh`` with a
  warning when its weights are missing or corrupt.

``create_renderer(name, device, backend=...)`` builds one by name; ``RENDERER_NAMES`` lists the names.
``backend`` (:mod:`avatar_engine.backends`) runs the neural renderer's per-frame graph, and the
stages after any renderer (the SR step at 512) follow it (``Renderer.backend``). The interface is
:class:`~avatar_engine.renderers.base.Renderer`; no renderer module imports this registry.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from avatar_engine.backends import check_backend
from avatar_engine.config import DEFAULT_RENDERER
from avatar_engine.renderers.base import Renderer
from avatar_engine.renderers.mesh import MeshRenderer
from avatar_engine.renderers.neural import create_neural_renderer
from avatar_engine.renderers.source import SourceRenderer

__all__ = ["Renderer", "SourceRenderer", "MeshRenderer", "create_renderer", "RENDERER_NAMES", "DEFAULT_RENDERER"]


def _neural(device: torch.device | str = "cpu", **kwargs: Any) -> Renderer:

    return create_neural_renderer(device, **kwargs)


_RENDERERS: dict[str, Callable[..., Renderer]] = {"source": SourceRenderer, "mesh": MeshRenderer, "neural": _neural}
RENDERER_NAMES: tuple[str, ...] = tuple(_RENDERERS)


def create_renderer(name: str, device: torch.device | str = "cpu", *, backend: str = "eager",
                    **kwargs: Any) -> Renderer:
    """Build a renderer by name (one of :data:`RENDERER_NAMES`) with an inference backend
    (:data:`avatar_engine.backends.BACKEND_CHOICES`; ``auto``: the fastest here).

    ``mouth_weights``, ``mouth_bank`` (any renderer's keywords): the learned mouth stage's weight file and
    the person's mouth bank (:class:`Renderer`'s attributes; kept when the neural renderer falls back to
    the mesh)."""
    try:
        cls = _RENDERERS[name]
    except KeyError:
        raise ValueError(f"unknown renderer {name!r}; choose from {', '.join(RENDERER_NAMES)}") from None
    check_backend(backend)
    mouth = {k: kwargs.pop(k, None) for k in ("mouth_weights", "mouth_bank")}
    renderer = cls(device, backend=backend, **kwargs) if name == "neural" else cls(device, **kwargs)
    renderer.backend = backend
    renderer.mouth_weights, renderer.mouth_bank = mouth["mouth_weights"], mouth["mouth_bank"]
    return renderer
