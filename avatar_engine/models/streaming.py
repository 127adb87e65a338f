"""Fixed-size ring buffers of tensors on the device, and the streaming state of a causal network.

:class:`RingBuffer` keeps the last ``capacity`` tensors of one shape in a preallocated
``(capacity, *shape)`` tensor on their device: pushing copies into the next slot (no allocation per
frame once full), :meth:`RingBuffer.ordered` returns them oldest first, :meth:`RingBuffer.reset`
forgets them (storage kept).

:class:`StreamState` is what a causal temporal network needs to run one time slice per frame: one
ring per causal 3-D convolution holding the last ``kt - 1`` input slices of that layer (see
:class:`avatar_engine.models.sr_net.CausalConv3d`). Resetting it starts a new stream: the next frame is then
treated as if it had been seen forever (replicate padding of the past), exactly like the offline
network at the first frame of a clip.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["RingBuffer", "StreamState"]


class RingBuffer:
    """The last ``capacity`` tensors of one shape, oldest first on read.

    Args:
        capacity: number of slots (>= 1).

    Storage is allocated on the first :meth:`push` with that tensor's shape, dtype and device;
    after :meth:`reset` a push of another shape/dtype/device reallocates. Pushing a differently
    shaped tensor into a non-empty buffer raises ``ValueError``.
    """

    def __init__(self, capacity: int):
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity}")
        self.capacity = int(capacity)
        self._storage: torch.Tensor | None = None
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count == self.capacity

    @property
    def storage(self) -> torch.Tensor | None:
        """The ``(capacity, *shape)`` backing tensor (slot order, not time order), or None."""
        return self._storage

    def push(self, item: torch.Tensor) -> None:
        """Copy ``item`` into the next slot, overwriting the oldest when full."""
        st = self._storage
        if st is None or (self._count == 0 and (st.shape[1:] != item.shape or st.dtype != item.dtype
                                                 or st.device != item.device)):
            st = self._storage = torch.empty((self.capacity, *item.shape), dtype=item.dtype, device=item.device)
        elif st.shape[1:] != item.shape:
            raise ValueError(f"ring buffer holds {tuple(st.shape[1:])} tensors, got {tuple(item.shape)}")
        st[self._next].copy_(item)
        self._next = (self._next + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def fill(self, item: torch.Tensor) -> None:
        """Reset, then push ``item`` ``capacity`` times (a constant past)."""
        self.reset()
        for _ in range(self.capacity):
            self.push(item)

    def ordered(self) -> torch.Tensor:
        """``(len, *shape)``: the held tensors, oldest first (a new tensor)."""
        if self._storage is None or self._count == 0:
            raise ValueError("ring buffer is empty")
        if not self.full:
            return self._storage[: self._count].clone()
        if self._next == 0:
            return self._storage.clone()
        return torch.cat((self._storage[self._next:], self._storage[: self._next]))

    def latest(self) -> torch.Tensor:
        """The tensor pushed last (a view into the storage)."""
        if self._storage is None or self._count == 0:
            raise ValueError("ring buffer is empty")
        return self._storage[(self._next - 1) % self.capacity]

    def reset(self) -> None:
        """Forget the contents (the storage is kept for reuse)."""
        self._next = 0
        self._count = 0


class StreamState:
    """Per-layer activation caches of one stream through a causal temporal network.

    Args:
        kernels: temporal kernel size ``kt`` of each causal convolution, in network order. A layer
            with ``kt == 1`` needs no cache; the others get a :class:`RingBuffer` of ``kt - 1`` slots.

    Attributes:
        caches: one entry per layer: a ring buffer, or None for ``kt == 1``.
        steps: frames run through this state since the last reset.
    """

    def __init__(self, kernels: Sequence[int]):
        if any(int(k) < 1 for k in kernels):
            raise ValueError(f"temporal kernels must be >= 1, got {list(kernels)}")
        self.kernels = tuple(int(k) for k in kernels)
        self.caches: list[RingBuffer | None] = [RingBuffer(k - 1) if k > 1 else None for k in self.kernels]
        self.steps = 0

    def reset(self) -> None:
        """Start a new stream (new clip, face lost, source changed)."""
        for cache in self.caches:
            if cache is not None:
                cache.reset()
        self.steps = 0

    def nbytes(self) -> int:
        """Device memory held by the caches, in bytes."""
        return sum(c.storage.numel() * c.storage.element_size() for c in self.caches
                   if c is not None and c.storage is not None)
