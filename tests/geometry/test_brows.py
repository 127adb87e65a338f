"""A raised brow carries its hair: brow-band weights from the photo, the carry, and the warped pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from avatar_engine.face.source import prepare_source
from avatar_engine.geometry.brows import BROW_SIDES, brow_band, carry_under_brow
from avatar_engine.geometry.mesh_warp import MeshWarp
from avatar_engine.geometry.retarget import MotionRetargeter, RetargetConfig
from avatar_engine.io.image import image_to_tensor, tensor_to_image

SKIN, HAIR = 200, 40
SCALE = 3  # the photo's crop at 768: the rings under the brow lie 2-4 px apart at 256


@pytest.fixture(scope="module")
def points(data_dir):
    """(478, 3) landmarks of a val photo, in a 768 crop."""
    src = prepare_source(data_dir / "images/val/P128/I002.png")
    return src.landmarks * SCALE


def _painted(points: np.ndarray, reach: float = 0.65) -> np.ndarray:
    """A skin-coloured 768 crop whose brows are dark from their upper edge down to ``reach`` of the way
    from the upper to the lower of the two rings below them (their 5 points under the brow; the 6th
    of each ring is near the eye's inner corner)."""
    image = np.full((768, 768, 3), SKIN, np.uint8)
    upper_brows = ((70, 63, 105, 66, 107), (300, 293, 334, 296, 336))
    for (lower, ring, _), upper in zip(BROW_SIDES, upper_brows):
        half = len(ring) // 2
        edge = (1.0 - reach) * points[list(ring[:5]), :2] + reach * points[list(ring[half:half + 5]), :2]
        inward = float(np.sign(points[lower[-1], 0] - points[lower[0], 0]))  # towards the nose
        inner_end = points[[lower[-1]], :2] + np.array([[4.0 * inward, 4.0]], np.float32)
        outer_end = points[[lower[0]], :2] + np.array([[-4.0 * inward, 4.0]], np.float32)
        polygon = np.concatenate([points[list(upper), :2], inner_end, edge[::-1], outer_end])
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], (HAIR, HAIR, HAIR))
    return image


def _raise_brows(points: np.ndarray, pixels: float) -> np.ndarray:
    out = points.copy()
    brows = [i for side in ((46, 53, 52, 65, 55, 70, 63, 105, 66, 107), (276, 283, 282, 295, 285, 300, 293, 334, 296, 336))
             for i in side]
    out[brows, 1] -= pixels
    return out


def test_the_rings_carry_as_far_as_the_band_above_them_is_hair(points):
    deep, shallow = brow_band(_painted(points, 0.65), points), brow_band(_painted(points, 0.2), points)
    for (_, ring, _), deep_side, shallow_side in zip(BROW_SIDES, deep.sides, shallow.sides):
        half = len(ring) // 2
        assert deep_side.weights[:5].min() > 0.9, deep.weights  # brow -> upper ring: hair
        assert deep_side.weights[half:half + 5].min() > 0.9, deep.weights  # upper -> lower ring: mostly hair
        assert shallow_side.weights[:5].min() > 0.9, shallow.weights
        assert shallow_side.weights[half:half + 5].mean() < 0.3, shallow.weights  # upper -> lower ring: skin
    flat = brow_band(np.full((768, 768, 3), SKIN, np.uint8), points)
    assert not flat.weights.any()  # no edge between hair and skin: nothing carries


def test_a_raised_brow_lifts_the_hair_ring_by_the_brows_rise(points):
    band = brow_band(_painted(points), points)
    raised = _raise_brows(points, 6.0)
    out = carry_under_brow(raised, points, band)
    lift = points[band.under, 1] - out[band.under, 1]  # pixels up
    carried = band.weights > 0.9
    np.testing.assert_allclose(lift[carried], 6.0 * band.weights[carried], atol=0.6)  # up-vector tilt
    assert np.abs(lift[band.weights < 0.1]).max() < 0.6
    untouched = np.setdiff1d(np.arange(478), band.under)
    np.testing.assert_array_equal(out[untouched], raised[untouched])
    lowered = _raise_brows(points, -6.0)
    np.testing.assert_array_equal(carry_under_brow(lowered, points, band), lowered)  # a frown is left alone
    np.testing.assert_array_equal(carry_under_brow(raised, points, band, weight=0.0), raised)


def test_a_raised_brow_moves_its_hair_instead_of_stretching_it(points):
    """Warped with brows raised by 12 px, the dark brow is about as thick as in the photo when the
    rings are carried; without the photo (the old retargeting) the hair stretches by most of the rise."""
    image = _painted(points)
    config = RetargetConfig(pose=False, translation=False, crop_margin=None, lid_ratio=False, brow_gain=1.0,
                            brow_limit=None)
    warp = MeshWarp(points, 768)
    source = image_to_tensor(image)
    columns = [int(round(points[i, 0])) for i in (52, 65, 282, 295)]  # mid-brow columns

    def thickness(picture: np.ndarray) -> np.ndarray:
        return (picture[:, columns].mean(axis=2) < 0.5 * (SKIN + HAIR)).sum(axis=0)

    growth = {}
    for name, photo in (("carried", image), ("stretched", None)):
        retarget = MotionRetargeter(points, config, source_image=photo)
        retarget.set_neutral(points)
        target = retarget(_raise_brows(points, 12.0))
        out = tensor_to_image(warp(source, torch.from_numpy(target)[None]))
        growth[name] = thickness(out) - thickness(image)
    assert growth["stretched"].min() >= 8, growth
    assert growth["carried"].max() <= 0.5 * growth["stretched"].min(), growth
