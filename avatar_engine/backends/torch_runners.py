"""Backends that stay in PyTorch: ``eager``, ``compile`` (``torch.compile``) and ``tensorrt`` (torch-tensorrt).

On CUDA the graph runs in reduced precision (``BackendOptions.precision``, fp16 by default) under
autocast (``eager``, ``compile``) or as TensorRT engine precision; ``compile`` on CUDA uses CUDA
graphs (``mode="reduce-overhead"``: one launch per frame). Outputs are returned as float32.
"""
from __future__ import annotations

import importlib.util
import shutil
from contextlib import nullcontext
from typing import Any, Callable

import torch

from avatar_engine.backends.base import BackendOptions, BackendUnavailable, GraphSpec, Runner, as_tuple

__all__ = ["TorchRunner", "load_eager", "load_compile", "load_tensorrt", "compile_missing", "tensorrt_missing"]

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Calls ``fn`` under inference mode (and autocast at ``precision`` on CUDA); float32 outputs."""

    def __init__(self, backend: str, fn: Callable[..., Any], device: torch.device, precision: str = "fp32"):
        self.backend, self.fn, self.device, self.precision = backend, fn, device, precision

    def _autocast(self):  # reduced precision on CUDA only: on the CPU, eager is the fp32 reference
        if self.device.type == "cuda" and self.precision in _DTYPES:
            return torch.autocast("cuda", dtype=_DTYPES[self.precision])
        return nullcontext()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graphed = self.backend == "compile" and self.device.type == "cuda"
        with torch.inference_mode(), self._autocast():
            if graphed:  # CUDA graphs: a new replay; its outputs live in buffers the next replay reuses
                torch.compiler.cudagraph_mark_step_begin()
            out = as_tuple(self.fn(*inputs))
        out = tuple(t.float() if t.is_floating_point() else t for t in out)
        return tuple(t.clone() for t in out) if graphed else out


def compile_missing(device: torch.device) -> str:
    """'' when ``torch.compile`` can build code for ``device``, else why not."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile needs a C++ compiler (g++) on the CPU"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile needs triton on CUDA"
    return ""


def tensorrt_missing(device: torch.device) -> str:
    """'' when TensorRT can run on ``device``, else why not."""
    if device.type != "cuda":
        return f"TensorRT needs a CUDA device (the model runs on {device.type})"
    if not torch.cuda.is_available():
        return "TensorRT needs CUDA, and torch sees no CUDA device"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch-tensorrt is not installed (pip install -e '.[trt]')"
    return ""


def load_eager(spec: GraphSpec, options: BackendOptions) -> Runner:
    return TorchRunner("eager", spec.module, spec.device, options.resolved_precision(spec.device))


def load_compile(spec: GraphSpec, options: BackendOptions) -> Runner:
    why = compile_missing(spec.device)
    if why:
        raise BackendUnavailable(why)
    cuda = spec.device.type == "cuda"
    fn = torch.compile(spec.module, dynamic=False, mode="reduce-overhead" if cuda else None)
    return TorchRunner("compile", fn, spec.device, options.resolved_precision(spec.device))


def load_tensorrt(spec: GraphSpec, options: BackendOptions) -> Runner:
    why = tensorrt_missing(spec.device)
    if why:
        raise BackendUnavailable(why)
    import torch_tensorrt  # optional extra, CUDA only

    precision = options.resolved_precision(spec.device)
    precisions = {torch.float32} | ({_DTYPES[precision]} if precision in _DTYPES else set())
    fn = torch_tensorrt.compile(spec.module, ir="dynamo", inputs=list(spec.example_inputs),
                                enabled_precisions=precisions, use_python_runtime=False)
    return TorchRunner("tensorrt", fn, spec.device, "fp32")
