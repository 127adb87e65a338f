"""Choosing the driver's neutral frame of an offline driving video.

The avatar moves by how the driver differs from the neutral, so the neutral should face the camera,
be still and have the mouth closed. A driving clip need not start that way (a speaker in a
three-quarter view who then turns to the camera): :func:`choose_neutral_frame` picks, among the
face frames of the first ``window_s`` seconds, the one with the lowest cost

    pose deviation (degrees: yaw, roll, half the pitch) + SPEED_WEIGHT * speed + MOUTH_WEIGHT * opening
        + EYE_WEIGHT * eye deviation

with speed the median landmark speed to the neighbouring face frames (face sizes per second),
opening the inner-lip gap in inter-ocular distances and eye deviation how far the two eyes' lid gaps
are from their median over the window (relative, mean of both eyes: a wide-eyed or blinking frame is
not the driver's resting eye).

A single frame of someone who talks is rarely at rest above the mouth: brows and lids move with the
speech, and the avatar shows every departure from the neutral's brows and lids, all clip long. So the
neutral's brows and lids are the driver's *typical* ones (:func:`with_typical_brows_and_lids`) over
the first ``typical_s`` seconds: each brow moved to its median height above the eye corners, each
eye's lid gap scaled to its median; pose, mouth, irises and the rest of the face are the chosen
frame's. On the quick-start driver (C077, who raises her brows as she starts talking) the chosen
frame's brows were 0.043 inter-ocular distances above her median over the clip (the median of the
first 3 s: 0.025), and the avatar frowned whenever she did not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from avatar_engine.errors import NoFaceError
from avatar_engine.face.landmarks import face_bbox
from avatar_engine.face import topology
from avatar_engine.geometry.head_pose import HeadPose, head_pose, neutral_pose_problem
from avatar_engine.geometry.eyes import scale_lids

__all__ = ["NeutralChoice", "choose_neutral_frame", "neutral_at", "with_typical_brows_and_lids", "mouth_opening",
           "eye_openings", "brow_heights", "TYPICAL_S"]

SPEED_WEIGHT = 10.0
"""Cost of 1 face size per second of landmark speed, in degrees of pose deviation."""
MOUTH_WEIGHT = 100.0
"""Cost of a mouth opened by one inter-ocular distance, in degrees of pose deviation (0.1 IOD, a
talking mouth, costs 10 degrees). An open-mouthed neutral is what the avatar shows with its mouth
*closed*, so it never opens as far as the driver and shuts whenever the driver's mouth is that open:
at 20, three of four val clips that start talking (C077, the README's quick-start driver; C018; C151)
got neutrals 0.10-0.14 IOD open and the quick-start avatar's inner lips stayed shut (median gap 0.003
IOD against the driver's 0.11); at 100 all four neutrals are within 0.03 IOD of closed, for 2-4
degrees more pose deviation, which the retargeting's pose offset absorbs."""
EYE_WEIGHT = 30.0
"""Cost of eyes opened 100 % wider (or narrower) than their median over the window, in degrees. The
lids are retargeted as the driver's open ratio to the neutral's (:func:`~avatar_engine.geometry.eyes.retarget_lids`,
with a gain of 1.5), so a wide-eyed neutral makes a sleepy avatar: on the quick-start driver (C077)
the neutral chosen without this term had eyes 1.08 / 1.24x their median, and the avatar's lids hung
half shut whenever she talked; with it 0.94 / 0.98x (P029's C054: 1.24 / 1.23x -> 1.09 / 0.99x)."""
PITCH_WEIGHT = 0.5
"""Pitch counts half (it is the least accurate angle, see :mod:`avatar_engine.geometry.head_pose`)."""
TYPICAL_S = 10.0
"""Seconds (from the first face frame) over which the driver's typical brows and lids are taken."""
_UPPER_LIP, _LOWER_LIP = 13, 14
_BROWS = (np.asarray(topology.RIGHT_BROW_IDX), np.asarray(topology.LEFT_BROW_IDX))
_OUTER_EYE_CORNERS = (33, 263)
_LID_PAIRS = ((159, 145), (386, 374))  # upper / lower lid midpoints of each eye


@dataclass(frozen=True)
class NeutralChoice:
    """The neutral frame of a driving video.

    Attributes:
        index: frame index (0-based) in the video.
        time: its timestamp, seconds.
        points: ``(478, 3) float32`` the neutral landmarks (driving-frame pixels): that frame's, with
            the typical brows and lids where :func:`choose_neutral_frame` chose it.
        pose: its head pose.
        problem: None when it is a good neutral, else a hint (the face is turned: see
            :func:`~avatar_engine.geometry.head_pose.neutral_pose_problem`).
    """

    index: int
    time: float
    points: np.ndarray
    pose: HeadPose
    problem: str | None

    def describe(self) -> str:
        """One line for the log."""
        p = self.pose
        return (f"frame {self.index} ({self.time:.2f} s), yaw {p.yaw:+.0f}°, pitch {p.pitch:+.0f}°, roll {p.roll:+.0f}°"
                + (f"; {self.problem}" if self.problem else ""))


def _speed(points: Sequence[np.ndarray | None], times: Sequence[float], i: int) -> float:
    """Median landmark speed of face frame ``i`` to its face neighbours, in face sizes per second."""
    x0, y0, x1, y1 = face_bbox(points[i])
    size = max(x1 - x0, y1 - y0, 1.0)
    speeds = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(points) and points[j] is not None and times[j] != times[i]:
            step = np.median(np.linalg.norm(points[j][:, :2] - points[i][:, :2], axis=1))
            speeds.append(float(step) / size / abs(times[j] - times[i]))
    return max(speeds) if speeds else 0.0


def _iod(points: np.ndarray) -> float:
    return _face_axes(points)[2]


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap of ``(478, 3)`` landmarks in inter-ocular distances."""
    return float(np.linalg.norm(points[_UPPER_LIP, :2] - points[_LOWER_LIP, :2])) / _iod(points)


def eye_openings(points: np.ndarray) -> np.ndarray:
    """``(2,)`` lid gap of each eye in inter-ocular distances."""
    return np.array([np.linalg.norm(points[a, :2] - points[b, :2]) for a, b in _LID_PAIRS]) / _iod(points)


def _choice(points: Sequence[np.ndarray | None], times: Sequence[float], i: int,
            neutral: np.ndarray | None = None) -> NeutralChoice:
    pts = np.asarray(points[i] if neutral is None else neutral, np.float32)
    frame = np.asarray(points[i], np.float32)
    return NeutralChoice(i, float(times[i]), pts, head_pose(frame), neutral_pose_problem(frame))


def _face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Outer-eye-corner axis ``u``, its perpendicular ``n`` (down the upright face) and the IOD."""
    axis = points[_OUTER_EYE_CORNERS[1], :2] - points[_OUTER_EYE_CORNERS[0], :2]
    iod = max(float(np.linalg.norm(axis)), 1e-6)
    u = axis / iod
    return u, np.array([-u[1], u[0]]), iod


def brow_heights(points: np.ndarray) -> np.ndarray:
    """``(2,)`` height of each brow (right, left: mean of its landmarks) above the outer-eye-corner line,
    in inter-ocular distances."""
    _, n, iod = _face_axes(points)
    corner = points[_OUTER_EYE_CORNERS[0], :2]
    return np.array([-np.mean((points[idx, :2] - corner) @ n) for idx in _BROWS]) / iod


def with_typical_brows_and_lids(neutral: np.ndarray, frames: Sequence[np.ndarray]) -> np.ndarray:
    """``neutral`` with the typical brows and lids of ``frames``: each brow moved along the face's vertical
    axis to its median :func:`brow_heights` over ``frames``, each eye's lid gap scaled
    (:func:`~avatar_engine.geometry.eyes.scale_lids`) to its median :func:`eye_openings` (blinks and
    glances are outvoted while they are fewer than half the frames). Heights and gaps are measured in
    the image, in inter-ocular distances, as eval measures them.

    Args:
        neutral: ``(478, 3)`` the chosen frame's landmarks.
        frames: ``(478, 3)`` landmarks of the frames that make the typical ones.
    Returns:
        ``(478, 3) float32``.
    """
    out = np.asarray(neutral, np.float32).copy()
    if not frames:
        return out
    _, n, iod = _face_axes(out)
    lift = np.median(np.stack([brow_heights(f) for f in frames]), axis=0) - brow_heights(out)
    for idx, dh in zip(_BROWS, lift):
        out[idx, :2] -= (dh * iod * n).astype(np.float32)
    gaps = np.median(np.stack([eye_openings(f) for f in frames]), axis=0)
    return scale_lids(out, gaps / np.maximum(eye_openings(out), 1e-6))


def choose_neutral_frame(times: Sequence[float], points: Sequence[np.ndarray | None],
                         window_s: float = 3.0, typical_s: float = TYPICAL_S) -> NeutralChoice:
    """The most frontal, still, mouth-closed face frame of the first ``window_s`` seconds, with the
    typical brows and lids of the first ``typical_s`` seconds (:func:`with_typical_brows_and_lids`).

    Args:
        times: per-frame timestamps in seconds (increasing).
        points: per-frame ``(478, 3)`` driving landmarks (as the pipeline's tracking detector gives
            them), None for frames without a face.
        window_s: seconds after the first face frame to choose from.
        typical_s: seconds after the first face frame whose brows and lids make the typical ones
            (those given; 0: the chosen frame's own).
    Raises:
        NoFaceError: no frame has a face.
    """
    faces = [i for i, p in enumerate(points) if p is not None]
    if not faces:
        raise NoFaceError("no face in the driving frames")
    start = times[faces[0]]
    window = [i for i in faces if times[i] - start <= window_s]
    eyes = np.array([eye_openings(points[i]) for i in window])
    typical = np.maximum(np.median(eyes, axis=0), 1e-6)
    best, best_cost = window[0], np.inf
    for i, eye in zip(window, eyes):
        pose = head_pose(points[i])
        deviation = float(np.sqrt(pose.yaw**2 + pose.roll**2 + (PITCH_WEIGHT * pose.pitch) ** 2))
        cost = (deviation + SPEED_WEIGHT * _speed(points, times, i) + MOUTH_WEIGHT * mouth_opening(points[i])
                + EYE_WEIGHT * float(np.mean(np.abs(eye / typical - 1.0))))
        if cost < best_cost:
            best, best_cost = i, cost
    rest = [points[i] for i in faces if times[i] - start <= typical_s] if typical_s > 0 else []
    return _choice(points, times, best, with_typical_brows_and_lids(points[best], rest))


def neutral_at(times: Sequence[float], points: Sequence[np.ndarray | None], index: int) -> NeutralChoice:
    """Frame ``index`` as the neutral (the user's choice).

    Raises:
        NoFaceError: the frame does not exist or has no face.
    """
    if not 0 <= index < len(points):
        raise NoFaceError(f"--neutral-frame {index}: the driving video has {len(points)} frames")
    if points[index] is None:
        raise NoFaceError(f"--neutral-frame {index}: no face in that frame of the driving video")
    return _choice(points, times, index)
