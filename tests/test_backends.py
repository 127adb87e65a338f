"""Inference backends: TensorRT is an optional extra; without it everything falls back cleanly."""
from __future__ import annotations

import logging

import pytest
import torch

from avatar_engine.backends import BACKENDS, accelerate, available_backends


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))


def test_tensorrt_unavailable_on_cpu_says_why():
    status = available_backends("cpu")
    assert set(status) == set(BACKENDS)
    assert status["eager"] == "" and "CUDA" in status["tensorrt"]


def test_tensorrt_request_falls_back_and_computes_the_same(caplog):
    net = _net()
    x = torch.rand(1, 3, 32, 32)
    expected = net(x)
    with caplog.at_level(logging.WARNING, logger="avatar_engine"):
        fn, choice = accelerate(net, "tensorrt", (x,))
    assert choice.requested == "tensorrt" and choice.used == "eager"
    assert "tensorrt" in caplog.text and "CUDA" in choice.reason
    with torch.inference_mode():
        torch.testing.assert_close(fn(x), expected, rtol=1e-4, atol=1e-5)


def test_eager_is_the_module_itself():
    net = _net()
    fn, choice = accelerate(net, "eager")
    assert fn is net and choice.used == "eager" and choice.reason == ""


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        accelerate(_net(), "onnx")
