"""Causal temporal super-resolution network: 256 face crops -> 512, over the last ``T`` frames.

MetaPortrait's last stage (paper 3.3) lifts 256 frames to 512 with 3-D convolutions over
neighbouring frames; theirs looks one frame ahead. This one is **causal** (the output for frame ``t``
uses frames ``<= t`` only: no added latency) and **streaming** (each new frame runs one time slice
through the network, each temporal layer keeping a cache of its last ``kt - 1`` input slices).

Architecture (:class:`SRNet`): a small U-Net whose convolutions are all :class:`CausalConv3d`:

    head (3 -> c0, 3x3, kt_head) @ S
    down_l (c_{l-1} -> c_l, 3x3 stride 2) @ S / 2^l           for l = 1 .. levels-1
    body_i (c_n -> c_n, 3x3, kt_i), residual around the body   @ S / 2^(levels-1)
    up_l (c_l -> 4 c_{l-1}, 3x3) + pixel shuffle, + skip, fuse (3x3)
    tail (c0 -> 12, 3x3) + pixel shuffle -> residual @ 2S
    output = bicubic(newest frame) + residual

The tail starts at zero, so an untrained network *is* bicubic upsampling. Temporal taps sit in the
head (full resolution, 3 input channels: cheap) and in the body (lowest resolution): the network's
temporal receptive field is ``1 + sum(kt - 1) = T`` frames (``SRConfig.frames``); ``T = 1`` is the
same network run frame by frame (all convolutions 2-D).

Past-side padding replicates the first frame (offline, :meth:`SRNet.forward`), and a fresh stream
fills every cache with its first slice (:meth:`SRNet.step`): both treat the first frame as if it had
always been there, so streaming output equals offline output frame for frame.

Images: input ``(B, 3, L, S, S)`` / ``(B, 3, S, S)`` float in ``[0, 1]`` (normalised to ``[-1, 1]``
inside), output ``(B, 3, L, 2S, 2S)`` / ``(B, 3, 2S, 2S)`` float, nominally ``[0, 1]`` (not clamped).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avatar_engine.models.streaming import RingBuffer, StreamState

__all__ = ["SRConfig", "CausalConv3d", "SRNet", "inflate", "temporal_kernels", "count_flops"]


@dataclass
class SRConfig:
    """Shape of a :class:`SRNet`.

    Attributes:
        frames: temporal window ``T`` (receptive field in frames, >= 1); 1 = frame-by-frame network.
        channels: channels per U-Net level, full resolution first (``levels = len(channels)``).
        body_convs: 3x3 convolutions at the lowest resolution.
        max_temporal_kernel: most taps per temporal convolution.
        input_size: side ``S`` of the input crops (output is ``2 S``).
        slope: LeakyReLU negative slope.
    """

    frames: int = 4
    channels: tuple[int, ...] = (16, 32, 48)
    body_convs: int = 4
    max_temporal_kernel: int = 3
    input_size: int = 256
    slope: float = 0.2

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.body_convs < 1 or self.max_temporal_kernel < 2:
            raise ValueError("body_convs must be >= 1 and max_temporal_kernel >= 2")
        if self.input_size % (2 ** (len(self.channels) - 1)):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2^(levels-1)")
        if self.frames - 1 > (self.body_convs + 1) * (self.max_temporal_kernel - 1):
            raise ValueError(f"frames={self.frames} needs more temporal layers: raise body_convs or "
                             "max_temporal_kernel")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SR model options: {', '.join(sorted(unknown))}")
        return cls(**data)


def temporal_kernels(frames: int, layers: int, max_kernel: int) -> tuple[int, ...]:
    """Spread ``frames - 1`` extra temporal taps over ``layers`` convolutions, earliest first.

    Returns ``layers`` kernel sizes in ``[1, max_kernel]`` with ``1 + sum(k - 1) == frames``.
    """
    extra = frames - 1
    if extra > layers * (max_kernel - 1):
        raise ValueError(f"cannot spread {frames} frames over {layers} layers of at most {max_kernel} taps")
    base, rem = divmod(extra, layers)
    return tuple(1 + base + (i < rem) for i in range(layers))


class CausalConv3d(nn.Module):
    """3-D convolution causal in time, ``k x k`` 'same' (zero-padded) in space.

    Args:
        cin, cout: channels. kt: temporal taps (frames ``t - kt + 1 .. t``). k: spatial kernel.
        stride: spatial stride (time stride is 1).

    ``weight[:, :, -1]`` is the tap of the current frame, ``weight[:, :, 0]`` the oldest.
    """

    def __init__(self, cin: int, cout: int, kt: int = 1, k: int = 3, stride: int = 1):
        super().__init__()
        self.cin, self.cout, self.kt, self.k, self.stride = cin, cout, int(kt), k, stride
        self.weight = nn.Parameter(torch.empty(cout, cin, self.kt, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline, 'valid' in time: ``(B, cin, L, H, W)`` -> ``(B, cout, L - kt + 1, H', W')``.

        Computed as a 2-D convolution over the ``kt`` slices of each window stacked along channels
        (the same arithmetic as ``F.conv3d``, which has no fast CPU kernel).
        """
        b, c, n, h, w = x.shape
        n_out = n - self.kt + 1
        if n_out < 1:
            raise ValueError(f"need at least {self.kt} frames, got {n}")
        if self.kt == 1:
            stacked = x
        else:
            stacked = torch.cat([x[:, :, j: j + n_out] for j in range(self.kt)], dim=1)
        y = F.conv2d(stacked.transpose(1, 2).reshape(b * n_out, self.kt * c, h, w), self._weight2d(), self.bias,
                     self.stride, self.k // 2)
        return y.reshape(b, n_out, *y.shape[1:]).transpose(1, 2)

    def _weight2d(self) -> torch.Tensor:
        """``(cout, kt * cin, k, k)``: the taps stacked oldest first, matching stacked input slices."""
        return self.weight.permute(0, 2, 1, 3, 4).flatten(1, 2)

    def step(self, x: torch.Tensor, cache: RingBuffer | None) -> torch.Tensor:
        """Streaming: one time slice ``(B, cin, H, W)`` -> ``(B, cout, H', W')``.

        ``cache`` holds the layer's last ``kt - 1`` input slices (filled with ``x`` when empty: a
        constant past) and receives ``x``. The taps are applied as one 2-D convolution over the
        slices stacked along channels.
        """
        if self.kt == 1:
            return F.conv2d(x, self.weight[:, :, 0], self.bias, self.stride, self.k // 2)
        assert cache is not None and cache.capacity == self.kt - 1
        if len(cache) == 0:
            cache.fill(x)
        past = cache.ordered()  # (kt-1, B, C, H, W), oldest first
        window = torch.cat((past.permute(1, 0, 2, 3, 4).flatten(1, 2), x), dim=1)  # (B, kt*C, H, W)
        cache.push(x)
        return F.conv2d(window, self._weight2d(), self.bias, self.stride, self.k // 2)

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, kt={self.kt}, k={self.k}, stride={self.stride}"


def _fold(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(B, C, L, H, W)`` -> ``(B * L, C, H, W)`` and ``L``."""
    b, c, n, h, w = x.shape
    return x.transpose(1, 2).reshape(b * n, c, h, w), n


def _unfold(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B * L, C, H, W)`` -> ``(B, C, L, H, W)``."""
    bn, c, h, w = x.shape
    return x.reshape(bn // n, n, c, h, w).transpose(1, 2)


class SRNet(nn.Module):
    """The causal temporal U-Net (see the module docstring).

    Args:
        config: network shape; ``config.frames`` sets the temporal taps.
    """

    def __init__(self, config: SRConfig | None = None):
        super().__init__()
        cfg = self.config = config or SRConfig()
        ch = cfg.channels
        kts = temporal_kernels(cfg.frames, cfg.body_convs + 1, cfg.max_temporal_kernel)
        self.head = CausalConv3d(3, ch[0], kts[0])
        self.downs = nn.ModuleList(CausalConv3d(ch[i - 1], ch[i], 1, stride=2) for i in range(1, len(ch)))
        self.body = nn.ModuleList(CausalConv3d(ch[-1], ch[-1], kt) for kt in kts[1:])
        self.ups = nn.ModuleList(CausalConv3d(ch[i], 4 * ch[i - 1]) for i in range(len(ch) - 1, 0, -1))
        self.fuses = nn.ModuleList(CausalConv3d(ch[i - 1], ch[i - 1]) for i in range(len(ch) - 1, 0, -1))
        self.tail = CausalConv3d(ch[0], 12)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @property
    def convs(self) -> list[CausalConv3d]:
        """Every convolution in execution order (the order of :class:`StreamState` caches)."""
        pairs = [conv for up, fuse in zip(self.ups, self.fuses) for conv in (up, fuse)]
        return [self.head, *self.downs, *self.body, *pairs, self.tail]

    @property
    def frames(self) -> int:
        return self.config.frames

    def new_state(self) -> StreamState:
        """An empty streaming state for :meth:`step`."""
        return StreamState([c.kt for c in self.convs])

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.config.slope)

    def forward(self, frames: torch.Tensor, n_out: int | None = None) -> torch.Tensor:
        """Offline causal pass over a clip.

        Args:
            frames: ``(B, 3, L, S, S)`` float in ``[0, 1]``, oldest first.
            n_out: outputs wanted for the last ``n_out`` frames (default all ``L``); fewer saves work.
        Returns:
            ``(B, 3, n_out, 2S, 2S)``: output ``j`` depends on input frames ``<=`` its own only.
        """
        b, c, length, h, w = frames.shape
        n_out = length if n_out is None else int(n_out)
        if not 1 <= n_out <= length:
            raise ValueError(f"n_out must be in [1, {length}], got {n_out}")
        pad = self.frames - 1
        x = frames[:, :, length - n_out:]  # frames a kept output depends on: the last n_out + pad
        past = frames[:, :, max(0, length - n_out - pad): length - n_out]
        if past.shape[2] < pad:  # replicate the clip's first frame into the past
            first = frames[:, :, :1].expand(-1, -1, pad - past.shape[2], -1, -1)
            past = torch.cat((first, past), dim=2)
        x = torch.cat((past, x), dim=2) * 2.0 - 1.0
        skips = []
        h_ = self._act(self.head(x))
        for down in self.downs:
            skips.append(h_)
            h_ = self._act(down(h_))
        r = h_
        for conv in self.body:
            r = self._act(conv(r))
        h_ = h_[:, :, -r.shape[2]:] + r
        for up, fuse in zip(self.ups, self.fuses):
            y, n = _fold(up(h_))
            skip = skips.pop()
            h_ = self._act(_unfold(F.pixel_shuffle(y, 2), n) + skip[:, :, -n:])
            h_ = self._act(fuse(h_))
        y, n = _fold(self.tail(h_))
        base, _ = _fold(frames[:, :, length - n_out:])
        base = F.interpolate(base, scale_factor=2, mode="bicubic", align_corners=False)
        return _unfold(base + F.pixel_shuffle(y, 2), n)

    def step(self, frame: torch.Tensor, state: StreamState) -> torch.Tensor:
        """Streaming: the newest frame ``(B, 3, S, S)`` in ``[0, 1]`` -> ``(B, 3, 2S, 2S)``.

        ``state`` (from :meth:`new_state`) carries the per-layer caches between calls; after a
        reset the frame is treated as the first of a clip.
        """
        caches = iter(state.caches)
        x = frame * 2.0 - 1.0
        skips = []
        h_ = self._act(self.head.step(x, next(caches)))
        for down in self.downs:
            skips.append(h_)
            h_ = self._act(down.step(h_, next(caches)))
        r = h_
        for conv in self.body:
            r = self._act(conv.step(r, next(caches)))
        h_ = h_ + r
        for up, fuse in zip(self.ups, self.fuses):
            h_ = self._act(F.pixel_shuffle(up.step(h_, next(caches)), 2) + skips.pop())
            h_ = self._act(fuse.step(h_, next(caches)))
        y = F.pixel_shuffle(self.tail.step(h_, next(caches)), 2)
        return F.interpolate(frame, scale_factor=2, mode="bicubic", align_corners=False) + y


def inflate(net2d: SRNet, frames: int) -> SRNet:
    """A temporal network initialised from a frame-by-frame one (``net2d.frames == 1``).

    Each 2-D kernel becomes the current-frame tap of its 3-D kernel (the causal counterpart of the
    paper's centre tap); the past taps start at zero, so the inflated network reproduces ``net2d``
    exactly (on any clip, static or not) until fine-tuning moves the past taps.
    """
    if net2d.frames != 1:
        raise ValueError(f"inflate expects a frame-by-frame network (frames=1), got frames={net2d.frames}")
    net = SRNet(dataclasses.replace(net2d.config, frames=frames)).to(next(net2d.parameters()).device)
    with torch.no_grad():
        for dst, src in zip(net.convs, net2d.convs):
            dst.weight.zero_()
            dst.weight[:, :, -1:].copy_(src.weight)
            dst.bias.copy_(src.bias)
    return net


def count_flops(net: SRNet, mode: str = "stream", size: int | None = None) -> int:
    """FLOPs (multiply-adds count 2) of one output frame, measured by ``FlopCounterMode``.

    Args:
        mode: ``"stream"``: one :meth:`SRNet.step` with warm caches; ``"window"``: recompute the
            newest output from the last ``T`` frames with :meth:`SRNet.forward`.
        size: input side (default ``config.input_size``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    s = size or net.config.input_size
    dev = next(net.parameters()).device
    with torch.no_grad():
        if mode == "stream":
            state = net.new_state()
            frame = torch.rand(1, 3, s, s, device=dev)
            net.step(frame, state)
            with FlopCounterMode(display=False) as counter:
                net.step(frame, state)
        elif mode == "window":
            clip = torch.rand(1, 3, net.frames, s, s, device=dev)
            with FlopCounterMode(display=False) as counter:
                net(clip, n_out=1)
        else:
            raise ValueError(f"mode must be 'stream' or 'window', got {mode!r}")
    return int(counter.get_total_flops())
