"""Landmark topology: the colour-coded edges of the connectivity images, index sets and loops.

Everything here is built deterministically at import from mediapipe's face-mesh connection sets
(``mediapipe.python.solutions.face_mesh_connections``) and exported as read-only constants.
Landmark indices refer to mediapipe's refined face mesh (478 points: 468 mesh points + 10 iris
points). "Left" and "right" are the *subject's* sides, as in mediapipe: in a non-mirrored photo the
subject's left eye appears on the image's right.

Connectivity edges
------------------
The connectivity image (MetaPortrait style) draws one thin anti-aliased line per edge, each edge
with its own fixed colour. The edges are the face contours below, not the dense tessellation
(which would fill the face). Each group is split into chains (walks along the contour, starting at
the smallest chain-end index, always stepping to the smallest unused neighbour), and its edges are
stored in that chain order, oriented along the walk.

Colour scheme: group ``g`` has a base hue; its ``n`` edges get HSV colours
``(hue_g, 1, v_i)`` with the value ``v_i`` falling linearly from 1.0 (first edge of the chain order)
to 0.4 (last edge), so that every edge has a distinct colour and the direction along each contour is
visible. Left and right features have different hues so that a network can tell the sides apart.

==============  ======  ==========  =====  ===============================================
group           edges   hue (deg)   side   contour
==============  ======  ==========  =====  ===============================================
face_oval       36      0           -      jaw / forehead silhouette (closed loop)
lips_outer      20      324         -      outer lip line (closed loop)
lips_inner      20      144         -      inner lip line = mouth opening (closed loop)
left_eye        16      288         left   eyelid contour (closed loop)
right_eye       16      72          right  eyelid contour (closed loop)
left_brow       8       36          left   two chains: upper and lower brow line
right_brow      8       180         right  two chains: upper and lower brow line
nose            25      216         -      bridge + tip + both nostril wings (a tree)
left_iris       4       108         left   iris circle (closed loop, 4 points)
right_iris      4       252         right  iris circle (closed loop, 4 points)
==============  ======  ==========  =====  ===============================================

157 edges in all, ordered group by group as in the table (``EDGE_GROUPS[k].index`` is the slice
of ``EDGES`` that belongs to group ``k``).

Index sets and loops
--------------------
``*_IDX`` are sorted ``int64`` arrays of the landmarks of a feature; ``*_LOOP`` are closed loops
(ordered ``int64`` arrays; the last landmark connects back to the first, which is not repeated),
starting at the loop's smallest index and going on to its smaller neighbour. The iris index sets
also contain the iris centre (468 right, 473 left), which has no edge.

Triangles
---------
``TRIANGLES (T, 3) int64``: the faces of mediapipe's dense tessellation of the 468 mesh points,
recovered as the 3-cliques of ``FACEMESH_TESSELATION`` minus the "separating" cliques that are not
faces (a clique all of whose edges are shared by three cliques). The mesh has holes at the eyes
and the mouth (bounded by the eye loops and ``INNER_LIPS_LOOP``). Rows are sorted; the vertex
order within a row is ascending, not a consistent orientation.
"""
from __future__ import annotations

import colorsys
import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _mp

__all__ = [
    "NUM_LANDMARKS",
    "EdgeGroup",
    "EDGE_GROUPS",
    "EDGES",
    "EDGE_COLORS",
    "NUM_EDGES",
    "TRIANGLES",
    "LIPS_IDX",
    "INNER_LIPS_IDX",
    "OUTER_LIPS_IDX",
    "LEFT_EYE_IDX",
    "RIGHT_EYE_IDX",
    "LEFT_IRIS_IDX",
    "RIGHT_IRIS_IDX",
    "LEFT_IRIS_CENTER",
    "RIGHT_IRIS_CENTER",
    "LEFT_BROW_IDX",
    "RIGHT_BROW_IDX",
    "FACE_OVAL_IDX",
    "NOSE_IDX",
    "FACE_OVAL_LOOP",
    "INNER_LIPS_LOOP",
    "OUTER_LIPS_LOOP",
    "LEFT_EYE_LOOP",
    "RIGHT_EYE_LOOP",
    "draw_edges_cv2",
]

NUM_LANDMARKS = 478
"""Landmarks of mediapipe's refined face mesh (468 mesh points + 2 x 5 iris points)."""

RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473

_VALUE_FIRST = 1.0  # HSV value of the first edge of a group
_VALUE_LAST = 0.4  # HSV value of the last edge of a group
_UPPER_INNER_LIP = 13  # a landmark on the inner lip line: tells the two lip loops apart

Edge = tuple[int, int]


@dataclass(frozen=True)
class EdgeGroup:
    """One facial feature's edges.

    name: group name (see the module table); edges: ``((i, j), ...)`` landmark pairs in chain order,
    oriented along the walk; hue: base hue in degrees [0, 360); side: ``"left"``, ``"right"`` or
    ``""``; index: the slice of ``EDGES`` / ``EDGE_COLORS`` holding this group.
    """

    name: str
    edges: tuple[Edge, ...]
    hue: float
    side: str
    index: slice

    @property
    def landmarks(self) -> np.ndarray:
        """Sorted landmark indices of the group, ``(K,) int64``."""
        return np.unique(np.asarray(self.edges, dtype=np.int64))


def _undirected(connections) -> set[Edge]:
    """Mediapipe connection pairs -> set of undirected edges ``(min, max)`` (self-loops dropped)."""
    return {(min(a, b), max(a, b)) for a, b in connections if a != b}


def _adjacency(edges: set[Edge]) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    return adj


def _chain_order(edges: set[Edge]) -> tuple[Edge, ...]:
    """Order an undirected edge set as walks (chains), deterministically.

    Each walk starts at the smallest vertex with an odd number of unused edges (a chain end), or,
    when there is none (cycles), at the smallest vertex with unused edges; it always steps to the
    smallest neighbour over an unused edge and stops when stuck. Edges come out oriented along the
    walk.
    """
    remaining = _adjacency(edges)
    ordered: list[Edge] = []
    while any(remaining.values()):
        active = sorted(v for v, nb in remaining.items() if nb)
        odd = [v for v in active if len(remaining[v]) % 2 == 1]
        vertex = odd[0] if odd else active[0]
        while remaining[vertex]:
            nxt = min(remaining[vertex])
            remaining[vertex].discard(nxt)
            remaining[nxt].discard(vertex)
            ordered.append((vertex, nxt))
            vertex = nxt
    return tuple(ordered)


def _components(edges: set[Edge]) -> list[set[Edge]]:
    """Connected components of an edge set, as edge sets, ordered by smallest vertex."""
    adj = _adjacency(edges)
    seen: set[int] = set()
    comps: list[set[Edge]] = []
    for start in sorted(adj):
        if start in seen:
            continue
        stack, verts = [start], set()
        while stack:
            v = stack.pop()
            if v in verts:
                continue
            verts.add(v)
            stack.extend(adj[v] - verts)
        seen |= verts
        comps.append({e for e in edges if e[0] in verts})
    return comps


def _loop(edges: set[Edge]) -> np.ndarray:
    """A single closed cycle -> its vertices in walk order, ``(L,) int64`` (first not repeated)."""
    adj = _adjacency(edges)
    if any(len(nb) != 2 for nb in adj.values()) or len(_components(edges)) != 1:
        raise ValueError("edge set is not a single closed loop")
    chain = _chain_order(edges)
    return np.asarray([a for a, _ in chain], dtype=np.int64)


def _triangles(tessellation: set[Edge]) -> np.ndarray:
    """Faces of a triangulated mesh given only its edges, ``(T, 3) int64`` (see module docstring)."""
    adj = _adjacency(tessellation)
    cliques = {tuple(sorted((a, b, c))) for a, b in tessellation for c in adj[a] & adj[b]}
    uses = Counter(e for tri in cliques for e in itertools.combinations(tri, 2))
    faces = [t for t in cliques if not all(uses[e] >= 3 for e in itertools.combinations(t, 2))]
    return np.asarray(sorted(faces), dtype=np.int64).reshape(-1, 3)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _build_groups() -> tuple[EdgeGroup, ...]:
    lips = _components(_undirected(_mp.FACEMESH_LIPS))
    inner = next(c for c in lips if any(_UPPER_INNER_LIP in e for e in c))
    outer = next(c for c in lips if c is not inner)
    # (name, undirected edges, hue in degrees, side)
    spec = (
        ("face_oval", _undirected(_mp.FACEMESH_FACE_OVAL), 0.0, ""),
        ("lips_outer", outer, 324.0, ""),
        ("lips_inner", inner, 144.0, ""),
        ("left_eye", _undirected(_mp.FACEMESH_LEFT_EYE), 288.0, "left"),
        ("right_eye", _undirected(_mp.FACEMESH_RIGHT_EYE), 72.0, "right"),
        ("left_brow", _undirected(_mp.FACEMESH_LEFT_EYEBROW), 36.0, "left"),
        ("right_brow", _undirected(_mp.FACEMESH_RIGHT_EYEBROW), 180.0, "right"),
        ("nose", _undirected(_mp.FACEMESH_NOSE), 216.0, ""),
        ("left_iris", _undirected(_mp.FACEMESH_LEFT_IRIS), 108.0, "left"),
        ("right_iris", _undirected(_mp.FACEMESH_RIGHT_IRIS), 252.0, "right"),
    )
    groups, start = [], 0
    for name, edge_set, hue, side in spec:
        chain = _chain_order(edge_set)
        groups.append(EdgeGroup(name, chain, hue, side, slice(start, start + len(chain))))
        start += len(chain)
    return tuple(groups)


def _group_colors(group: EdgeGroup) -> np.ndarray:
    """``(n, 3) float32`` RGB in [0, 1]: the group's hue, value ramp 1.0 -> 0.4 along the chain."""
    n = len(group.edges)
    values = np.linspace(_VALUE_FIRST, _VALUE_LAST, n) if n > 1 else np.array([_VALUE_FIRST])
    return np.asarray([colorsys.hsv_to_rgb(group.hue / 360.0, 1.0, v) for v in values], np.float32)


EDGE_GROUPS = _build_groups()
"""``tuple[EdgeGroup, ...]`` in the order of the module table."""

EDGES = _readonly(np.asarray([e for g in EDGE_GROUPS for e in g.edges], dtype=np.int64))
"""``(E, 2) int64``: landmark index pairs, one per drawn line, E = 157."""

NUM_EDGES = int(EDGES.shape[0])

EDGE_COLORS = _readonly(np.concatenate([_group_colors(g) for g in EDGE_GROUPS]).astype(np.float32))
"""``(E, 3) float32`` RGB in [0, 1]: the colour of each edge of ``EDGES``."""

TRIANGLES = _readonly(_triangles(_undirected(_mp.FACEMESH_TESSELATION)))
"""``(T, 3) int64``: faces of the dense tessellation of the 468 mesh points (T = 852)."""


def _group_idx(*names: str) -> np.ndarray:
    return _readonly(np.unique(np.concatenate([g.landmarks for g in EDGE_GROUPS if g.name in names])))


def _group_loop(name: str) -> np.ndarray:
    group = next(g for g in EDGE_GROUPS if g.name == name)
    return _readonly(_loop(_undirected(group.edges)))


def _with_center(idx: np.ndarray, center: int) -> np.ndarray:
    return _readonly(np.union1d(idx, np.array([center], dtype=np.int64)))


LIPS_IDX = _group_idx("lips_outer", "lips_inner")
INNER_LIPS_IDX = _group_idx("lips_inner")
OUTER_LIPS_IDX = _group_idx("lips_outer")
LEFT_EYE_IDX = _group_idx("left_eye")
RIGHT_EYE_IDX = _group_idx("right_eye")
LEFT_IRIS_IDX = _with_center(_group_idx("left_iris"), LEFT_IRIS_CENTER)
RIGHT_IRIS_IDX = _with_center(_group_idx("right_iris"), RIGHT_IRIS_CENTER)
LEFT_BROW_IDX = _group_idx("left_brow")
RIGHT_BROW_IDX = _group_idx("right_brow")
FACE_OVAL_IDX = _group_idx("face_oval")
NOSE_IDX = _group_idx("nose")

FACE_OVAL_LOOP = _group_loop("face_oval")
INNER_LIPS_LOOP = _group_loop("lips_inner")
OUTER_LIPS_LOOP = _group_loop("lips_outer")
LEFT_EYE_LOOP = _group_loop("left_eye")
RIGHT_EYE_LOOP = _group_loop("right_eye")

_CV2_SHIFT = 4  # fractional bits of the sub-pixel coordinates passed to cv2.line
_CV2_COORD_LIMIT = float(2 ** (30 - _CV2_SHIFT))  # keep the fixed-point coordinates inside int32


def draw_edges_cv2(points: np.ndarray, size: int | tuple[int, int], thickness: int = 1) -> np.ndarray:
    """Reference drawing of the connectivity image with OpenCV (tests and debugging).

    points: ``(N, 2)`` (or ``(N, 3)``, z ignored) landmark pixel coordinates, N >= 478, in the
    project's corner-origin convention (pixel ``(row i, col j)`` is centred at ``x = j + 0.5,
    y = i + 0.5``; shifted by -0.5 for OpenCV, whose pixel centres are integers); size: ``S`` or ``(H, W)``.
    Draws ``EDGES`` in order with ``cv2.line(..., lineType=cv2.LINE_AA)`` and sub-pixel endpoints
    onto a black 8-bit canvas (later edges blend over earlier ones).
    Returns ``(H, W, 3) float32`` RGB in [0, 1].
    """
    import cv2

    height, width = (size, size) if isinstance(size, int) else size
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < NUM_LANDMARKS or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N>={NUM_LANDMARKS}, 2|3), got {pts.shape}")
    fixed = np.round(np.clip(pts[:, :2] - 0.5, -_CV2_COORD_LIMIT, _CV2_COORD_LIMIT) * (1 << _CV2_SHIFT))
    fixed = fixed.astype(np.int64)
    canvas = np.zeros((height, width, 3), np.uint8)
    colors = np.round(EDGE_COLORS.astype(np.float64) * 255.0)
    for (i, j), color in zip(EDGES, colors):
        cv2.line(canvas, tuple(int(v) for v in fixed[i]), tuple(int(v) for v in fixed[j]),
                 tuple(float(c) for c in color), thickness, cv2.LINE_AA, _CV2_SHIFT)
    return canvas.astype(np.float32) / 255.0
