"""The learned mouth stage: a small U-Net that redraws the mouth of a rendered face crop.

A warp can only move the source's pixels, and the procedural mouth layer
(:mod:`avatar_engine.geometry.mouth`) draws a generic interior. This network is trained on the
corpus's mouths (self-reenactment pairs of the prepared train split, :mod:`avatar_engine.training.mouth`)
to turn the rendered mouth into the driver's: lips, teeth, tongue and the cavity, in the source's
colours. It works in the mouth patch (:mod:`avatar_engine.geometry.mouth_patch`: upright, the same
size for every face) on

    x = [rendered patch (3), source patch (3), target inner / outer lip masks (2), source inner lip mask (1)]

``(B, 9, P, P)``, images in ``[-1, 1]``, and predicts a correction ``(B, 3, P, P)`` (in ``[-1, 1]``
units). The correction is gated to the target's mouth opening (:func:`correction_gate`: the inner-lip
mask grown by a few pixels and softened), so the lips keep the shape the warp gave them (their
landmarks, the expression) and only the interior is redrawn; it is then feathered and added to the
rendered crop. The last layer starts at zero, so an untrained network changes nothing.

:class:`MouthStage` is the per-source runtime wrapper that the face layers call:
``stage.apply(image, target) -> image``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_engine.config import config_from_dict
from avatar_engine.geometry.mouth_patch import (MouthPatchConfig, cut_patch, feather, lip_masks, mouth_affine,
                                                paste_delta, to_patch)
from avatar_engine.models.weights import WEIGHTS_DIR, load_module, save_module

__all__ = ["MouthNetConfig", "MouthNet", "MouthStage", "DEFAULT_MOUTH_WEIGHTS", "IN_CHANNELS", "save_mouth_net",
           "load_mouth_net", "mouth_inputs", "correction_gate"]

DEFAULT_MOUTH_WEIGHTS = WEIGHTS_DIR / "mouth_lite.safetensors"
IN_CHANNELS = 9
_FORMAT = "avatar-engine-mouth-v1"


@dataclass
class MouthNetConfig:
    """Sizes of the mouth network.

    Attributes:
        channels: widths at P/2, P/4, P/8 (the encoder; the decoder mirrors it).
        head_channels: width of the full-resolution head.
        patch: the patch geometry the network was trained for.
    """

    channels: tuple[int, int, int] = (16, 32, 64)
    head_channels: int = 8
    patch: MouthPatchConfig = field(default_factory=MouthPatchConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))


class MouthNet(nn.Module):
    """``(B, 9, P, P)`` inputs (module docstring) -> ``(B, 3, P, P)`` correction; P divisible by 8."""

    def __init__(self, config: MouthNetConfig = MouthNetConfig()):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.enc1 = _block(IN_CHANNELS, c1, 2)
        self.enc2 = _block(c1, c2, 2)
        self.enc3 = _block(c2, c3, 2)
        self.dec2 = _block(c3 + c2, c2)
        self.dec1 = _block(c2 + c1, c1)
        self.head = nn.Sequential(nn.Conv2d(c1 + IN_CHANNELS, config.head_channels, 3, 1, 1),
                                  nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Conv2d(config.head_channels, 3, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        up = F.interpolate(d1, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.head(torch.cat([up, x], 1)))


def correction_gate(x: torch.Tensor, grow: int = 3) -> torch.Tensor:
    """``(B, 1, P, P)`` in [0, 1]: where the correction applies, from the inputs ``x (B, 9, P, P)``: the
    target inner-lip mask (channel 6) grown by ``grow`` pixels, then box-blurred over as many."""
    k = 2 * grow + 1
    grown = F.max_pool2d(x[:, 6:7], k, 1, grow)
    return F.avg_pool2d(grown, k, 1, grow, count_include_pad=False)


def save_mouth_net(net: MouthNet, path: str | Path, metadata: dict[str, str] | None = None,
                   half: bool = True) -> None:
    """Write ``net`` (fp16 by default) and its config to a safetensors file."""
    save_module(net, net.config.to_dict(), path, _FORMAT, metadata, half)


def load_mouth_net(path: str | Path = DEFAULT_MOUTH_WEIGHTS, device: torch.device | str = "cpu") -> MouthNet:
    """A :class:`MouthNet` from :func:`save_mouth_net`'s file (float32, eval mode).

    Raises:
        WeightsError: missing, corrupt or mismatched file.
    """
    return load_module(path, lambda cfg: MouthNet(config_from_dict(MouthNetConfig, cfg)), "mouth", device)  # type: ignore[return-value]


def mouth_inputs(rendered: np.ndarray, source_patch: np.ndarray, target_patch_points: np.ndarray,
                 source_inner: np.ndarray, size: int) -> np.ndarray:
    """The network input of one frame, ``(9, P, P) float32``: ``rendered`` and ``source_patch``
    ``(P, P, 3) uint8`` patches, the target landmarks in patch coordinates ``(478, 2)`` and the source's
    inner-lip mask ``(P, P) float32``."""
    masks = lip_masks(target_patch_points, size)
    images = np.concatenate([rendered, source_patch], axis=2).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return np.concatenate([images, masks, source_inner[None]], axis=0)


class MouthStage:
    """The learned mouth of one source: ``MouthStage(net, crop, points).apply(image, target)``.

    Args:
        net: a trained :class:`MouthNet` (eval mode, CPU or GPU).
        crop: ``(S, S, 3) uint8`` source crop; ``points``: its ``(478, 2|3)`` landmarks in crop pixels.
    """

    def __init__(self, net: MouthNet, crop: np.ndarray, points: np.ndarray):
        self.net = net
        self.patch = net.config.patch
        self.device = next(net.parameters()).device
        affine = mouth_affine(points, self.patch)
        self.source_patch = cut_patch(crop, affine, self.patch.size)
        self.source_inner = lip_masks(to_patch(points, affine), self.patch.size)[0]
        self.feather = feather(self.patch)[..., None] * 127.5

    def apply(self, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``image (S, S, 3) uint8`` rendered at ``target (478, 2|3)`` -> a new array with the mouth redrawn."""
        t = np.asarray(target, np.float64)
        if not np.isfinite(t[:, :2]).all():
            return image
        size = self.patch.size
        affine = mouth_affine(t, self.patch)
        x = mouth_inputs(cut_patch(image, affine, size), self.source_patch, to_patch(t, affine), self.source_inner,
                         size)
        with torch.inference_mode():
            xt = torch.from_numpy(x)[None].to(self.device)
            delta = (self.net(xt) * correction_gate(xt))[0]
        delta = delta.permute(1, 2, 0).float().cpu().numpy() * self.feather
        return paste_delta(image, delta, affine)
