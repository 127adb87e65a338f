"""Inference backends: one per-frame graph (:mod:`avatar_engine.models.frame_graph`) run by the fastest engine here.

``accelerate(spec, backend)`` loads a :class:`GraphSpec` with a backend and returns
``(runner, choice)``; ``runner(*inputs)`` returns the graph's outputs as a tuple of tensors. Backends:

* ``eager``: PyTorch as written (the reference every other backend is tested against);
* ``compile``: ``torch.compile`` (inductor; a C++ compiler on the CPU, triton and CUDA graphs on CUDA);
* ``onnxruntime``, ``openvino``: the graph exported to ONNX once (cached), run by ONNX Runtime
  (``pip install -e '.[onnxruntime]'``) or OpenVINO (a dependency: the fastest on the CPU; CPU only);
* ``tensorrt``: torch-tensorrt (``pip install -e '.[trt]'``, CUDA only).

``auto`` times every backend that loads (except ``compile`` on the CPU: compiling these graphs takes
20 s to minutes on a 2-core CPU in every new process, while OpenVINO loads in a second at a similar
speed, see ``benchmarks/bench_backends.py``) on the graph's example inputs, once per graph, machine and thread count, keeps the fastest, and
remembers the choice in the cache folder (``auto.json``), so later starts load only the winner.
On the CPU it also times OpenVINO in bf16 (fast on CPUs with AVX512-BF16 or AMX) and accepts it only
when its output on the example inputs stays within a quarter (:data:`AUTO_EXAMPLE_MARGIN`) of
:data:`AUTO_TOLERANCE_LEVELS` from eager's, the bound the fp32 ONNX backends are held to on real
streams (with the shipped weights this admits the SR step: 0.1 level on its example, 2 at most on
real frames, and keeps the neural renderer in fp32: 1.3 on its example, 4 on real frames).

A backend that cannot run (not installed, wrong device, export or compile failure) falls back to
``eager`` with one warning line naming the reason; ``auto`` skips it silently (it reports what it
timed in ``choice.ms``). ``available_backends(device)`` says which backends can load here
(``avatar-engine doctor`` prints it with measured times).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from avatar_engine.backends.base import (BACKEND_CHOICES, BACKENDS, BackendChoice, BackendOptions,
                                         BackendUnavailable, GraphSpec, Runner, default_cache_dir)
from avatar_engine.backends.onnx_runners import (export_missing, graph_key, load_onnxruntime, load_openvino,
                                                 onnxruntime_missing, openvino_missing)
from avatar_engine.backends.torch_runners import (compile_missing, load_compile, load_eager, load_tensorrt,
                                                  tensorrt_missing)

__all__ = ["BACKENDS", "BACKEND_CHOICES", "BackendChoice", "BackendOptions", "GraphSpec", "Runner",
           "available_backends", "accelerate", "load_backend", "time_runner", "default_cache_dir",
           "check_backend", "AUTO_TOLERANCE_LEVELS", "AUTO_EXAMPLE_MARGIN"]

log = logging.getLogger("avatar_engine")

AUTO_TOLERANCE_LEVELS = 2.0
"""Largest difference to eager (levels of 255 on the first output, an image in ``[0, 1]``) of a
reduced-precision candidate that ``auto`` may pick; the equality tests hold every backend to it."""

AUTO_EXAMPLE_MARGIN = 0.25
"""``auto`` checks a reduced-precision candidate on the graph's example inputs only; on real streams
the largest difference was 3x (neural renderer: 1.3 -> 4 levels) to 20x (SR step: 0.1 -> 2) the
example's, so the example must stay within this fraction of :data:`AUTO_TOLERANCE_LEVELS`."""

_LOADERS: dict[str, Callable[[GraphSpec, BackendOptions], Runner]] = {
    "eager": load_eager, "compile": load_compile, "onnxruntime": load_onnxruntime,
    "openvino": load_openvino, "tensorrt": load_tensorrt}


def check_backend(name: str) -> None:
    """Raise ValueError for a name that is not in :data:`BACKEND_CHOICES`."""
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")


def available_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """Map of backend name -> '' if it can load on ``device``, else the reason it cannot."""
    dev = torch.device(device)
    onnx = export_missing()
    return {"eager": "", "compile": compile_missing(dev),
            "onnxruntime": onnxruntime_missing(dev) or onnx, "openvino": openvino_missing(dev) or onnx,
            "tensorrt": tensorrt_missing(dev)}


def load_backend(spec: GraphSpec, name: str, options: BackendOptions | None = None) -> Runner:
    """Load ``spec`` with backend ``name`` and run it once on the example inputs (so that a failure
    shows here, not on the first frame). Raises :class:`BackendUnavailable` with the reason."""
    options = options or BackendOptions()
    spec.module.eval()
    try:
        runner = _LOADERS[name](spec, options)
        runner(*spec.example_inputs)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader or compiler failure means: this backend cannot run it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendUnavailable(f"{name} failed: {type(exc).__name__}: {first}") from exc
    return runner


def time_runner(runner: Runner, inputs: tuple[torch.Tensor, ...], runs: int = 15, warmup: int = 3) -> float:
    """Median milliseconds per call of ``runner(*inputs)``."""
    for _ in range(warmup):
        runner(*inputs)
    times = []
    for _ in range(runs):
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner(*inputs)
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def _auto_candidates(device: torch.device, options: BackendOptions) -> list[tuple[str, str, BackendOptions]]:
    """What ``auto`` times, as ``(label, backend, options)``: every backend but ``compile`` on the CPU,
    and on the CPU OpenVINO in bf16 too (see the module docstring)."""
    out = [(b, b, options) for b in BACKENDS if not (b == "compile" and device.type == "cpu")]
    if device.type == "cpu" and options.resolved_precision(device) == "fp32":
        out.append(("openvino bf16", "openvino", dataclasses.replace(options, precision="bf16")))
    return out


def _max_diff_levels(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    """Largest difference of two runs' first outputs (images in ``[0, 1]``), in levels of 255."""
    return float((a[0].float().cpu().clamp(0, 1) - b[0].float().cpu().clamp(0, 1)).abs().max()) * 255.0


def _machine_key(spec: GraphSpec, options: BackendOptions) -> str:
    dev = spec.device
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return (f"{graph_key(spec)}|{dev.type}|{where}|{os.cpu_count()} cpus|{options.resolved_threads()} threads|"
            f"{options.resolved_precision(dev)}|auto-v2")  # v2: reduced-precision candidates (older entries re-measure)


def _read_choices(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _auto(spec: GraphSpec, options: BackendOptions) -> tuple[Runner, BackendChoice]:
    path = options.resolved_cache_dir() / "auto.json"
    key = _machine_key(spec, options)
    known = _read_choices(path).get(key)
    if known and known.get("used") in _LOADERS:
        precision = known.get("precision") or options.resolved_precision(spec.device)
        try:
            runner = load_backend(spec, known["used"], dataclasses.replace(options, precision=precision))
            return runner, BackendChoice("auto", known["used"], "", known["ms"], precision)
        except BackendUnavailable as exc:
            log.warning("backend auto: the cached choice %s no longer loads (%s); measuring again", known["used"], exc)
    ms: dict[str, float] = {}
    rejected: dict[str, float] = {}
    best: tuple[float, Runner, str] | None = None
    reference: tuple[torch.Tensor, ...] | None = None
    for label, name, opts in _auto_candidates(spec.device, options):
        try:
            runner = load_backend(spec, name, opts)
        except BackendUnavailable as exc:
            log.debug("backend auto: %s skipped (%s)", label, exc)
            continue
        precision = opts.resolved_precision(spec.device)
        if name == "eager":
            with torch.no_grad():
                reference = runner(*spec.example_inputs)
        elif precision == "bf16" and reference is not None:
            with torch.no_grad():
                diff = _max_diff_levels(runner(*spec.example_inputs), reference)
            if diff > AUTO_TOLERANCE_LEVELS * AUTO_EXAMPLE_MARGIN:
                rejected[label] = round(diff, 2)
                continue
        ms[label] = round(time_runner(runner, spec.example_inputs, options.measure_runs), 2)
        if best is None or ms[label] < best[0]:
            best = (ms[label], runner, precision)
    assert best is not None  # eager always loads
    runner, precision = best[1], best[2]
    log.info("backend auto for %s: %s%s (ms per call: %s)%s", spec.name, runner.backend,
             " bf16" if precision == "bf16" else "", ", ".join(f"{k} {v:.1f}" for k, v in ms.items()),
             "".join(f"; {k} not used: {v:g} levels from eager" for k, v in rejected.items()))
    choices = _read_choices(path)
    choices[key] = {"used": runner.backend, "precision": precision, "ms": ms}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".auto.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("backend auto: could not remember the choice in %s (%s)", path, exc)
    return runner, BackendChoice("auto", runner.backend, "", ms, precision)


def accelerate(spec: GraphSpec, backend: str = "auto",
               options: BackendOptions | None = None) -> tuple[Runner, BackendChoice]:
    """Load ``spec`` with ``backend`` (one of :data:`BACKEND_CHOICES`), falling back to eager.

    Returns:
        ``(runner, choice)``; ``runner(*inputs)`` -> tuple of output tensors.
    Raises:
        ValueError: unknown backend name.
    """
    check_backend(backend)
    options = options or BackendOptions()
    if backend == "auto":
        return _auto(spec, options)
    try:
        return load_backend(spec, backend, options), BackendChoice(backend, backend)
    except BackendUnavailable as exc:
        why = str(exc)
    log.warning("backend %s unavailable for %s (%s); running eagerly", backend, spec.name, why)
    return load_backend(spec, "eager", options), BackendChoice(backend, "eager", why)
