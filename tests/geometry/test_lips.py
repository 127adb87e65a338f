"""A smiling photo closes its lips: open-ratio lip retargeting and the mouth layer's closed seam."""
from __future__ import annotations

import numpy as np
import pytest

from avatar_engine.face import topology
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.geometry.mouth import MOUTH, MouthLayer, MouthLayerConfig, retarget_lips
from avatar_engine.geometry.openings import Opening, opening_frame, patch_around
from avatar_engine.geometry.retarget import MotionRetargeter, RetargetConfig
from avatar_engine.geometry.teeth import is_teeth
from avatar_engine.renderers import create_renderer

OUTER = Opening(tuple(int(i) for i in topology.OUTER_LIPS_LOOP), 61, 291)


@pytest.fixture(scope="module")
def smiling(data_dir):
    """A val photo that smiles with its upper teeth showing."""
    return prepare_source(data_dir / "images/val/P144/I025.jpg", SourceConfig(size=256))


def _with_gap(points: np.ndarray, ratio: float) -> np.ndarray:
    """``points`` with the inner-lip gap times ``ratio``: both lips (inner and outer loops) moved towards
    (or away from) the mouth's midline by half the change each."""
    out = np.asarray(points, np.float32).copy()
    frame = opening_frame(points, MOUTH)
    u = np.linspace(-0.5, 0.5, 33)
    change = (1.0 - ratio) * (frame.lower(u) - frame.upper(u))
    mid = 0.5 * (frame.upper(u) + frame.lower(u))
    for opening in (MOUTH, OUTER):
        for chain in opening.chains():
            idx = [i for i in chain[1:-1] if i not in (MOUTH.left, MOUTH.right)]
            cu, cv = frame.to_frame(out[idx, :2])
            side = np.where(cv < np.interp(cu, u, mid), 1.0, -1.0)
            out[idx, :2] = frame.to_pixels(cu, cv + 0.5 * side * np.interp(cu, u, change, left=0.0, right=0.0))
    return out


def _gap(points: np.ndarray) -> float:
    return opening_frame(points, MOUTH).gap()


def test_a_driver_who_closes_the_lips_closes_the_smiling_photos(smiling):
    source = smiling.landmarks
    neutral = _with_gap(source, 0.5)  # the driver's neutral: lips apart, half as far as the photo's
    assert _gap(source) > 0.1
    for ratio in (0.0, 0.5):
        driver = _with_gap(source, 0.5 * ratio)
        additive = source + (driver - neutral)
        out = retarget_lips(additive, source, neutral, driver)
        assert _gap(additive) == pytest.approx(_gap(source) - (1.0 - ratio) * _gap(neutral), abs=0.01)
        assert _gap(out) == pytest.approx(ratio * _gap(source), abs=0.01)  # the photo's gap times the ratio
        corners = [MOUTH.left, MOUTH.right, OUTER.left, OUTER.right]
        np.testing.assert_array_equal(out[corners], additive[corners])
        rest = np.setdiff1d(np.arange(topology.NUM_LANDMARKS), topology.LIPS_IDX)
        np.testing.assert_array_equal(out[rest], additive[rest])
        # the lips keep their thickness: inner and outer upper lip move together
        moved = out - additive
        assert abs(moved[13, 1] - moved[0, 1]) < 0.3 and abs(moved[14, 1] - moved[17, 1]) < 0.3


def test_opening_wider_a_closed_neutral_or_a_less_open_photo_stay_additive(smiling):
    source = smiling.landmarks
    narrow = _with_gap(source, 0.2)  # a photo less open than the driver's neutral: never opened further
    half = _with_gap(source, 0.5)
    additive = narrow + (half - source)
    np.testing.assert_array_equal(retarget_lips(additive, narrow, source, half), additive)
    neutral = _with_gap(source, 0.5)
    wider = _with_gap(source, 0.8)
    additive = source + (wider - neutral)
    np.testing.assert_array_equal(retarget_lips(additive, source, neutral, wider), additive)
    closed = _with_gap(source, 0.0)
    np.testing.assert_array_equal(retarget_lips(source, source, closed, closed), source)


def test_the_retargeter_closes_a_smile(smiling):
    source = smiling.landmarks
    neutral, driver = _with_gap(source, 0.5), _with_gap(source, 0.0)
    gaps = {}
    for on in (True, False):
        retarget = MotionRetargeter(source, RetargetConfig(pose=False, translation=False, crop_margin=None,
                                                           lid_ratio=False, lip_ratio=on))
        retarget.set_neutral(neutral)
        gaps[on] = _gap(retarget(driver))
    assert gaps[True] < 0.01 < 0.05 < gaps[False]


def test_closing_lips_are_drawn_without_the_squeezed_teeth(smiling):
    """The smiling photo rendered with its lips nearly closed (1.5 px apart): the warp squeezes the teeth
    into a bright line between the lips; with the closed seam the pixels there are mostly lip-coloured."""
    closing = _with_gap(smiling.landmarks, 0.2)
    renderer = create_renderer("mesh")
    renderer.layers = None
    warped = renderer.render(smiling, closing)
    frame = opening_frame(closing, MOUTH)
    assert 1.0 < frame.gap() * frame.width < 2.0
    patch = patch_around(closing[list(MOUTH.loop), :2], 1.0, warped.shape[:2])
    u, v = frame.to_frame(patch.xy)
    margin = 1.5 / frame.width
    between = (np.abs(u) < 0.3) & (v > frame.upper(u) - margin) & (v < frame.lower(u) + margin)
    teeth = {}
    for name, config in (("seam", MouthLayerConfig()), ("off", MouthLayerConfig(closed_gap_px=0.0))):
        out = MouthLayer(smiling.crop_image, smiling.landmarks, config).apply(warped, closing)
        teeth[name] = float(is_teeth(out[patch.y0:patch.y1, patch.x0:patch.x1])[between].mean())
    assert teeth["off"] > 0.08 and teeth["seam"] < 0.5 * teeth["off"], teeth
    # a mouth that stays as open as the photo's is not touched
    layer = MouthLayer(smiling.crop_image, smiling.landmarks)
    at_rest = renderer.render(smiling, smiling.landmarks)
    np.testing.assert_array_equal(layer.apply(at_rest, smiling.landmarks), at_rest)
