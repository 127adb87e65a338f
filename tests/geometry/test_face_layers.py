"""Face layers (eyes that follow the gaze and close, mouth interior with teeth) on a real val source."""
from __future__ import annotations

import numpy as np
import pytest

from avatar_engine.eval import signals as sig
from avatar_engine.face import topology
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector
from avatar_engine.face.source import SourceConfig, prepare_source
from avatar_engine.geometry.eyes import EYES, EyeLayer, EyeLayerConfig, retarget_lids, scale_lids
from avatar_engine.geometry.face_layers import FaceLayers, FaceLayersConfig
from avatar_engine.geometry.mouth import MOUTH, MouthLayer
from avatar_engine.geometry.openings import Opening, opening_frame, patch_around
from avatar_engine.io.video import iter_frames
from avatar_engine.renderers import create_renderer

IRIS = np.concatenate([topology.LEFT_IRIS_IDX, topology.RIGHT_IRIS_IDX])


@pytest.fixture(scope="module")
def source(data_dir):
    """A 256 source: first frame of a 512 val clip (open eyes, closed mouth without teeth)."""
    rgb, _ = next(iter(iter_frames(data_dir / "clips/val/P048/C077.mp4", 1)))
    return prepare_source(rgb, SourceConfig(size=256, max_side=max(rgb.shape[:2])))


@pytest.fixture(scope="module")
def detector():
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        yield det


def _iod(p: np.ndarray) -> float:
    return float(np.linalg.norm(p[263, :2] - p[33, :2]))


def _closed(p: np.ndarray) -> np.ndarray:
    """``p`` with both upper lids lowered onto the lower lids (a blink)."""
    out = p.copy()
    for opening, _, _ in EYES:
        frame = opening_frame(p, opening)
        first, second = opening.chains()
        upper = first if np.mean(frame.to_frame(p[first, :2])[1]) < np.mean(frame.to_frame(p[second, :2])[1]) else second
        u, _ = frame.to_frame(p[upper[1:-1], :2])
        out[upper[1:-1], :2] = frame.to_pixels(u, frame.lower(u) - 0.02)
    return out


def _lower_chain(p: np.ndarray, opening: Opening) -> list[int]:
    first, second = opening.chains()
    frame = opening_frame(p, opening)
    return (first if np.mean(frame.to_frame(p[first, :2])[1]) > np.mean(frame.to_frame(p[second, :2])[1])
            else second)[1:-1]


def _open_mouth(p: np.ndarray, amount: float) -> np.ndarray:
    """``p`` with the lower lip (inner and outer) and the chin lowered by ``amount`` inter-ocular distances."""
    outer = Opening(tuple(int(i) for i in topology.OUTER_LIPS_LOOP), 61, 291)
    chin = [int(i) for i in topology.FACE_OVAL_IDX if p[i, 1] > p[14, 1] + 0.1 * _iod(p)]
    moved = _lower_chain(p, MOUTH) + _lower_chain(p, outer) + chin
    out = p.copy()
    out[moved, 1] += amount * _iod(p)
    return out


def _render(source, target, layers: bool) -> np.ndarray:
    renderer = create_renderer("mesh")
    if not layers:
        renderer.layers = None
    return renderer.render(source, target)


def test_layers_leave_the_source_pose_alone(source):
    """At the source's own landmarks the layers redraw the eyes and mouth almost as they are."""
    plain = _render(source, source.landmarks, layers=False)
    drawn = FaceLayers(source.crop_image, source.landmarks).apply(plain, source.landmarks)
    assert drawn.shape == plain.shape and drawn.dtype == np.uint8
    diff = np.abs(drawn.astype(int) - plain.astype(int))
    assert diff.mean() < 0.2 and np.percentile(diff, 99.9) < 40


def _opening_pixels(image: np.ndarray, points: np.ndarray, opening: Opening) -> np.ndarray:
    """``(n, 3) int`` pixels of ``image`` inside the lid opening of ``points``."""
    patch = patch_around(points[list(opening.loop), :2], 1.0, image.shape[:2])
    inside = opening_frame(points, opening).contains(patch.xy)
    return image[patch.y0:patch.y1, patch.x0:patch.x1][inside].astype(int)


def test_eye_layer_at_rest_keeps_the_eyes_as_they_are(source):
    """At the source's own landmarks the redrawn eyeball is the source's: the corners are not turned
    into lash-coloured dots and no lash is painted into the sclera (row fill, not inpainting)."""
    p, image = source.landmarks, source.crop_image
    out = EyeLayer(image, p).apply(image.copy(), p)
    for opening, _, _ in EYES:
        before, after = _opening_pixels(image, p, opening), _opening_pixels(out, p, opening)
        darker = (before - after).mean(axis=-1)
        assert (darker > 30).mean() < 0.015, (darker > 30).mean()
        assert np.abs(after - before).mean() < 7.0, np.abs(after - before).mean()


def test_gaze_moves_the_iris(source, detector):
    p = source.landmarks
    u = (p[263, :2] - p[33, :2]) / _iod(p)
    shifts = (-0.05, 0.05)
    measured = {}
    for layers in (False, True):
        gaze = []
        for dx in shifts:
            t = p.copy()
            t[IRIS, :2] += dx * _iod(p) * u
            pts = detector.detect(_render(source, t, layers))
            assert pts is not None
            gaze.append(sig.face_signals(pts)["gaze_x"])
        measured[layers] = (gaze[1] - gaze[0]) / (shifts[1] - shifts[0])
    assert measured[True] > 0.6 and measured[True] > measured[False] + 0.25, measured


def test_extreme_vertical_gaze_keeps_the_iris_in_the_opening(source):
    """A gaze far up (and sideways) or down past the lids: the drawn iris centre stays inside the lid
    opening and the eye still shows its iris (not a white eye); a normal gaze moves the iris unclamped."""
    p = source.landmarks
    layer, cfg = EyeLayer(source.crop_image, p), EyeLayerConfig()
    rest = _render(source, p, True).mean(axis=-1)

    def dark_share(image: np.ndarray, target: np.ndarray, opening: Opening) -> float:
        return float((_opening_pixels(image, target, opening) < 90).mean())

    normal = p.copy()
    normal[IRIS, :2] += _iod(p) * np.array([0.02, -0.01])
    for (c, _), (_, centre, _) in zip(layer.irises(normal), EYES):
        np.testing.assert_allclose(c, p[centre, :2] + cfg.gaze_gain * (normal[centre, :2] - p[centre, :2]), atol=1e-6)
    for shift in ((0.15, -0.3), (0.0, 0.3)):
        t = p.copy()
        t[IRIS, :2] += _iod(p) * np.array(shift)
        out = _render(source, t, True).mean(axis=-1)
        for (c, r), (opening, _, _) in zip(layer.irises(t), EYES):
            frame = opening_frame(t, opening)
            u, v = frame.to_frame(c)
            margin = cfg.iris_margin * r / frame.width - 1e-9
            assert abs(u) <= 0.3 + 1e-9 and frame.upper(u) + margin <= v <= frame.lower(u) - margin, (shift, u, v)
            assert dark_share(out, t, opening) > 0.4 * dark_share(rest, p, opening), shift


def test_closed_lids_read_as_closed(source, detector):
    p = source.landmarks
    closed = _closed(p)
    open_pts = detector.detect(_render(source, p, True))
    shut_pts = detector.detect(_render(source, closed, True))
    assert open_pts is not None and shut_pts is not None
    opened = sig.face_signals(open_pts)
    shut = sig.face_signals(shut_pts)
    for eye in ("eye_open_left", "eye_open_right"):
        assert shut[eye] < 0.5 * opened[eye], (eye, shut[eye], opened[eye])


def test_closed_lids_have_the_skin_colour_not_the_crease(data_dir):
    """A blink on a source with deep-set eyes (P029): the drawn lids are within 45 levels of the cheek's
    mean colour below the eye (with the crease-and-lash colour of session 11 they were 57-59 darker)."""
    rgb, _ = next(iter(iter_frames(data_dir / "clips/val/P029/C054.mp4", 1)))
    src = prepare_source(rgb, SourceConfig(size=256, max_side=max(rgb.shape[:2])))
    p = src.landmarks
    out = _render(src, _closed(p), True).astype(np.float64)
    ys, xs = np.mgrid[0:256, 0:256]
    xy = np.stack([xs + 0.5, ys + 0.5], -1)
    for opening, _, _ in EYES:
        f = opening_frame(p, opening)
        u, v = f.to_frame(xy)
        lid = (np.abs(u) < 0.3) & (v > f.upper(u)) & (v < 0.5 * (f.upper(u) + f.lower(u)))
        cheek = (np.abs(u) < 0.3) & (v > f.lower(u) + 0.15) & (v < f.lower(u) + 0.4)
        assert lid.sum() > 20 and cheek.sum() > 20
        assert abs(out[lid].mean() - src.crop_image[cheek].astype(np.float64).mean()) < 45


def test_an_opening_mouth_shows_teeth(source, detector):
    p = source.landmarks
    layer = MouthLayer(source.crop_image, p)
    assert not layer.source_shows_teeth
    opened = _open_mouth(p, 0.15)
    for layers, teeth in ((False, False), (True, True)):
        out = _render(source, opened, layers)
        pts = detector.detect(out)
        assert pts is not None and sig.face_signals(pts)["mouth_open"] > 0.08
        assert sig.teeth_visible(out, pts) == teeth
    # closed mouth: nothing drawn
    plain = _render(source, p, False)
    np.testing.assert_array_equal(layer.apply(plain, p), plain)


def test_lid_ratio_retargeting():
    """The source's lid gap times the driver's open ratio, per eye."""
    rng = np.random.default_rng(1)
    face = np.zeros((topology.NUM_LANDMARKS, 3), np.float32)
    for opening, centre, contour in EYES:
        upper, lower = opening.chains()
        x0 = 40.0 if 33 in opening.loop else 120.0
        for chain, sign in ((upper, -1.0), (lower, 1.0)):
            t = np.linspace(0.0, 1.0, len(chain))
            face[chain, 0] = x0 + 40.0 * t
            face[chain, 1] = 100.0 + sign * 12.0 * np.sin(np.pi * t)
    face[:, 2] = rng.normal(size=topology.NUM_LANDMARKS)
    big = face.copy()
    big[:, 1] = 100.0 + 2.0 * (face[:, 1] - 100.0)  # a source with eyes twice as open
    for ratio in (0.0, 0.5, 1.0):
        driver = face.copy()
        driver[:, 1] = 100.0 + ratio * (face[:, 1] - 100.0)
        out = retarget_lids(big, big, face, driver)
        for opening, _, _ in EYES:
            expected = ratio * opening_frame(big, opening).gap()
            assert opening_frame(out, opening).gap() == pytest.approx(expected, abs=1e-4)
    np.testing.assert_array_equal(out[:, 2], big[:, 2])


def test_scale_lids_per_eye(source):
    """Each eye's lid gap times its own ratio; corners, irises and the rest of the face stay."""
    p = source.landmarks
    out = scale_lids(p, (0.5, 1.3))
    for (opening, _, _), ratio in zip(EYES, (0.5, 1.3)):
        assert opening_frame(out, opening).gap() == pytest.approx(ratio * opening_frame(p, opening).gap(), rel=0.02)
    lids = np.concatenate([np.asarray(c[1:-1]) for opening, _, _ in EYES for c in opening.chains()])
    rest = np.setdiff1d(np.arange(len(p)), lids)
    np.testing.assert_array_equal(out[rest], p[rest])
    np.testing.assert_allclose(scale_lids(p, 1.0), p, atol=1e-4)


def test_renderers_draw_layers_unless_off(source):
    assert create_renderer("source").layers is None
    mesh = create_renderer("mesh")
    assert mesh.layers == FaceLayersConfig()
    p = source.landmarks
    t = p.copy()
    t[IRIS, :2] += 0.05 * _iod(p) * np.array([1.0, 0.0])
    with_layers = mesh.render(source, t)
    plain = create_renderer("mesh")
    plain.layers = None
    assert np.abs(with_layers.astype(int) - plain.render(source, t).astype(int)).max() > 30
    assert EyeLayer(source.crop_image, p).eyes[0].usable


def test_opening_frame_of_a_drawn_eye():
    """An eye drawn as two arcs: the frame's axes, width, chains and gap, under a similarity."""
    opening, _, _ = EYES[0]
    first, second = opening.chains()
    assert first[0] == second[0] == opening.left and first[-1] == second[-1] == opening.right
    assert sorted(set(first) | set(second)) == sorted(opening.loop)
    face = np.zeros((topology.NUM_LANDMARKS, 2))
    for chain, sign in ((first, -1.0), (second, 1.0)):
        t = np.linspace(0.0, 1.0, len(chain))
        face[chain] = np.stack([10.0 + 40.0 * t, 50.0 + sign * 8.0 * np.sin(np.pi * t)], axis=1)
    frame = opening_frame(face, opening)
    assert frame.width == pytest.approx(40.0) and np.allclose(frame.e1, [1, 0]) and np.allclose(frame.e2, [0, 1])
    assert frame.upper(np.array(0.0)) == pytest.approx(-0.2, abs=0.01)
    assert frame.lower(np.array(0.0)) == pytest.approx(0.2, abs=0.01)
    angle = 0.4
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = opening_frame(face @ rot.T * 2.0 + 7.0, opening)
    assert moved.width == pytest.approx(80.0) and moved.gap() == pytest.approx(frame.gap())
    u, v = moved.to_frame(moved.to_pixels(np.array([0.1, -0.3]), np.array([0.05, 0.2])))
    np.testing.assert_allclose(u, [0.1, -0.3], atol=1e-9)
    np.testing.assert_allclose(v, [0.05, 0.2], atol=1e-9)
