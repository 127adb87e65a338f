"""Where the shipped weights live: ``avatar_engine/weights/`` (safetensors + model cards)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""The package's weight folder (installed as package data)."""
