"""ID-preserving refinement network (paper section 3.1): fuses identity-aware and motion-aware features.

Source side (cached once per source by :meth:`RefineNet.encode_source`): a CNN encoder of the source
crop gives features at S/2 and S/4 (``(B, c_mid, S/2, S/2)``, ``(B, c_low, S/4, S/4)``), and the
identity embedding ``z_id (B, id_dim)`` (dlib's 128-D descriptor) goes through an MLP to the identity
code.

Per frame, the source features are warped with the final grid (downsampled), and, with the occlusion
map, the target connectivity image and the warped image, give the *motion* conditioning at each
level. The decoder runs a cascade of :class:`FusionBlock` at S/4 then (``mid_block``) one at S/2; in each block

    h_id     = IN(h) * (1 + gamma_id(z_id)) + beta_id(z_id)          (AdaIN: identity-aware)
    h_motion = IN(h) * (1 + gamma_m(m)) + beta_m(m)                  (spatial FiLM from the warped source)
    M        = sigmoid(conv(h, m))                                    (learned fusion mask, in (0, 1))
    h        = M * h_motion + (1 - M) * h_id, then a residual conv

A light head (at S or S/2, ``head_scale``) combines the decoder output with the warped image and gives
a correction ``delta`` (upsampled to S); the output is ``warped + delta`` with the head's last layer
initialised to zero, so the untrained network returns the warped image and training starts from the mesh warp.

Images are ``(B, 3, S, S)`` in ``[-1, 1]`` (the network convention of docs/design.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


__all__ = ["RefineNetConfig", "RefineNet", "RefineSourceCache", "RefineOutput", "FusionBlock", "downsample_grid", "resize"]


@dataclass
class RefineNetConfig:
    """Sizes of the refinement network.

    Attributes:
        low_channels: width at S/4 (the fusion cascade).
        mid_channels: width at S/2.
        head_channels: width of the head.
        head_scale: the head runs at S / head_scale (1: full resolution; 2: its correction is
            upsampled bilinearly, the warped image keeps the full-resolution detail).
        blocks: fusion blocks at S/4.
        mid_block: one more fusion block at S/2 (with the source features warped at S/2); without it the
            decoder goes from S/4 straight to the head (cheaper: the lite model).
        id_dim: size of the identity embedding (dlib: 128).
        id_code_dim: size of the identity code after the MLP.
    """

    low_channels: int = 32
    mid_channels: int = 16
    head_channels: int = 8
    head_scale: int = 2
    blocks: int = 2
    mid_block: bool = False
    id_dim: int = 128
    id_code_dim: int = 128

    def __post_init__(self) -> None:
        if min(self.low_channels, self.mid_channels, self.head_channels, self.blocks, self.id_dim,
               self.id_code_dim) < 1:
            raise ValueError("all RefineNetConfig sizes must be >= 1")
        if self.head_scale not in (1, 2):
            raise ValueError(f"head_scale must be 1 or 2, got {self.head_scale}")


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, size, size)``: unchanged if already that size, area average for an integer
    downscale, bilinear otherwise (align_corners=False)."""
    h = x.shape[-1]
    if h == size:
        return x
    if h > size and h % size == 0:
        return F.avg_pool2d(x, h // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def downsample_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """A ``grid_sample`` grid ``(B, S, S, 2)`` (align_corners=False) at ``size x size``: area average,
    which samples each low-resolution pixel at the mean position of the pixels it covers. -> ``(B, size, size, 2)``."""
    if grid.shape[1] == size:
        return grid
    return resize(grid.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)


class FusionBlock(nn.Module):
    """One identity/motion fusion block (see the module docstring).

    ``h (B, C, H, W)``, motion features ``m (B, Cm, H, W)``, identity code ``z (B, D)`` ->
    ``(h' (B, C, H, W), M (B, 1, H, W) in (0, 1))``.
    """

    def __init__(self, channels: int, motion_channels: int, code_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.id_affine = nn.Linear(code_dim, 2 * channels)
        self.film = _conv(motion_channels, 2 * channels, k=1)
        self.mask = _conv(channels + motion_channels, 1)
        self.conv = _conv(channels, channels)
        for layer in (self.id_affine, self.film):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, m: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.norm(h)
        g_id, b_id = self.id_affine(z)[:, :, None, None].chunk(2, dim=1)
        g_m, b_m = self.film(m).chunk(2, dim=1)
        mask = torch.sigmoid(self.mask(torch.cat([h, m], 1)))
        fused = mask * (n * (1 + g_m) + b_m) + (1 - mask) * (n * (1 + g_id) + b_id)
        return h + self.conv(F.leaky_relu(fused, 0.2)), mask


@dataclass
class RefineSourceCache:
    """Source-only features: ``mid (B, c_mid, S/2, S/2)``, ``low (B, c_low, S/4, S/4)``, identity code
    ``z (B, id_code_dim)``."""

    mid: torch.Tensor
    low: torch.Tensor
    z: torch.Tensor


@dataclass
class RefineOutput:
    """``image (B, 3, S, S)`` in about ``[-1, 1]`` (not clamped: losses see the raw value) and the fusion
    masks of every block (``(B, 1, h, w)`` in (0, 1), S/4 blocks first)."""

    image: torch.Tensor
    masks: list[torch.Tensor]


class RefineNet(nn.Module):
    """The ID-preserving refinement network (see the module docstring). S must be divisible by 4."""

    def __init__(self, config: RefineNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or RefineNetConfig()
        cl, cm, ch = cfg.low_channels, cfg.mid_channels, cfg.head_channels
        self.enc_mid = nn.Sequential(_conv(3, cm, 2), nn.LeakyReLU(0.2), _conv(cm, cm), nn.LeakyReLU(0.2))
        self.enc_low = nn.Sequential(_conv(cm, cl, 2), nn.LeakyReLU(0.2), _conv(cl, cl), nn.LeakyReLU(0.2))
        self.id_mlp = nn.Sequential(nn.Linear(cfg.id_dim, cfg.id_code_dim), nn.LeakyReLU(0.2),
                                    nn.Linear(cfg.id_code_dim, cfg.id_code_dim))
        extra = 1 + 3 + 3  # occlusion, target lines, warped image
        self.motion_low = _conv(cl + extra, cl)
        self.stem = _conv(cl + extra, cl)
        self.low_blocks = nn.ModuleList(FusionBlock(cl, cl, cfg.id_code_dim) for _ in range(cfg.blocks))
        if cfg.mid_block:
            self.motion_mid = _conv(cm + extra, cm)
            self.to_mid = _conv(cl, cm)
            self.mid_block = FusionBlock(cm, cm, cfg.id_code_dim)
        self.to_head = _conv(cm if cfg.mid_block else cl, ch, k=1)
        self.head1 = _conv(ch + 3 + 1, ch)
        self.head2 = _conv(ch, 3)
        nn.init.zeros_(self.head2.weight)
        nn.init.zeros_(self.head2.bias)

    def encode_source(self, source: torch.Tensor, z_id: torch.Tensor) -> RefineSourceCache:
        """``source (B, 3, S, S)`` in ``[-1, 1]``, ``z_id (B, id_dim)`` -> cache."""
        mid = self.enc_mid(source)
        return RefineSourceCache(mid, self.enc_low(mid), self.id_mlp(z_id))

    def forward(self, cache: RefineSourceCache, warped: torch.Tensor, grid: torch.Tensor, occlusion: torch.Tensor,
                target_lines: torch.Tensor) -> RefineOutput:
        """Refine one batch of frames.

        Args:
            cache: source features (batch 1 is broadcast to the frame batch).
            warped: ``(B, 3, S, S)`` warped source in ``[-1, 1]``.
            grid: ``(B, S, S, 2)`` the grid that warped it.
            occlusion: ``(B, 1, r, r)`` in (0, 1), any resolution (resized here).
            target_lines: ``(B, 3, r, r)`` target connectivity image in ``[-1, 1]``, any resolution.
        """
        b, _, s, _ = warped.shape
        mid_src, low_src, z = cache.mid, cache.low, cache.z
        if low_src.shape[0] != b:
            mid_src, low_src, z = (t.expand(b, *t.shape[1:]) for t in (mid_src, low_src, z))

        def cond(size: int) -> torch.Tensor:
            return torch.cat([resize(occlusion, size), resize(target_lines, size), resize(warped, size)], 1)

        low_in = torch.cat([F.grid_sample(low_src, downsample_grid(grid, s // 4), mode="bilinear",
                                          padding_mode="border", align_corners=False), cond(s // 4)], 1)
        m_low = F.leaky_relu(self.motion_low(low_in), 0.2)
        h = F.leaky_relu(self.stem(low_in), 0.2)
        masks = []
        for block in self.low_blocks:
            h, mask = block(h, m_low, z)
            masks.append(mask)
        if self.config.mid_block:
            mid_in = torch.cat([F.grid_sample(mid_src, downsample_grid(grid, s // 2), mode="bilinear",
                                              padding_mode="border", align_corners=False), cond(s // 2)], 1)
            m_mid = F.leaky_relu(self.motion_mid(mid_in), 0.2)
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h, mask = self.mid_block(F.leaky_relu(self.to_mid(h), 0.2), m_mid, z)
            masks.append(mask)
        hs = s // self.config.head_scale
        h = resize(self.to_head(F.leaky_relu(h, 0.2)), hs)
        delta = self.head2(F.leaky_relu(self.head1(torch.cat([h, resize(warped, hs), resize(occlusion, hs)], 1)), 0.2))
        delta = resize(delta, s)
        return RefineOutput(warped + delta, masks)
