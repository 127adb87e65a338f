"""Multi-scale patch discriminator (pix2pixHD style), conditioned on the target connectivity image.

Input ``(B, 3 + 3, S, S)`` (optionally average-pooled first, ``input_scale``): an image in ``[-1, 1]`` and the target connectivity image in ``[-1, 1]``
(both at S). Each scale (S, S/2, ...) is a PatchGAN: stride-2 convs with leaky ReLU and instance
norm, then a 1-channel logit map. ``forward`` returns ``(logits per scale, features per scale)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DiscriminatorConfig", "MultiScaleDiscriminator"]


@dataclass
class DiscriminatorConfig:
    """Sizes: ``scales`` PatchGANs, each with ``layers`` stride-2 convs starting at ``channels``; the
    input is first average-pooled by ``input_scale`` (2: the finest scale sees S/2; cheaper on CPU)."""

    scales: int = 2
    channels: int = 32
    layers: int = 3
    in_channels: int = 6
    input_scale: int = 1

    def __post_init__(self) -> None:
        if min(self.scales, self.channels, self.layers, self.in_channels, self.input_scale) < 1:
            raise ValueError("DiscriminatorConfig sizes must be >= 1")


class _PatchD(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        layers = []
        cin, c = cfg.in_channels, cfg.channels
        for k in range(cfg.layers):
            norm = nn.InstanceNorm2d(c, affine=True) if k else nn.Identity()
            layers.append(nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1), norm, nn.LeakyReLU(0.2)))
            cin, c = c, min(c * 2, 256)
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(cin, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats


class MultiScaleDiscriminator(nn.Module):
    """See the module docstring."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = cfg = config or DiscriminatorConfig()
        self.scales = nn.ModuleList(_PatchD(cfg) for _ in range(cfg.scales))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, feats = [], []
        if self.config.input_scale > 1:
            x = F.avg_pool2d(x, self.config.input_scale)
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            lo, fe = d(x)
            logits.append(lo)
            feats.append(fe)
        return logits, feats
