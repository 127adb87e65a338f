"""The temporal super-resolution stage: 256 face crops -> 512, causal and streaming.

:class:`SuperResolver` wraps a trained :class:`~avatar_engine.models.sr_net.SRNet` with its streaming state
(per-layer caches, :class:`avatar_engine.models.streaming.StreamState`): call it once per frame with the
rendered 256 crop and it returns the 512 crop for that frame, using that frame and the ones before
it only (no added latency). It resets itself when the source changes (``key``), and the caller
resets it when the face is lost.

In ``stream`` mode the step runs as one graph with its state as explicit inputs and outputs
(:class:`~avatar_engine.models.frame_graph.SRStepGraph`) through an inference backend
(:mod:`avatar_engine.backends`; ``backend``, by default ``config.backend``).

``mode="window"`` keeps a ring buffer of the last ``T`` input frames and recomputes the newest output
from the whole window each frame: the same output (see ``tests/test_sr.py``), more compute; it is
the reference the streaming benchmark compares against.

Weights are safetensors files whose metadata holds the network config (``"sr_config"``, JSON); the
shipped light CPU model is :data:`DEFAULT_WEIGHTS`, loaded offline.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_engine.backends import BackendChoice, BackendOptions, Runner, accelerate, check_backend
from avatar_engine.errors import WeightsError
from avatar_engine.models.frame_graph import SRStepGraph
from avatar_engine.models.streaming import RingBuffer
from avatar_engine.models.weights import WEIGHTS_DIR
from avatar_engine.io.image import image_to_tensor, tensor_to_image
from avatar_engine.face.source import SourceFace
from avatar_engine.models.sr_net import SRConfig, SRNet

__all__ = ["DEFAULT_WEIGHTS", "SuperResolutionConfig", "SuperResolver", "load_sr_net", "save_sr_weights",
           "downscale_source"]

DEFAULT_WEIGHTS = WEIGHTS_DIR / "sr_light.safetensors"
"""The shipped light (CPU) temporal SR model."""


@dataclass
class SuperResolutionConfig:
    """Options of the SR stage.

    Attributes:
        weights: safetensors file (default: the shipped light model).
        mode: ``"stream"`` (one time slice per frame) or ``"window"`` (recompute the last T frames).
        device: torch device; None = the device the caller passes (the renderer's), else the CPU.
        backend: inference backend of the streaming step (:data:`avatar_engine.backends.BACKEND_CHOICES`)
            when the caller passes none (the pipeline passes its renderer's).
    """

    weights: Path | None = None
    mode: str = "stream"
    device: str | None = None
    backend: str = "eager"

    def __post_init__(self) -> None:
        if self.mode not in ("stream", "window"):
            raise ValueError(f"mode must be 'stream' or 'window', got {self.mode!r}")
        check_backend(self.backend)


def save_sr_weights(net: SRNet, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``net``'s weights and config (safetensors; ``metadata`` values are strings)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={**(metadata or {}), "sr_config": net.config.to_json()})
    return path


def load_sr_net(path: str | Path | None = None, device: torch.device | str = "cpu") -> SRNet:
    """Build the network stored in ``path`` (default :data:`DEFAULT_WEIGHTS`), in eval mode.

    Raises:
        WeightsError: missing or unreadable file, or weights that do not fit the stored config.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"super-resolution weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = SRConfig.from_dict(json.loads(meta["sr_config"]))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"unreadable super-resolution weights {path}: {exc}") from None
    net = SRNet(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError:
        raise WeightsError(f"super-resolution weights {path} do not match their stored network config") from None
    return net.to(device).eval()


def downscale_source(source: SourceFace, size: int) -> SourceFace:
    """The same source face at a smaller crop side (e.g. the 256 input of the SR stage of a 512 source).

    The crop square, the photo and the key's identity are kept; the crop image is box-filtered and the
    landmarks scaled (x, y and z).
    """
    if size == source.size:
        return source
    k = size / source.size
    crop_image = cv2.resize(source.crop_image, (size, size), interpolation=cv2.INTER_AREA)
    return dataclasses.replace(source, crop=source.crop.with_size(size), crop_image=crop_image,
                               landmarks=(source.landmarks * k).astype(np.float32), key=f"{source.key}@{size}")


class SuperResolver:
    """Per-stream 2x temporal super-resolution.

    Args:
        net: the network (see :func:`load_sr_net`); None loads ``config.weights``.
        config: stage options.
        device: where to run when ``config.device`` is None (default: the CPU).
        backend: inference backend of the streaming step (None: ``config.backend``).
        backend_options: its options.
    Attributes:
        backend_choice: what the backend request resolved to (None in window mode).
    """

    def __init__(self, net: SRNet | None = None, config: SuperResolutionConfig | None = None,
                 device: torch.device | str | None = None, backend: str | None = None,
                 backend_options: BackendOptions | None = None):
        self.config = config or SuperResolutionConfig()
        self.device = torch.device(self.config.device or device or "cpu")
        self.net = (net if net is not None else load_sr_net(self.config.weights, self.device)).to(self.device).eval()
        self.state = self.net.new_state()
        self.window = RingBuffer(self.net.frames)
        self._key: str | None = None
        self.backend_choice: BackendChoice | None = None
        self._step: Runner | None = None
        self._past: tuple[torch.Tensor, ...] = ()
        if self.config.mode == "stream":
            check_backend(backend or self.config.backend)
            self._step = self._load_step(backend or self.config.backend, backend_options)

    def _load_step(self, backend: str, options: BackendOptions | None) -> Runner:
        spec, self._past = SRStepGraph(self.net).eval().spec(self.device)
        runner, self.backend_choice = accelerate(spec, backend, options)
        return runner

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    @property
    def output_size(self) -> int:
        return 2 * self.net.config.input_size

    @property
    def frames_seen(self) -> int:
        """Frames since the last reset."""
        return self.state.steps

    def reset(self) -> None:
        """Forget the past frames (face lost, source changed, new clip)."""
        self.state.reset()
        self.window.reset()

    def upscale_tensor(self, frame: torch.Tensor) -> torch.Tensor:
        """``(1, 3, S, S)`` float in ``[0, 1]`` on the device -> ``(1, 3, 2S, 2S)`` (not clamped)."""
        with torch.inference_mode():
            if self._step is not None:
                fresh = torch.full((1,), self.state.steps == 0, dtype=torch.bool, device=self.device)
                out, *past = self._step(frame, fresh, *self._past)
                self._past = tuple(past)
            else:
                self.window.push(frame)
                clip = self.window.ordered().permute(1, 2, 0, 3, 4)  # (1, 3, n, S, S)
                out = self.net(clip, n_out=1)[:, :, 0]
        self.state.steps += 1
        return out

    def __call__(self, crop: np.ndarray, key: str | None = None) -> np.ndarray:
        """Lift one frame.

        Args:
            crop: ``(S, S, 3) uint8`` RGB, ``S = input_size``.
            key: identifies the stream's source (e.g. ``SourceFace.key``); a new key resets the past.
        Returns:
            ``(2S, 2S, 3) uint8`` RGB.
        """
        if crop.shape != (self.input_size, self.input_size, 3) or crop.dtype != np.uint8:
            raise ValueError(f"SR input must be ({self.input_size}, {self.input_size}, 3) uint8, "
                             f"got {crop.shape} {crop.dtype}")
        if key != self._key:
            self.reset()
            self._key = key
        return tensor_to_image(self.upscale_tensor(image_to_tensor(crop, self.device)))
