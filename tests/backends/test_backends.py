"""Inference backends without a model: names, fallbacks with their reason, export rewrites, ``auto``'s cache."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from avatar_engine.backends import (BACKEND_CHOICES, BACKENDS, BackendOptions, GraphSpec, accelerate,
                                    available_backends)
from avatar_engine.backends.decompositions import upsample_as_conv
from avatar_engine.cli.args import BACKEND_CHOICES as CLI_CHOICES


class _Net(torch.nn.Module):
    """conv -> bilinear x2 -> conv: small, with an upsample the export rewrites."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.interpolate(torch.relu(self.a(x)), scale_factor=2.0, mode="bilinear", align_corners=False))


def _spec() -> GraphSpec:
    return GraphSpec("tiny", _Net().eval(), (torch.rand(1, 3, 16, 16),), ("x",), ("y",))


def test_cli_offers_exactly_the_backends():
    assert CLI_CHOICES == BACKEND_CHOICES == ("auto", *BACKENDS)


def test_tensorrt_unavailable_on_cpu_says_why():
    status = available_backends("cpu")
    assert set(status) == set(BACKENDS)
    assert status["eager"] == "" and "CUDA" in status["tensorrt"]
    assert "CPU" in available_backends("meta")["openvino"]


def test_unavailable_backend_falls_back_with_one_warning_line_and_computes_the_same(caplog):
    spec = _spec()
    with torch.no_grad():
        expected = spec.module(*spec.example_inputs)
    with caplog.at_level(logging.WARNING, logger="avatar_engine"):
        runner, choice = accelerate(spec, "tensorrt")
    assert choice.requested == "tensorrt" and choice.used == "eager" and "CUDA" in choice.reason
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and "tensorrt" in lines[0] and choice.reason in lines[0]
    torch.testing.assert_close(runner(*spec.example_inputs)[0], expected, rtol=0, atol=0)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        accelerate(_spec(), "onnx")


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("k", [2, 4])
def test_upsample_rewrite_equals_interpolate(mode, k):
    x = torch.rand(2, 5, 13, 17) * 4 - 2
    expected = F.interpolate(x, scale_factor=k, mode=mode, align_corners=False)
    torch.testing.assert_close(upsample_as_conv(x, k, mode), expected, rtol=0, atol=1e-5)


def test_auto_times_what_loads_keeps_the_fastest_and_remembers_it(tmp_path, caplog):
    options = BackendOptions(cache_dir=tmp_path, measure_runs=3)
    spec = _spec()
    runner, choice = accelerate(spec, "auto", options)
    status = available_backends("cpu")
    timed = {b for b in BACKENDS if not status[b] and b != "compile"}
    assert set(choice.ms) - {"openvino bf16"} == timed
    fastest = min(choice.ms, key=choice.ms.get)
    assert choice.used == fastest.split()[0] == runner.backend
    assert choice.precision == ("bf16" if fastest == "openvino bf16" else "fp32")
    remembered = json.loads((tmp_path / "auto.json").read_text())
    assert [v["used"] for v in remembered.values()] == [choice.used]
    exported = sorted(tmp_path.glob("tiny-*.onnx"))
    if timed & {"onnxruntime", "openvino"}:
        assert len(exported) == 1  # one export, shared by both ONNX backends
        mtime = exported[0].stat().st_mtime_ns
    caplog.clear()  # what the first call logged (captured when another test left the logger at INFO)
    with caplog.at_level(logging.INFO, logger="avatar_engine"):
        again, choice2 = accelerate(spec, "auto", options)
    assert choice2.used == choice.used and choice2.ms == choice.ms  # from the cache: nothing re-timed
    assert "exporting" not in caplog.text and "backend auto for" not in caplog.text
    if exported:
        assert exported[0].stat().st_mtime_ns == mtime
    x = torch.rand(1, 3, 16, 16)
    tol = 1e-4 if choice.precision == "fp32" else 4 / 255  # bf16: twice the auto tolerance (2 levels)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], spec.module(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("tolerance", [-1.0, 255.0])
def test_auto_takes_bf16_only_within_the_tolerance_and_remembers_the_precision(tmp_path, caplog, monkeypatch, tolerance):
    import avatar_engine.backends as backends

    pytest.importorskip("openvino")
    monkeypatch.setattr(backends, "AUTO_TOLERANCE_LEVELS", tolerance)
    options = BackendOptions(cache_dir=tmp_path, measure_runs=3)
    spec = _spec()
    with caplog.at_level(logging.INFO, logger="avatar_engine"):
        runner, choice = accelerate(spec, "auto", options)
    if tolerance < 0:  # every difference is too large: bf16 is measured against eager, then left out
        assert "openvino bf16" not in choice.ms and "openvino bf16 not used" in caplog.text
        assert choice.precision == "fp32"
        return
    assert "openvino bf16" in choice.ms
    # pretend bf16 measured fastest: the cached choice reloads it in bf16
    remembered = json.loads((tmp_path / "auto.json").read_text())
    (key,) = remembered
    remembered[key].update(used="openvino", precision="bf16")
    (tmp_path / "auto.json").write_text(json.dumps(remembered))
    again, choice2 = accelerate(spec, "auto", options)
    assert (choice2.used, choice2.precision) == ("openvino", "bf16")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], spec.module(x), rtol=0.05, atol=0.05)


def test_a_changed_model_exports_again(tmp_path):
    pytest.importorskip("onnxruntime")
    options = BackendOptions(cache_dir=tmp_path)
    spec = _spec()
    accelerate(spec, "onnxruntime", options)
    with torch.no_grad():
        spec.module.b.bias.add_(1.0)
    runner, choice = accelerate(spec, "onnxruntime", options)
    assert choice.used == "onnxruntime" and len(list(tmp_path.glob("tiny-*.onnx"))) == 2
    with torch.no_grad():
        torch.testing.assert_close(runner(*spec.example_inputs)[0], spec.module(*spec.example_inputs),
                                   rtol=1e-4, atol=1e-4)


def test_exported_graph_has_the_named_inputs_and_outputs_of_fixed_shape(tmp_path):
    onnx = pytest.importorskip("onnx")
    from avatar_engine.backends.onnx_runners import export_onnx

    spec = GraphSpec("tiny", _Net().eval(), (torch.rand(1, 3, 16, 16),), ("x",), ("y",))
    model = onnx.load(str(export_onnx(spec, tmp_path)))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"x": [1, 3, 16, 16], "y": [1, 3, 32, 32]}
    assert "Resize" not in {n.op_type for n in model.graph.node}  # the upsample became a convolution


def test_precision_defaults_fp16_on_cuda_fp32_on_the_cpu():
    assert BackendOptions().resolved_precision(torch.device("cuda")) == "fp16"
    assert BackendOptions().resolved_precision(torch.device("cpu")) == "fp32"
    assert BackendOptions(precision="bf16").resolved_precision(torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        BackendOptions(precision="int8").resolved_precision(torch.device("cpu"))
