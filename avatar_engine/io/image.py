"""Reading photos safely: every failure becomes a one-line :class:`ImageReadError`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_engine.errors import ImageReadError

__all__ = ["read_image", "write_image", "image_to_tensor", "tensor_to_image"]


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo from disk.

    Returns:
        ``(H, W, 3) uint8`` RGB. Grey images are expanded to 3 channels; an alpha channel is
        composited over white.

    Raises:
        ImageReadError: missing file, a directory, or a file OpenCV cannot decode as an image.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image not found: {p}")
    if not p.is_file():
        raise ImageReadError(f"not a file: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"image file is empty: {p}")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim not in (2, 3) or min(img.shape[:2]) < 16:
        raise ImageReadError(f"not a readable image (corrupt or unsupported format): {p}")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        img = cv2.cvtColor(bgr.round().astype(np.uint8), cv2.COLOR_BGR2RGB)
    else:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write a ``(H, W, 3) uint8`` RGB image (format from the file extension)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(p.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageReadError(f"cannot encode image as {p.suffix}: {p}")
    buf.tofile(str(p))


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(1, 3, H, W) float in [0, 1]`` on ``device``."""
    return torch.from_numpy(np.require(image, requirements=("C", "W"))).to(device).permute(2, 0, 1)[None].float().div_(255.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W) | (3, H, W) float in [0, 1]`` -> ``(H, W, 3) uint8`` (on the CPU)."""
    t = tensor[0] if tensor.dim() == 4 else tensor
    return t.detach().clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
