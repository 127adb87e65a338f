"""Tests of avatar_engine.face.topology: edges, colours, index sets, loops, triangles."""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from mediapipe.python.solutions import face_mesh_connections as mp_conn

from avatar_engine.face import topology as topo

DATA = Path("/work/shared/data")
PHOTO = DATA / "images/val/P152/I036.png"

IDX_SETS = {
    name: getattr(topo, name)
    for name in ("LIPS_IDX", "INNER_LIPS_IDX", "OUTER_LIPS_IDX", "LEFT_EYE_IDX", "RIGHT_EYE_IDX",
                 "LEFT_IRIS_IDX", "RIGHT_IRIS_IDX", "LEFT_BROW_IDX", "RIGHT_BROW_IDX",
                 "FACE_OVAL_IDX", "NOSE_IDX")
}
LOOPS = {  # loop -> the edge group it walks
    "FACE_OVAL_LOOP": "face_oval",
    "INNER_LIPS_LOOP": "lips_inner",
    "OUTER_LIPS_LOOP": "lips_outer",
    "LEFT_EYE_LOOP": "left_eye",
    "RIGHT_EYE_LOOP": "right_eye",
}


def _group(name: str) -> topo.EdgeGroup:
    return next(g for g in topo.EDGE_GROUPS if g.name == name)


def _undirected(edges) -> set[tuple[int, int]]:
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, b in edges}


def test_edges_valid_and_unique():
    assert topo.NUM_LANDMARKS == 478
    assert topo.EDGES.dtype == np.int64 and topo.EDGES.ndim == 2 and topo.EDGES.shape[1] == 2
    assert topo.EDGES.shape[0] == topo.NUM_EDGES == 157
    assert topo.EDGES.min() >= 0 and topo.EDGES.max() < topo.NUM_LANDMARKS
    assert np.all(topo.EDGES[:, 0] != topo.EDGES[:, 1]), "self-loop edge"
    assert len(_undirected(topo.EDGES)) == len(topo.EDGES), "duplicate edge"


def test_edges_are_exactly_the_mediapipe_contours():
    expected = set()
    for name in ("FACE_OVAL", "LIPS", "LEFT_EYE", "RIGHT_EYE", "LEFT_EYEBROW", "RIGHT_EYEBROW",
                 "NOSE", "LEFT_IRIS", "RIGHT_IRIS"):
        expected |= _undirected(getattr(mp_conn, f"FACEMESH_{name}"))
    assert _undirected(topo.EDGES) == expected


def test_colors_distinct_and_in_range():
    colors = topo.EDGE_COLORS
    assert colors.dtype == np.float32 and colors.shape == (topo.NUM_EDGES, 3)
    assert colors.min() >= 0.0 and colors.max() <= 1.0
    assert colors.max(axis=1).min() >= 0.39, "every edge must be clearly visible on black"
    gap = np.abs(colors[:, None, :] - colors[None, :, :]).max(axis=2)
    np.fill_diagonal(gap, np.inf)
    # Distinct even after 8-bit quantisation (more than 4 levels apart in some channel).
    assert gap.min() > 4.0 / 255.0


def test_groups_partition_edges_in_chain_order():
    names = [g.name for g in topo.EDGE_GROUPS]
    assert len(set(names)) == len(names) == 10
    start = 0
    for group in topo.EDGE_GROUPS:
        assert group.index == slice(start, start + len(group.edges))
        np.testing.assert_array_equal(topo.EDGES[group.index], np.asarray(group.edges))
        start = group.index.stop
        # Chain order: each edge starts where the previous one ended, except at chain breaks.
        breaks = sum(prev[1] != cur[0] for prev, cur in zip(group.edges, group.edges[1:]))
        allowed = {"left_brow": 1, "right_brow": 1, "nose": 1}.get(group.name, 0)
        assert breaks == allowed, group.name
        # Colour ramp: value (max channel) strictly decreasing along the group, hue constant.
        value = topo.EDGE_COLORS[group.index].max(axis=1)
        assert np.all(np.diff(value) < 0), group.name
    assert start == topo.NUM_EDGES
    hues = {g.name: g.hue for g in topo.EDGE_GROUPS}
    assert len(set(hues.values())) == len(hues), "groups must have distinct hues"
    for feature in ("eye", "brow", "iris"):
        assert _group(f"left_{feature}").side == "left" and _group(f"right_{feature}").side == "right"
        left = topo.EDGE_COLORS[_group(f"left_{feature}").index]
        right = topo.EDGE_COLORS[_group(f"right_{feature}").index]
        assert np.abs(left[:, None] - right[None]).max(axis=2).min() > 0.2, feature


def test_index_sets():
    for name, idx in IDX_SETS.items():
        assert idx.dtype == np.int64 and idx.ndim == 1 and idx.size > 0, name
        assert np.all(np.diff(idx) > 0), f"{name} not sorted/unique"
        assert idx.min() >= 0 and idx.max() < topo.NUM_LANDMARKS, name
        assert not idx.flags.writeable, name
    assert topo.LEFT_IRIS_CENTER in topo.LEFT_IRIS_IDX and topo.RIGHT_IRIS_CENTER in topo.RIGHT_IRIS_IDX
    assert topo.LEFT_IRIS_IDX.tolist() == [473, 474, 475, 476, 477]
    assert topo.RIGHT_IRIS_IDX.tolist() == [468, 469, 470, 471, 472]
    assert np.array_equal(np.union1d(topo.INNER_LIPS_IDX, topo.OUTER_LIPS_IDX), topo.LIPS_IDX)
    assert np.intersect1d(topo.INNER_LIPS_IDX, topo.OUTER_LIPS_IDX).size == 0
    assert 13 in topo.INNER_LIPS_IDX and 14 in topo.INNER_LIPS_IDX  # inner lip midpoints
    assert np.intersect1d(topo.LEFT_EYE_IDX, topo.RIGHT_EYE_IDX).size == 0
    assert np.intersect1d(topo.LEFT_BROW_IDX, topo.RIGHT_BROW_IDX).size == 0


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_loops_closed_and_ordered(loop_name):
    loop = getattr(topo, loop_name)
    group = _group(LOOPS[loop_name])
    assert loop.dtype == np.int64 and loop.ndim == 1 and not loop.flags.writeable
    assert len(set(loop.tolist())) == len(loop) == len(group.edges), "each vertex exactly once"
    steps = _undirected(zip(loop, np.roll(loop, -1)))  # consecutive pairs incl. last -> first
    assert steps == _undirected(group.edges), "loop must walk the group's edges"
    assert np.array_equal(np.sort(loop), group.landmarks)
    assert loop[0] == loop.min()


def test_triangles_form_the_face_mesh_with_eye_and_mouth_holes():
    tri = topo.TRIANGLES
    assert tri.dtype == np.int64 and tri.shape == (852, 3)
    assert tri.min() >= 0 and tri.max() < 468
    assert len({tuple(t) for t in tri}) == len(tri)
    assert np.all(tri[:, 0] < tri[:, 1]) and np.all(tri[:, 1] < tri[:, 2])
    uses = Counter(e for t in tri.tolist() for e in itertools.combinations(t, 2))
    assert set(uses.values()) == {1, 2}, "a manifold mesh: each edge in one or two triangles"
    boundary = {e for e, n in uses.items() if n == 1}
    holes = set()
    for name in ("face_oval", "left_eye", "right_eye", "lips_inner"):
        holes |= _undirected(_group(name).edges)
    assert boundary == holes
    assert _undirected(e for e in uses) <= _undirected(mp_conn.FACEMESH_TESSELATION)


def test_constants_are_read_only():
    for array in (topo.EDGES, topo.EDGE_COLORS, topo.TRIANGLES, topo.FACE_OVAL_LOOP):
        with pytest.raises(ValueError):
            array[0] = 0


@pytest.fixture(scope="module")
def photo_landmarks() -> np.ndarray:
    """(478, 2) float32 pixel landmarks of a real val photo (256 x 256)."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: no real face data to test on")
    import mediapipe as mp

    rgb = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as mesh:
        result = mesh.process(rgb)
    assert result.multi_face_landmarks, "mediapipe found no face in the val photo"
    h, w = rgb.shape[:2]
    lm = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], np.float32)
    assert lm.shape == (topo.NUM_LANDMARKS, 2)
    return lm


def test_sides_and_regions_on_a_real_face(photo_landmarks):
    pts = photo_landmarks
    # Subject's left appears on the image's right in a (non-mirrored) photo.
    for left, right in (("LEFT_EYE_IDX", "RIGHT_EYE_IDX"), ("LEFT_IRIS_IDX", "RIGHT_IRIS_IDX"),
                        ("LEFT_BROW_IDX", "RIGHT_BROW_IDX")):
        assert pts[getattr(topo, left), 0].mean() > pts[getattr(topo, right), 0].mean() + 20
    # Brows above eyes above nose tip above mouth (image y grows downwards).
    assert pts[topo.LEFT_BROW_IDX, 1].mean() < pts[topo.LEFT_EYE_IDX, 1].mean()
    assert pts[topo.LEFT_EYE_IDX, 1].mean() < pts[topo.NOSE_IDX, 1].mean() < pts[topo.LIPS_IDX, 1].mean()

    def polygon(loop):
        return pts[loop].reshape(-1, 1, 2).astype(np.float32)

    oval = polygon(topo.FACE_OVAL_LOOP)
    assert cv2.contourArea(oval) > 0.2 * 256 * 256 * 0.5
    others = np.setdiff1d(np.arange(topo.NUM_LANDMARKS), topo.FACE_OVAL_IDX)
    inside = [cv2.pointPolygonTest(oval, tuple(map(float, pts[i])), False) >= 0 for i in others]
    assert np.mean(inside) > 0.98, "the oval loop must enclose the face"
    for loop, iris_center in ((topo.LEFT_EYE_LOOP, topo.LEFT_IRIS_CENTER),
                              (topo.RIGHT_EYE_LOOP, topo.RIGHT_IRIS_CENTER)):
        assert cv2.pointPolygonTest(polygon(loop), tuple(map(float, pts[iris_center])), False) > 0
    outer = polygon(topo.OUTER_LIPS_LOOP)
    for i in topo.INNER_LIPS_LOOP:
        assert cv2.pointPolygonTest(outer, tuple(map(float, pts[i])), False) >= 0


def test_draw_edges_cv2(photo_landmarks):
    img = topo.draw_edges_cv2(photo_landmarks, 256)
    assert img.dtype == np.float32 and img.shape == (256, 256, 3)
    assert img.min() >= 0.0 and img.max() <= 1.0
    lit = img.max(axis=2) > 0.25
    assert 1000 < lit.sum() < 4000
    rect = topo.draw_edges_cv2(photo_landmarks, (200, 300))
    assert rect.shape == (200, 300, 3)
    with pytest.raises(ValueError):
        topo.draw_edges_cv2(photo_landmarks[:468], 256)
