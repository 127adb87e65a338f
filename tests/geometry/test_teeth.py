"""The driver's teeth cue: measured on a driving frame, followed by the mouth layer and the mouth bank."""
from __future__ import annotations

import numpy as np
import pytest
from test_face_layers import _open_mouth, _render  # noqa: F401  (shared helpers of the layer tests)

from avatar_engine.eval import signals as sig
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.geometry.mouth import MouthLayer
from avatar_engine.geometry.mouth_bank import MouthBank, lip_colour, mouth_shape
from avatar_engine.geometry.teeth import TeethCue, teeth_cue
from avatar_engine.io.video import iter_frames
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor
from avatar_engine.renderers import create_renderer


@pytest.fixture(scope="module")
def source(data_dir):
    """A 256 source with a closed mouth (first frame of C077)."""
    rgb, _ = next(iter(iter_frames(data_dir / "clips/val/P048/C077.mp4", 1)))
    return prepare_source(rgb, SourceConfig(size=256, max_side=max(rgb.shape[:2])))


@pytest.fixture(scope="module")
def opened(source):
    return _open_mouth(source.landmarks, 0.2)


@pytest.fixture(scope="module")
def plain(source, opened):
    """The mesh warp of the opened mouth, without face layers."""
    return _render(source, opened, layers=False)


def _drawn(source, opened, plain, teeth):
    return MouthLayer(source.crop_image, source.landmarks).apply(plain, opened, teeth)


def test_cue_reads_back_the_teeth_the_layer_drew(source, opened, plain):
    """A mouth drawn with a given share of upper / lower teeth is measured back at about those shares."""
    for upper, lower in ((0.3, 0.15), (0.2, 0.0), (0.0, 0.0)):
        cue = teeth_cue(_drawn(source, opened, plain, TeethCue(upper, lower)), opened)
        assert cue is not None
        assert abs(cue.upper - upper) <= 0.1 and abs(cue.lower - lower) <= 0.1, (upper, lower, cue)


def test_closed_mouth_has_no_cue(source):
    assert teeth_cue(source.crop_image, source.landmarks) is None


def test_layer_follows_the_cue(source, opened, plain):
    """No teeth where the driver shows none, teeth where it does (the evaluation's teeth test, on the
    output's own landmarks); without a cue the configured bands are drawn."""
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        for teeth, visible in ((TeethCue(0.0, 0.0), False), (TeethCue(0.3, 0.1), True), (None, True)):
            out = _drawn(source, opened, plain, teeth)
            pts = det.detect(out)
            assert pts is not None and sig.teeth_visible(out, pts) == visible, teeth


def test_bank_prefers_the_exemplar_with_the_drivers_teeth(source, opened, plain):
    """Two exemplars of the same mouth shape, one with teeth and one without: the driver's cue picks."""
    blocks = [_drawn(source, opened, plain, TeethCue(0.3, 0.1)), _drawn(source, opened, plain, TeethCue(0.0, 0.0))]
    pts = np.asarray(opened, np.float32)[:, :2]
    bank = MouthBank(blocks, [pts, pts], np.stack([mouth_shape(pts)] * 2), np.stack([lip_colour(b, pts) for b in blocks]))
    assert bank.teeth[0, 0] > 0.15 and bank.teeth[1].sum() == 0.0
    shape = mouth_shape(pts)
    assert bank.nearest(shape, TeethCue(0.3, 0.1)) == 0
    assert bank.nearest(shape, TeethCue(0.0, 0.0)) == 1


def test_reenactor_hands_the_driving_frames_cue_to_the_renderer(data_dir):
    """The live path measures the cue on each driving frame (C018 shows its teeth throughout) and the
    plan carries it to the drawing; a renderer without layers gets none."""
    frames = [rgb for rgb, _ in iter_frames(data_dir / "clips/val/P004/C018.mp4", 12)]
    source = prepare_source(frames[0], SourceConfig(size=256, max_side=max(frames[0].shape[:2])))
    for layers, expect in ((True, True), (False, False)):
        renderer = create_renderer("mesh")
        if not layers:
            renderer.layers = None
        with Reenactor(source, renderer, ReenactConfig()) as reenactor:
            cues = [reenactor.render(rgb, k / 30.0, draw=False).plan.teeth for k, rgb in enumerate(frames)]
        if expect:
            assert sum(c is not None and c.upper > 0 for c in cues) >= 6
        else:
            assert all(c is None for c in cues)
