"""Test helper: do gradients reach every parameter of a network?"""
from __future__ import annotations

from typing import Callable

import torch


def parameters_without_gradient(net: torch.nn.Module, loss: Callable[[], torch.Tensor], warm_steps: int = 3,
                                lr: float = 0.5) -> list[str]:
    """Names of ``net``'s parameters whose gradient is missing or all zero after ``warm_steps`` SGD steps.

    Zero-initialised heads and modulations (the project's "untrained = mesh warp" design) block the
    gradient of the layers before them until they have moved: a few steps first let them move.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(warm_steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    opt.zero_grad()
    loss().backward()
    return [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
