"""Backends that run an exported ONNX graph: ``onnxruntime`` and ``openvino``.

The graph is exported once per model and input shapes (:func:`export_onnx`, ``torch.export`` then the
ONNX exporter) into the cache folder, under a name that hashes everything the graph depends on (the
weights, the shapes, the source files of the modules, the torch version): a changed model exports
again, an unchanged one loads in well under a second.

Both run on the CPU with ``BackendOptions.threads`` threads (ONNX Runtime's threads do not spin
between calls, so an idle engine costs no CPU). ONNX Runtime also runs on CUDA with the CUDA build
(``onnxruntime-gpu``: its CUDA execution provider); OpenVINO runs on CPUs (Intel and AMD alike).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from avatar_engine.backends.base import BackendOptions, BackendUnavailable, GraphSpec, Runner
from avatar_engine.backends.decompositions import EXPORT_DECOMPOSITIONS

__all__ = ["graph_key", "export_onnx", "load_onnxruntime", "load_openvino", "onnxruntime_missing",
           "openvino_missing", "export_missing"]

log = logging.getLogger("avatar_engine")

_FORMAT = "avatar-engine-graph-v3"


def _source_files(module: torch.nn.Module) -> list[str]:
    """Source files of the module's classes and of the avatar_engine functions their modules use."""
    files: set[str] = set()
    for m in module.modules():
        mod = sys.modules.get(type(m).__module__)
        if mod is None or not mod.__name__.startswith("avatar_engine"):
            continue
        files.add(inspect.getsourcefile(mod) or "")
        for value in vars(mod).values():
            owner = inspect.getmodule(value)
            if owner is not None and owner.__name__.startswith("avatar_engine") and hasattr(owner, "__file__"):
                files.add(owner.__file__ or "")
    return sorted(f for f in files if f)


def graph_key(spec: GraphSpec) -> str:
    """A hash of everything the exported graph depends on (16 hex digits)."""
    h = hashlib.sha256(f"{_FORMAT}|{spec.name}|torch {torch.__version__}".encode())
    for t in spec.example_inputs:
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
    for name, t in [*spec.module.named_parameters(), *spec.module.named_buffers()]:
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    for f in [*_source_files(spec.module), __file__, str(Path(__file__).with_name("decompositions.py"))]:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def export_missing() -> str:
    """'' when this machine can export ONNX graphs, else why not."""
    for pkg, pip in (("onnx", "onnx"), ("onnxscript", "onnxscript")):
        if importlib.util.find_spec(pkg) is None:
            return f"exporting the graph needs {pip} (a dependency: pip install -e .)"
    return ""


def export_onnx(spec: GraphSpec, cache_dir: Path) -> Path:
    """The ONNX file of ``spec`` (exported now unless the cache has it). Raises BackendUnavailable."""
    path = Path(cache_dir) / f"{spec.name}-{graph_key(spec)}.onnx"
    if path.is_file():
        return path
    why = export_missing()
    if why:
        raise BackendUnavailable(why)
    log.info("exporting the %s graph to ONNX: once per model and machine, about half a minute (%s)", spec.name, path)
    inputs = tuple(t.detach().clone() for t in spec.example_inputs)  # not inference tensors
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(spec.module, inputs)
            program = program.run_decompositions(EXPORT_DECOMPOSITIONS)
            # no onnxscript optimizer pass: it adds ~40 % to the export time (20 s instead of 14 s for the
            # neural graph here), and OpenVINO and ONNX Runtime optimise the graph themselves when they
            # load it (the same ms per frame measured with and without it)
            onnx_program = torch.onnx.export(program, inputs, dynamo=True, input_names=list(spec.input_names),
                                             output_names=list(spec.output_names), optimize=False, verbose=False)
            onnx_program.save(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - an exporter failure means: this backend cannot run the graph
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendUnavailable(f"ONNX export failed: {type(exc).__name__}: {first}") from exc
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return path


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def onnxruntime_missing(device: torch.device) -> str:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install -e '.[onnxruntime]')"
    if device.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDA provider (install onnxruntime-gpu for CUDA)"
    elif device.type != "cpu":
        return f"onnxruntime runs on cpu or cuda here, not {device.type}"
    return ""


def openvino_missing(device: torch.device) -> str:
    if device.type != "cpu":
        return f"OpenVINO runs on the CPU here (the model runs on {device.type})"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (a dependency: pip install -e .)"
    return ""


class _OrtRunner(Runner):
    backend = "onnxruntime"
    host_arrays = True

    def __init__(self, path: Path, spec: GraphSpec, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if spec.device.type == "cuda"
                     else ["CPUExecutionProvider"])
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.device = spec.device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.session.run(None, {n: _numpy(t) for n, t in zip(self.inputs, inputs)})
        return tuple(torch.from_numpy(o).to(self.device) for o in outs)


class _OpenVinoRunner(Runner):
    backend = "openvino"
    host_arrays = True

    def __init__(self, path: Path, spec: GraphSpec, threads: int, cache_dir: Path, precision: str):
        import openvino as ov

        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir / "openvino")})
        self.model = core.compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
        self.request = self.model.create_infer_request()
        self.inputs = [p.get_any_name() for p in self.model.inputs]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.request.infer({n: _numpy(t) for n, t in zip(self.inputs, inputs)}, share_inputs=True)
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy())
                     for i in range(len(self.model.outputs)))


def load_onnxruntime(spec: GraphSpec, options: BackendOptions) -> Runner:
    why = onnxruntime_missing(spec.device)
    if why:
        raise BackendUnavailable(why)
    return _OrtRunner(export_onnx(spec, options.resolved_cache_dir()), spec, options.resolved_threads())


def load_openvino(spec: GraphSpec, options: BackendOptions) -> Runner:
    why = openvino_missing(spec.device)
    if why:
        raise BackendUnavailable(why)
    cache = options.resolved_cache_dir()
    return _OpenVinoRunner(export_onnx(spec, cache), spec, options.resolved_threads(), cache,
                           options.resolved_precision(spec.device))
