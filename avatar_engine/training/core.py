"""The trainer core shared by every training loop of the project (base model, SR, enrollment).

* :func:`load_toml_config`: a TOML file into a typed dataclass config (:mod:`avatar_engine.config`),
  with ``AvatarError`` messages for missing files, bad TOML and unknown keys.
* :func:`seed_all`: Python, NumPy and torch seeds.
* :class:`Checkpoint`: resumable state in one file, written atomically (temporary file, then
  ``os.replace``) by rank 0 only, loaded with ``weights_only=True``.
* :class:`RunLog`: ``loss_log.jsonl`` lines (``{"kind", "step", ...}``), rank 0 only.
* :func:`run_steps`: the loop: ``step_fn(batch) -> {loss: float}`` over a batch iterator from
  ``start`` to ``steps``, a progress bar, loss means logged every ``log_every`` steps (averaged over
  the DDP ranks), a checkpoint every ``checkpoint_every`` steps and at the end, and an optional
  ``validate(step)`` every ``val_every`` steps.

Distribution (process group set up and torn down) is :func:`avatar_engine.training.ddp.distributed`.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from avatar_engine.config import config_from_dict
from avatar_engine.errors import AvatarError, InputFileError
from avatar_engine.training.ddp import DistInfo, all_reduce_mean

__all__ = ["read_toml", "load_toml_config", "seed_all", "Checkpoint", "RunLog", "LoopPeriods", "LoopResult", "run_steps"]


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The TOML file ``path`` as a dict.

    Raises:
        InputFileError: no such file (``"<what> not found: <path>"``). AvatarError: unreadable or bad TOML.
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise AvatarError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AvatarError(f"bad {what} {path}: {exc}") from None


def load_toml_config(cls: type, path: str | Path, section: str | None = None,
                     overrides: dict[str, Any] | None = None, what: str = "config",
                     **fields: Any):
    """Read TOML ``path`` (or its ``[section]``) into dataclass ``cls``
    (:func:`avatar_engine.config.config_from_dict`: nested tables become nested dataclasses, unknown
    keys are an error). ``overrides`` (values not None) replace top-level values; ``fields`` are
    passed as they are (e.g. nested configs the caller built).

    Raises:
        InputFileError: no such file. AvatarError: unreadable file, bad TOML, unknown keys or bad values.
    """
    data = read_toml(path, what)
    if section is not None:
        data = data.get(section, {})
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}, **fields}
    try:
        return config_from_dict(cls, data)
    except (ValueError, TypeError) as exc:
        raise AvatarError(f"bad {what} {path}: {exc}") from None


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class Checkpoint:
    """One resumable state file (a dict of tensors, state dicts and plain values).

    ``save`` writes on rank 0 only (``is_main``), atomically: a crash mid-write leaves the previous
    checkpoint intact. ``load`` returns None when there is none.
    """

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path, self.is_main = Path(path), is_main

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location=device, weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


class RunLog:
    """Appends JSON lines ``{"kind": kind, "step": step, **values}`` to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path, self.is_main = Path(path), is_main

    def write(self, kind: str, step: int, values: dict[str, float], digits: int = 6) -> None:
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step,
                                **{k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}}) + "\n")


@dataclass
class LoopPeriods:
    """Periods of :func:`run_steps`, in steps (0: never, except the checkpoint at the end)."""

    log_every: int = 10
    checkpoint_every: int = 100
    val_every: int = 0


@dataclass
class LoopResult:
    """What :func:`run_steps` did: last step, steps this run, seconds, last logged means, last validation."""

    step: int
    steps_this_run: int
    seconds: float
    last_losses: dict[str, float]
    last_val: dict[str, float]


def run_steps(batches: Iterable, step_fn: Callable[[Any], dict[str, float]], start: int, steps: int,
              save: Callable[[int], None], dist: DistInfo, periods: LoopPeriods, log: RunLog | None = None,
              validate: Callable[[int], dict[str, float]] | None = None, progress: bool = False,
              desc: str = "train") -> LoopResult:
    """Run steps ``start + 1 .. steps`` (see the module docstring).

    Args:
        batches: one batch per step (at least ``steps - start`` of them).
        step_fn: one optimisation step -> loss values (floats).
        save: ``save(step)`` writes the checkpoint (the caller's :class:`Checkpoint`; it is called on
            every rank, :meth:`Checkpoint.save` writes on rank 0).
        validate: ``validate(step)`` -> values logged as ``kind = "val"`` (rank 0 only).
    """
    t0 = time.time()
    acc: dict[str, float] = {}
    counts: dict[str, int] = {}
    last: dict[str, float] = {}
    last_val: dict[str, float] = {}
    step = start
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not (progress and dist.is_main),
               leave=False)
    it = iter(batches)
    while step < steps:
        parts = step_fn(next(it))
        step += 1
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        bar.update(1)
        if (periods.log_every and step % periods.log_every == 0) or step == steps:
            last = {k: v / counts[k] for k, v in acc.items()}
            if "loss" in last:
                last["loss"] = float(all_reduce_mean(torch.tensor(last["loss"], device=dist.device)))
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            acc, counts = {}, {}
            if log is not None:
                log.write("train", step, {"time_s": round(time.time() - t0, 2), **last})
        if validate is not None and dist.is_main and ((periods.val_every and step % periods.val_every == 0)
                                                      or step == steps):
            last_val = validate(step)
            if log is not None:
                log.write("val", step, last_val, digits=5)
        if (periods.checkpoint_every and step % periods.checkpoint_every == 0) or step == steps:
            save(step)
    bar.close()
    if step == start:
        save(step)
    return LoopResult(step, step - start, time.time() - t0, last, last_val)
