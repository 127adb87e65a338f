"""Where the shipped weights live (``avatar_engine/weights/``: safetensors + model cards), and the
safetensors format every network of the package is saved in: its state dict plus its config as JSON
in the file's metadata (``config``) and a ``format`` tag."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from avatar_engine.errors import WeightsError

__all__ = ["WEIGHTS_DIR", "save_module", "load_module"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""The package's weight folder (installed as package data)."""


def save_module(module: torch.nn.Module, config: dict[str, Any], path: str | Path, format_tag: str,
                metadata: dict[str, str] | None = None, half: bool = False) -> None:
    """Write ``module``'s state dict (fp16 if ``half``), ``config`` (metadata ``config``, JSON) and
    ``format_tag`` (metadata ``format``) to a safetensors file; ``metadata`` adds string entries
    (``config`` and ``format`` are reserved)."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    reserved = {"config", "format"} & set(metadata or {})
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved")
    meta = {**(metadata or {}), "config": json.dumps(config), "format": format_tag}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_module(path: str | Path, build: Callable[[dict[str, Any]], torch.nn.Module], what: str,
                device: torch.device | str = "cpu") -> torch.nn.Module:
    """The module ``build(config)`` with the float32 weights of a file written by :func:`save_module`,
    in eval mode on ``device``.

    Raises:
        WeightsError: missing, unreadable or corrupt file, weights that do not fit the config, or
            non-finite values (``what`` names the network in the message).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{what} weights not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p), device="cpu")
        module = build(json.loads(meta["config"]))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"corrupt {what} weight file {p}: {reason}") from None
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{what} weight file {p} does not match its config: {str(exc).splitlines()[0]}") from None
    if not all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point()):
        raise WeightsError(f"{what} weight file {p} holds non-finite values")
    return module.to(device).eval()
