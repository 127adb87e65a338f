"""What every backend shares: the graph to run, the choice that was made, the runner interface."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["BACKENDS", "BACKEND_CHOICES", "GraphSpec", "BackendChoice", "BackendOptions", "Runner",
           "BackendUnavailable", "default_cache_dir", "as_tuple"]

BACKENDS = ("eager", "compile", "onnxruntime", "openvino", "tensorrt")
"""Backend names. ``auto`` (:data:`BACKEND_CHOICES`) picks one of them."""
BACKEND_CHOICES = ("auto", *BACKENDS)


class BackendUnavailable(Exception):
    """A backend cannot run this graph here; the message (one line) says why."""


@dataclass
class GraphSpec:
    """A graph to run: a module called with positional tensors, returning a tensor or a tuple of them.

    Attributes:
        name: short name (file names, logs): ``neural256``, ``sr256``.
        module: the torch module, on its device, in eval mode.
        example_inputs: inputs of the shapes and dtypes used at run time (shapes are fixed).
        input_names, output_names: graph input and output names (ONNX), one per tensor.
    """

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: Sequence[str]
    output_names: Sequence[str]

    @property
    def device(self) -> torch.device:
        return self.example_inputs[0].device


@dataclass(frozen=True)
class BackendChoice:
    """What was asked for and what runs.

    Attributes:
        requested: the backend asked for (``auto`` included). used: the backend in effect.
        reason: why ``used`` differs from ``requested`` ('' when it does not, or for ``auto``).
        ms: measured milliseconds per call of each backend ``auto`` timed (empty otherwise; reduced
            precision variants as ``"openvino bf16"``).
        precision: the precision ``auto`` picked (``fp32``, ``bf16``, ``fp16``; '' when not ``auto``).
    """

    requested: str
    used: str
    reason: str = ""
    ms: dict[str, float] = field(default_factory=dict)
    precision: str = ""


@dataclass
class BackendOptions:
    """Knobs of :func:`avatar_engine.backends.accelerate`.

    Attributes:
        cache_dir: exported graphs and ``auto``'s measurements (None: :func:`default_cache_dir`).
        precision: ``fp32``, ``fp16`` or ``bf16`` (None: fp16 on CUDA, fp32 on the CPU). On the CPU only
            OpenVINO honours ``bf16`` (CPUs with AVX512-BF16 or AMX; not the default: its output differs
            from eager by a few levels of 255, see ``benchmarks/bench_backends.py``); the others run fp32.
        threads: CPU threads of ONNX Runtime and OpenVINO (None: ``torch.get_num_threads()``).
        measure_runs: timed calls per backend when ``auto`` measures.
    """

    cache_dir: Path | None = None
    precision: str | None = None
    threads: int | None = None
    measure_runs: int = 15

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()

    def resolved_threads(self) -> int:
        return int(self.threads or torch.get_num_threads())

    def resolved_precision(self, device: torch.device) -> str:
        p = self.precision or ("fp16" if device.type == "cuda" else "fp32")
        if p not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {p!r}")
        return p


def default_cache_dir() -> Path:
    """``$AVATAR_CACHE/graphs`` or ``~/.cache/avatar-engine/graphs``."""
    root = os.environ.get("AVATAR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "avatar-engine") / "graphs"


def as_tuple(out: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


class Runner(ABC):
    """A loaded graph: ``runner(*inputs) -> tuple of output tensors`` on the graph's device.

    Attributes:
        backend: the backend's name.
        host_arrays: it reads its inputs as contiguous CPU arrays (callers that pass the same tensor
            every call make it contiguous once).
    """

    backend = ""
    host_arrays = False

    @abstractmethod
    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the graph on ``inputs`` (the order of its :class:`GraphSpec` inputs)."""
