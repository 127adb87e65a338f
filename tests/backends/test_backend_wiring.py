"""``--backend`` reaches the renderer and the SR step from every command that renders."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from avatar_engine.cli.main import build_parser
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.pipeline.super_resolution import SuperResolutionConfig
from avatar_engine.renderers import create_renderer

PHOTO = "images/val/P152/I036.png"


@pytest.mark.parametrize("command", [["render", "--driving", "d.mp4", "--output", "o.mp4", "--source", "s.png"],
                                     ["start", "--source", "s.png"], ["serve", "--source", "s.png"],
                                     ["eval", "--data", "d", "--output", "o.json"]])
def test_every_rendering_command_takes_backend(command):
    parser = build_parser()
    assert parser.parse_args(command).backend == "auto"
    assert parser.parse_args([*command, "--backend", "openvino"]).backend == "openvino"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--backend", "onnx"])


def test_unknown_backend_is_rejected_by_the_library():
    with pytest.raises(ValueError, match="unknown backend"):
        create_renderer("mesh", backend="fast")
    with pytest.raises(ValueError, match="unknown backend"):
        SuperResolutionConfig(backend="fast")


def test_the_sr_step_follows_the_renderers_backend(data_dir, caplog):
    source = prepare_source(data_dir / PHOTO, SourceConfig(size=512))
    renderer = create_renderer("mesh", backend="tensorrt")  # no CUDA here: the SR step falls back, saying why
    with caplog.at_level(logging.WARNING, logger="avatar_engine"), \
            Reenactor(source, renderer, ReenactConfig(super_resolution=SuperResolutionConfig())) as reenactor:
        choice = reenactor.super_resolver.backend_choice
        assert renderer.backend == "tensorrt" and choice.requested == "tensorrt" and choice.used == "eager"
        assert "backend tensorrt unavailable for sr256" in caplog.text and "CUDA" in caplog.text
        frame = np.asarray(source.image)
        assert reenactor.step(frame, 0.0).crop.shape == (512, 512, 3)
