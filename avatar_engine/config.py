"""Typed dataclass configs from TOML / dicts (one loader for every config of the project) and shared defaults."""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

__all__ = ["config_from_dict", "load_config", "DEFAULT_RENDERER"]

DEFAULT_RENDERER = "neural"
"""The renderer of every command and every library config that names one (the shipped trained model)."""


def config_from_dict(cls: type, data: dict[str, Any]):
    """Build dataclass ``cls`` from a (nested) dict, checking the keys; nested dataclass fields recurse.

    Raises:
        ValueError: an unknown key.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path, cls: type, section: str | None = None):
    """Read a TOML file (optionally one ``[section]`` of it) into the dataclass ``cls``."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if section is not None:
        data = data.get(section, {})
    return config_from_dict(cls, data)
