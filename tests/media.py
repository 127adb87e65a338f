"""Small helpers shared by the tests (reading frames, PSNR)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of a video as ``(H, W, 3) uint8`` RGB (OpenCV decoder)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert frames, f"cannot read {path}"
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
