"""Inference backends for the networks: eager PyTorch, ``torch.compile``, or TensorRT.

``accelerate(module, backend, example_inputs)`` returns a callable with the module's signature.
TensorRT comes from the optional extra (``pip install -e '.[trt]'``, CUDA only). When the requested
backend cannot be used (not installed, no CUDA device, or its compilation fails), the module runs
eagerly instead, with a one-line warning, and keeps working.

``available_backends()`` says which ones this machine can use (``avatar-engine doctor`` prints it).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["BACKENDS", "BackendChoice", "available_backends", "accelerate"]

log = logging.getLogger("avatar_engine")

BACKENDS = ("eager", "compile", "tensorrt")
"""Backend names, from the plainest to the most specialised."""


@dataclass(frozen=True)
class BackendChoice:
    """What :func:`accelerate` ended up using.

    Attributes:
        requested: the backend asked for. used: the backend in effect.
        reason: why it fell back ('' when ``used == requested``).
    """

    requested: str
    used: str
    reason: str = ""


def _tensorrt_missing(device: torch.device) -> str:
    """'' when TensorRT can run on ``device``, else why not."""
    if device.type != "cuda":
        return f"TensorRT needs a CUDA device (the model runs on {device.type})"
    if not torch.cuda.is_available():
        return "TensorRT needs CUDA, and torch sees no CUDA device"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch-tensorrt is not installed (pip install -e '.[trt]')"
    return ""


def available_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """Map of backend name -> '' if usable on ``device``, else the reason it is not."""
    dev = torch.device(device)
    return {"eager": "", "compile": "", "tensorrt": _tensorrt_missing(dev)}


def _compile(module: torch.nn.Module) -> Callable[..., Any]:
    return torch.compile(module, dynamic=False)


def _tensorrt(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> Callable[..., Any]:
    import torch_tensorrt  # optional extra, CUDA only

    return torch_tensorrt.compile(module, ir="dynamo", inputs=list(example_inputs),
                                  enabled_precisions={torch.float16, torch.float32})


def accelerate(module: torch.nn.Module, backend: str = "eager",
               example_inputs: Sequence[torch.Tensor] = ()) -> tuple[Callable[..., Any], BackendChoice]:
    """Prepare ``module`` (in eval mode) for inference with ``backend``, falling back cleanly.

    Args:
        module: the network, already on its device.
        backend: one of :data:`BACKENDS`.
        example_inputs: inputs of the shapes used at run time; the compiled module is run on them
            once so that a failing compilation falls back here rather than on the first frame.
    Returns:
        ``(callable, choice)``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    module.eval()
    device = next(module.parameters(), torch.empty(0)).device
    if backend == "eager":
        return module, BackendChoice(backend, "eager")
    why = _tensorrt_missing(device) if backend == "tensorrt" else ""
    if not why:
        try:
            fn = _tensorrt(module, example_inputs) if backend == "tensorrt" else _compile(module)
            if example_inputs:
                with torch.inference_mode():
                    fn(*example_inputs)
            return fn, BackendChoice(backend, backend)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: fall back
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            why = f"{backend} failed: {type(exc).__name__}: {first_line}"
    log.warning("backend %s unavailable (%s); running eagerly", backend, why)
    return module, BackendChoice(backend, "eager", why)
