"""Training losses: the slice-sum SSIM equals the textbook depthwise-convolution SSIM and has its properties."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avatar_engine.training.losses import ssim


def _ssim_conv(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Reference: separable Gaussian as depthwise convolutions (valid region), images in [-1, 1]."""
    x, y = (a.double() + 1) / 2, (b.double() + 1) / 2
    c = x.shape[1]
    t = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kx, ky = g.view(1, 1, 1, -1).expand(c, 1, 1, window), g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(v):
        return F.conv2d(F.conv2d(v, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean()


def test_ssim_matches_the_convolution_reference_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 40, 48, generator=g) * 2 - 1
    noisy = (clean + 0.2 * torch.randn(2, 3, 40, 48, generator=g)).clamp(-1, 1)
    torch.testing.assert_close(ssim(noisy, clean).double(), _ssim_conv(noisy, clean), rtol=1e-5, atol=1e-6)
    assert abs(float(ssim(clean, clean)) - 1.0) < 1e-6
    assert float(ssim(noisy, clean)) < 0.99 and float(ssim(-clean, clean)) < 0.0
    x = noisy.clone().requires_grad_()
    ssim(x, clean).backward()
    ref = noisy.clone().double().requires_grad_()
    _ssim_conv(ref, clean).backward()
    torch.testing.assert_close(x.grad.double(), ref.grad, rtol=1e-3, atol=1e-7)
