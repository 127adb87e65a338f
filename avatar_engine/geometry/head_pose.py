"""Absolute head pose from one set of landmarks, and whether a face is fit to be the driver's neutral.

The pose is read off the face's own axes, no face model needed: the left-right axis is the mean of
the vectors between symmetric rigid landmarks (eye corners, cheeks, temples) and the up axis runs
from the nose base to the top of the forehead, made orthogonal to it. Angles follow the convention
of :func:`avatar_engine.eval.metrics.rotation_to_euler_deg` (x right, y down, z into the image; yaw
turns about y, pitch about x, roll about z); 0 / 0 / 0 is a face looking straight into the camera.
mediapipe's forehead lies further back than its nose base, so the raw pitch of a frontal face is not
0: :data:`PITCH_OFFSET_DEG` (the median over frontal corpus clips) is subtracted.

Accuracy: a few degrees of yaw and roll; pitch varies by a few more from person to person (face
shape). Enough to tell a frontal face from a three-quarter view, which is what the neutral needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avatar_engine.face import topology

__all__ = ["HeadPose", "head_pose", "neutral_pose_problem", "NEUTRAL_MAX_DEG", "NEUTRAL_MAX_PITCH_DEG",
           "PITCH_OFFSET_DEG"]

SYMMETRIC_PAIRS = ((33, 263), (133, 362), (234, 454), (127, 356), (93, 323), (162, 389), (21, 251))
"""Rigid landmark pairs (subject's right, subject's left): outer / inner eye corners, cheeks, temples."""
FOREHEAD_TOP = 10
NOSE_BASE = 2

PITCH_OFFSET_DEG = -11.0
"""Raw pitch of a frontal face: the median over 13 frontal corpus clips (MEAD, HDTF, DFDC; per clip
-5 to -40, so a single face's pitch is good to about +-10 degrees)."""

NEUTRAL_MAX_DEG = 15.0
"""A neutral pose may be turned (yaw) or tilted (roll) at most this much ..."""
NEUTRAL_MAX_PITCH_DEG = 25.0
"""... and nodded (pitch) at most this much (looser: pitch is the least accurate angle)."""


@dataclass(frozen=True)
class HeadPose:
    """Head rotation in degrees (see the module docstring for the axes)."""

    yaw: float
    pitch: float
    roll: float

    @property
    def angle(self) -> float:
        """Overall deviation from frontal: ``sqrt(yaw^2 + pitch^2 + roll^2)`` degrees."""
        return math.sqrt(self.yaw**2 + self.pitch**2 + self.roll**2)


def head_pose(points: np.ndarray) -> HeadPose:
    """The head pose of one face.

    Args:
        points: ``(478, 3)`` landmarks (x, y, z in the same pixel units).
    Returns:
        yaw, pitch, roll in degrees (0, 0, 0 = looking straight into the camera).
    """
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[0] < topology.NUM_LANDMARKS - 10 or p.shape[1] != 3:
        raise ValueError(f"points must be ({topology.NUM_LANDMARKS}, 3), got {p.shape}")
    right, left = (np.array(idx) for idx in zip(*SYMMETRIC_PAIRS))
    lateral = p[left] - p[right]
    x_axis = (lateral / np.linalg.norm(lateral, axis=1, keepdims=True)).mean(0)
    x_axis /= np.linalg.norm(x_axis)
    down = p[NOSE_BASE] - p[FOREHEAD_TOP]
    down -= (down @ x_axis) * x_axis
    y_axis = down / np.linalg.norm(down)
    z_axis = np.cross(x_axis, y_axis)
    # R = [x y z] (columns) = Rz(roll) Ry(yaw) Rx(pitch): yaw = asin(-R[2,0]), pitch = atan2(R[2,1], R[2,2])
    yaw = math.degrees(math.asin(float(np.clip(-x_axis[2], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(y_axis[2], z_axis[2])) - PITCH_OFFSET_DEG
    roll = math.degrees(math.atan2(x_axis[1], x_axis[0]))
    return HeadPose(yaw, pitch, roll)


def neutral_pose_problem(points: np.ndarray, max_deg: float = NEUTRAL_MAX_DEG,
                         max_pitch_deg: float = NEUTRAL_MAX_PITCH_DEG) -> str | None:
    """What is wrong with ``points`` ``(478, 3)`` as the driver's neutral pose, as a hint for the user.

    Returns:
        None when yaw and roll are within ``max_deg`` and pitch within ``max_pitch_deg`` of frontal,
        else a short instruction for the largest excess, e.g.
        ``"turn your head to face the camera (turned 32°)"``.
    """
    pose = head_pose(points)
    excess = [(abs(pose.yaw) - max_deg, f"turn your head to face the camera (turned {abs(pose.yaw):.0f}°)"),
              (abs(pose.pitch) - max_pitch_deg,
               f"look straight into the camera (head {'down' if pose.pitch > 0 else 'up'} {abs(pose.pitch):.0f}°)"),
              (abs(pose.roll) - max_deg, f"hold your head upright (tilted {abs(pose.roll):.0f}°)")]
    worst = max(excess, key=lambda item: item[0])
    return worst[1] if worst[0] > 0 else None
