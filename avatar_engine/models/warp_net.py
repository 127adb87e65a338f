"""Warping network: a learned residual flow over the mesh warp, plus an occlusion map (paper section 3.1).

Inputs, all at the flow resolution ``R`` (e.g. 64 for a 256 crop):

* source side (cached once per source by :meth:`WarpNet.encode_source`): the source crop and its
  connectivity image, ``(B, 6, R, R)`` in ``[-1, 1]``;
* driving side (per frame): the target connectivity image ``(B, 3, R, R)`` in ``[-1, 1]`` and the
  mesh warp's backward flow ``(B, 2, R, R)`` (our geometric prior), in units of the crop side
  (pixels / S).

A CNN encoder over both sides gives the motion code ``z_w`` (``(B, code_dim)``, L2-normalised, as in
MetaPortrait), which modulates every normalisation layer of the flow decoder (a small U-Net) through
AdaIN: ``IN(x) * (1 + gamma(z_w)) + beta(z_w)``. The decoder's head gives

* ``residual``: ``(B, 2, R, R)`` float, flow in *crop pixels* added to the mesh flow (the head is
  initialised to zero: an untrained network reproduces the mesh warp exactly);
* ``occlusion``: ``(B, 1, R, R)`` float in ``(0, 1)``, 1 = the target pixel is visible in the source.

:func:`apply_residual` turns the mesh grid and the residual into the final ``grid_sample`` grid at the
crop size S; the caller warps the source with :func:`avatar_engine.geometry.mesh_warp.warp_image`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WarpNetConfig", "WarpNet", "WarpSourceCache", "WarpOutput", "AdaIN", "apply_residual"]


@dataclass
class WarpNetConfig:
    """Sizes of the warping network.

    Attributes:
        channels: width of the first encoder level; level k has ``channels * 2**k`` (k = 0, 1, 2).
        code_dim: size of the motion code z_w.
        occlusion_bias: initial logit of the occlusion head (sigmoid(3) ~ 0.95: "visible").
    """

    channels: int = 16
    code_dim: int = 64
    occlusion_bias: float = 3.0

    def __post_init__(self) -> None:
        if self.channels < 1 or self.code_dim < 1:
            raise ValueError("channels and code_dim must be >= 1")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class AdaIN(nn.Module):
    """Instance norm modulated by a code: ``IN(x) * (1 + gamma(z)) + beta(z)``.

    ``x (B, C, H, W)``, ``z (B, D)`` -> ``(B, C, H, W)``. gamma and beta start at zero (plain IN).
    """

    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(z)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class _AdaINBlock(nn.Module):
    """Residual block ``x + conv(act(AdaIN(conv(act(AdaIN(x))))))``, shape preserving."""

    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.n1, self.n2 = AdaIN(channels, code_dim), AdaIN(channels, code_dim)
        self.c1, self.c2 = _conv(channels, channels), _conv(channels, channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.leaky_relu(self.n1(x, z), 0.2))
        return x + self.c2(F.leaky_relu(self.n2(h, z), 0.2))


class _Encoder(nn.Module):
    """Three levels: ``(B, cin, R, R)`` -> ``[(B, c, R, R), (B, 2c, R/2, R/2), (B, 4c, R/4, R/4)]``."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.l0 = _conv(cin, c)
        self.l1 = _conv(c, 2 * c, 2)
        self.l2 = _conv(2 * c, 4 * c, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = F.leaky_relu(self.l0(x), 0.2)
        f1 = F.leaky_relu(self.l1(f0), 0.2)
        f2 = F.leaky_relu(self.l2(f1), 0.2)
        return [f0, f1, f2]


@dataclass
class WarpSourceCache:
    """Source-only features of the warping network: encoder levels ``[(B, c, R, R), (B, 2c, R/2, R/2),
    (B, 4c, R/4, R/4)]``."""

    features: list[torch.Tensor]


@dataclass
class WarpOutput:
    """Warping network output at the flow resolution R (see the module docstring)."""

    residual: torch.Tensor
    occlusion: torch.Tensor
    code: torch.Tensor


class WarpNet(nn.Module):
    """The warping network (see the module docstring). R must be divisible by 16."""

    def __init__(self, config: WarpNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or WarpNetConfig()
        c, d = cfg.channels, cfg.code_dim
        self.source_encoder = _Encoder(6, c)
        self.driving_encoder = _Encoder(5, c)
        self.code_convs = nn.Sequential(_conv(8 * c, 8 * c, 2), nn.LeakyReLU(0.2), _conv(8 * c, 8 * c, 2),
                                        nn.LeakyReLU(0.2))
        self.code_fc = nn.Linear(8 * c, d)
        self.fuse2 = _conv(8 * c, 4 * c)
        self.block2 = _AdaINBlock(4 * c, d)
        self.fuse1 = _conv(4 * c + 4 * c, 2 * c)
        self.block1 = _AdaINBlock(2 * c, d)
        self.fuse0 = _conv(2 * c + 2 * c, c)
        self.block0 = _AdaINBlock(c, d)
        self.head = _conv(c, 3)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, 0.0, cfg.occlusion_bias]))

    def encode_source(self, source: torch.Tensor, source_lines: torch.Tensor) -> WarpSourceCache:
        """``source (B, 3, R, R)``, ``source_lines (B, 3, R, R)``, both in ``[-1, 1]`` -> cache."""
        return WarpSourceCache(self.source_encoder(torch.cat([source, source_lines], 1)))

    def forward(self, cache: WarpSourceCache, target_lines: torch.Tensor, mesh_flow: torch.Tensor) -> WarpOutput:
        """``target_lines (B, 3, R, R)`` in ``[-1, 1]``, ``mesh_flow (B, 2, R, R)`` in crop sides -> output.

        The source cache may have batch 1 with a larger driving batch (it is broadcast).
        """
        drv = self.driving_encoder(torch.cat([target_lines, mesh_flow], 1))
        b = drv[0].shape[0]
        src = [f.expand(b, -1, -1, -1) if f.shape[0] != b else f for f in cache.features]
        top = torch.cat([src[2], drv[2]], 1)
        code = F.normalize(self.code_fc(self.code_convs(top).mean(dim=(2, 3))), dim=1)
        h = self.block2(F.leaky_relu(self.fuse2(top), 0.2), code)
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = self.block1(F.leaky_relu(self.fuse1(torch.cat([h, src[1], drv[1]], 1)), 0.2), code)
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = self.block0(F.leaky_relu(self.fuse0(torch.cat([h, src[0], drv[0]], 1)), 0.2), code)
        out = self.head(F.leaky_relu(h, 0.2))
        return WarpOutput(out[:, :2], torch.sigmoid(out[:, 2:3]), code)


def apply_residual(mesh_grid: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Final sampling grid: ``mesh_grid (B, S, S, 2)`` normalised + ``residual (B, 2, R, R)`` crop pixels.

    The residual is upsampled bilinearly to S and converted to normalised units (``2 / S`` per pixel).
    A zero residual returns ``mesh_grid`` unchanged (bit for bit). Returns ``(B, S, S, 2)``.
    """
    s = mesh_grid.shape[1]
    if residual.shape[-1] != s:
        residual = F.interpolate(residual, size=(s, s), mode="bilinear", align_corners=False)
    return mesh_grid + residual.permute(0, 2, 3, 1) * (2.0 / s)
