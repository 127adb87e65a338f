"""A smiling photo closes its lips: open-ratio lip retargeting and the mouth layer's closed seam."""
from __future__ import annotations

import cv2
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
    """``points`` with the inner-lip gap times ``ratio``: every point of both lips (inside the outer lip
    loop, all four lip rings) moved towards (or away from) the mouth's midline by half the change each."""
    out = np.asarray(points, np.float32).copy()
    frame = opening_frame(points, MOUTH)
    u = np.linspace(-0.5, 0.5, 33)
    change = (1.0 - ratio) * (frame.lower(u) - frame.upper(u))
    mid = 0.5 * (frame.upper(u) + frame.lower(u))
    outline = out[list(OUTER.loop), :2].reshape(-1, 1, 2)
    idx = [i for i in range(topology.NUM_LANDMARKS) if i not in (MOUTH.left, MOUTH.right, OUTER.left, OUTER.right)
           and cv2.pointPolygonTest(outline, tuple(float(c) for c in out[i, :2]), False) >= 0]
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
        _assert_only_the_mouth_moved(out, additive)
        # the lips keep their thickness: inner and outer upper lip move together
        moved = out - additive
        assert abs(moved[13, 1] - moved[0, 1]) < 0.3 and abs(moved[14, 1] - moved[17, 1]) < 0.3


# mediapipe's lip rings along the midline, top to bottom: outer upper lip (0), two rings inside the upper
# lip, inner upper lip (13); inner lower lip (14), two rings, outer lower lip (17)
_MIDLINE = (0, 11, 12, 13, 14, 15, 16, 17)


def _assert_only_the_mouth_moved(out: np.ndarray, before: np.ndarray) -> None:
    """Nothing but the lips and the skin next to them moved, the mouth corners not at all, and the lip
    rings kept their order top to bottom (the outer contour did not fold over the rings inside it)."""
    frame = opening_frame(before, MOUTH)
    moved = np.linalg.norm(out[:, :2] - before[:, :2], axis=1) > 1e-4
    corners = [MOUTH.left, MOUTH.right, OUTER.left, OUTER.right]
    assert not moved[corners].any()
    far = np.linalg.norm(before[:, :2] - frame.origin, axis=1) > 0.9 * frame.width
    assert not (moved & far).any(), np.nonzero(moved & far)
    assert moved[list(topology.LIPS_IDX)].sum() > 20
    _, v = frame.to_frame(out[list(_MIDLINE), :2])
    assert np.all(np.diff(v) >= -1e-3), v


def test_lip_zero_opens_a_smiling_photo_from_closed(smiling):
    """With ``zero`` the avatar's lip gap is the driver's (in mouth widths), however open the photo:
    closed at the driver's closed-mouth neutral, as open as the driver's when talking."""
    source = smiling.landmarks
    closed = _with_gap(source, 0.0)  # the driver: the same mouth shape, lips closed at neutral
    assert _gap(source) > 0.1 and _gap(closed) < 0.005
    for ratio in (0.0, 0.3, 0.6):
        driver = _with_gap(source, ratio)
        additive = source + (driver - closed)
        assert _gap(additive) == pytest.approx((1.0 + ratio) * _gap(source), abs=0.01)
        out = retarget_lips(additive, source, closed, driver, zero=True)
        assert _gap(out) == pytest.approx(_gap(driver), abs=0.01)
        _assert_only_the_mouth_moved(out, additive)
        # the ratio rule alone keeps the photo's opening at a closed neutral
        np.testing.assert_array_equal(retarget_lips(additive, source, closed, driver), additive)
    # a photo with closed lips, or one hardly more open than the neutral: exactly the additive result
    talking = _with_gap(source, 0.5)
    for photo, neutral in ((closed, closed), (source, _with_gap(source, 0.8))):
        additive = photo + (talking - neutral)
        np.testing.assert_array_equal(retarget_lips(additive, photo, neutral, talking, ratio=False, zero=True),
                                      additive)
    assert _gap(source) - _gap(_with_gap(source, 0.8)) < 0.05
    # a shouting photo (jaw dropped, gap 0.7 mouth widths) keeps its open mouth: closing only the lips
    # would leave the dropped chin under them
    shout = _with_gap(source, 0.7 / _gap(source))
    additive = shout + (talking - closed)
    np.testing.assert_array_equal(retarget_lips(additive, shout, closed, talking, zero=True), additive)


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


def test_lip_zero_and_the_ratio_rule_do_not_close_twice(smiling):
    """A photo more open than the driver's (open) neutral, the driver closing half-way: the zero takes the
    photo to the driver's gap, and the ratio rule on top of it must not close it further."""
    source = smiling.landmarks
    neutral = _with_gap(source, 0.3)  # the driver talks through the neutral window
    driver = _with_gap(source, 0.15)
    additive = source + (driver - neutral)
    both = retarget_lips(additive, source, neutral, driver, ratio=True, zero=True)
    assert _gap(both) == pytest.approx(_gap(driver), abs=0.01)
    assert _gap(retarget_lips(additive, source, neutral, driver)) > _gap(driver) + 0.03  # the ratio rule alone


def test_the_retargeter_closes_a_smile(smiling):
    source = smiling.landmarks
    neutral, driver = _with_gap(source, 0.5), _with_gap(source, 0.0)
    gaps = {}
    for on in (True, False):
        retarget = MotionRetargeter(source, RetargetConfig(pose=False, translation=False, crop_margin=None,
                                                           lid_ratio=False, lip_ratio=on, lip_zero=False))
        retarget.set_neutral(neutral)
        gaps[on] = _gap(retarget(driver))
    assert gaps[True] < 0.01 < 0.05 < gaps[False]


def test_the_retargeter_closes_a_smile_at_a_closed_neutral(smiling):
    """A driver at rest with closed lips: the default (``lip_zero``) closes the smiling photo's lips, and
    ``lip_zero=False`` keeps the photo's opening."""
    source = smiling.landmarks
    closed = _with_gap(source, 0.0)
    gaps = {}
    for zero in (True, False):
        retarget = MotionRetargeter(source, RetargetConfig(pose=False, translation=False, crop_margin=None,
                                                           pose_tolerance_deg=None, lid_ratio=False,
                                                           lip_zero=zero))
        retarget.set_neutral(closed)
        gaps[zero] = (_gap(retarget(closed)), _gap(retarget(_with_gap(source, 0.5))))
    assert RetargetConfig().lip_zero
    assert gaps[True][0] < 0.01 and gaps[True][1] == pytest.approx(0.5 * _gap(source), abs=0.01)
    assert gaps[False][0] == pytest.approx(_gap(source), abs=0.01)
    assert gaps[False][1] == pytest.approx(1.5 * _gap(source), abs=0.01)
    # --expression-scale 0 (no expressions) leaves the photo's mouth as it is, 0.5 closes it half-way
    for scale, expected in ((0.0, 1.0), (0.5, 0.5)):
        retarget = MotionRetargeter(source, RetargetConfig(pose=False, translation=False, crop_margin=None,
                                                           pose_tolerance_deg=None, lid_ratio=False,
                                                           expression_scale=scale))
        retarget.set_neutral(closed)
        assert _gap(retarget(closed)) == pytest.approx(expected * _gap(source), abs=0.01)


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
    margin = 0.5 / frame.width
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
