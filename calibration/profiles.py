"""Enrollment profiles on disk: one folder per name under the user's data directory.

Layout of ``<root>/<name>/`` (format :data:`FORMAT_VERSION`)::

    profile.toml             format_version, name, created (UTC), source, capture, base weights and
                             their SHA-256, the adapted weights' SHA-256, fine-tuning settings, and
                             [metrics.before] / [metrics.after] on the held-back frames
    weights.safetensors      the personalized neural model (the renderer's weight format, fp16)
    mouth_bank.safetensors   the person's own mouth interiors (optional; :mod:`avatar_engine.geometry.mouth_bank`),
                             SHA-256 ``mouth_bank_sha256`` in profile.toml
    mouth.safetensors        the personalized learned mouth stage (optional: ``enroll --mouth-steps N``),
                             SHA-256 ``mouth_sha256``
    neutral_landmarks.npy    (478, 3) float32 landmarks of the neutral frame, in its pixels
    source.png               the photo the avatar shows
    contact_sheet.png        held-back frames: source | ground truth | before | after

``<root>`` is ``$XDG_DATA_HOME/avatar-engine/profiles`` (``~/.local/share/avatar-engine/profiles``)
unless given. A profile is written into a hidden temporary folder next to it and renamed into place
only when complete (:meth:`ProfileStore.write`), so a half-written profile never replaces a good one.
:meth:`ProfileStore.load` checks everything a renderer will rely on and raises
:class:`~avatar_engine.errors.ProfileError` with one line when something is missing, corrupt or
does not fit.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from avatar_engine.errors import ProfileError, WeightsError

__all__ = ["FORMAT_VERSION", "FILES", "default_profiles_dir", "check_name", "file_sha256", "Profile", "ProfileStore", "dump_toml",
           "profile_weights", "profile_renderer_options", "MOUTH_FILE", "BANK_FILE", "OPTIONAL_FILES"]

log = logging.getLogger("avatar_engine")

FORMAT_VERSION = 1
FILES = ("profile.toml", "weights.safetensors", "neutral_landmarks.npy", "source.png", "contact_sheet.png")
"""The files of a complete profile."""
MOUTH_FILE = "mouth.safetensors"
"""Optional: the personalized learned mouth stage."""
BANK_FILE = "mouth_bank.safetensors"
"""Optional: the person's mouth bank."""
OPTIONAL_FILES: dict[str, tuple[str, str]] = {BANK_FILE: ("mouth_bank_sha256", "mouth_bank"),
                                              MOUTH_FILE: ("mouth_sha256", "mouth_weights")}
"""Optional file -> (its hash key in profile.toml, the ``create_renderer`` keyword it becomes)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_profiles_dir() -> Path:
    """``$XDG_DATA_HOME/avatar-engine/profiles`` (default ``~/.local/share/avatar-engine/profiles``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "avatar-engine" / "profiles"


def check_name(name: str) -> str:
    """A profile name: letters, digits, ``_ . -``, up to 64 characters, not starting with a dot or dash."""
    if not _NAME.match(name or "") or ".." in name:
        raise ProfileError(f"bad profile name {name!r}: use letters, digits, '_', '.', '-' (up to 64)")
    return name


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """TOML text of a dict of scalars, lists and nested dicts (tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines += ["", f"[{name}]", dump_toml(v, name + ".").strip("\n")]
    return "\n".join(lines).strip("\n") + "\n"


@dataclass
class Profile:
    """A loaded, checked profile: its folder, ``profile.toml`` content, the neutral landmarks."""

    name: str
    path: Path
    meta: dict[str, Any]
    neutral_landmarks: np.ndarray

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    def optional(self, file: str) -> Path | None:
        """One of :data:`OPTIONAL_FILES` of this profile, None when it has none."""
        path = self.path / file
        return path if path.is_file() else None

    @property
    def mouth_weights(self) -> Path | None:
        """The personalized mouth stage, None when the profile has none."""
        return self.optional(MOUTH_FILE)

    @property
    def mouth_bank(self) -> Path | None:
        """The person's mouth bank, None when the profile has none."""
        return self.optional(BANK_FILE)

    def renderer_options(self) -> dict[str, Path]:
        """``create_renderer("neural", ...)`` keyword arguments: the weights and the optional files present."""
        out = {"weights": self.weights}
        for file, (_, option) in OPTIONAL_FILES.items():
            if (path := self.optional(file)) is not None:
                out[option] = path
        return out

    @property
    def source(self) -> Path:
        return self.path / "source.png"

    @property
    def contact_sheet(self) -> Path:
        return self.path / "contact_sheet.png"


class ProfileStore:
    """The profiles under ``root`` (default :func:`default_profiles_dir`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_profiles_dir()

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        """Names of the profile folders (complete or not), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def load(self, name: str, check_weights: bool = True) -> Profile:
        """Read and check one profile.

        Args:
            check_weights: also load the weights into the network (a corrupt or mismatched file).
        Raises:
            ProfileError: missing, incomplete, corrupt, of another format version, or weights that do not
                match their recorded hash or the network.
        """
        folder = self.path(name)
        if not folder.is_dir():
            known = self.names()
            hint = f" (profiles: {', '.join(known)})" if known else " (none yet: avatar-engine enroll --name NAME)"
            raise ProfileError(f"no profile {name!r} in {self.root}{hint}")
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise ProfileError(f"profile {name!r} is incomplete (missing {', '.join(missing)}): enroll again")
        try:
            meta = tomllib.loads((folder / "profile.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ProfileError(f"profile {name!r} is corrupt (profile.toml: {str(exc).splitlines()[0]})") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ProfileError(f"profile {name!r} has format version {version!r}; this avatar-engine reads "
                               f"version {FORMAT_VERSION}: enroll again")
        try:
            neutral = np.load(folder / "neutral_landmarks.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProfileError(f"profile {name!r} is corrupt (neutral_landmarks.npy: {exc})") from None
        if neutral.shape != (478, 3) or not np.isfinite(neutral).all():
            raise ProfileError(f"profile {name!r} is corrupt (neutral landmarks of shape {neutral.shape})")
        profile = Profile(name, folder, meta, neutral.astype(np.float32))
        if check_weights:
            _check_weights(profile)
        return profile

    def write(self, name: str, meta: dict[str, Any], fill: Callable[[Path], None]) -> Profile:
        """Create or replace profile ``name`` atomically.

        Args:
            meta: ``profile.toml`` content (``format_version``, ``name`` and ``weights_sha256`` are set here).
            fill: writes the other files of :data:`FILES` into the folder it is given.
        Raises:
            ProfileError: ``fill`` left a file out (nothing is replaced).
        """
        final = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        old = self.root / f".{name}.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            missing = [f for f in FILES[1:] if not (tmp / f).is_file()]
            if missing:
                raise ProfileError(f"profile {name!r} not written: {', '.join(missing)} missing")
            head = {"format_version": FORMAT_VERSION, "name": name,
                    "weights_sha256": file_sha256(tmp / "weights.safetensors")}
            for file, (key, _) in OPTIONAL_FILES.items():
                if (tmp / file).is_file():
                    head[key] = file_sha256(tmp / file)
            (tmp / "profile.toml").write_text(dump_toml({**head, **meta}), encoding="utf-8")
            if final.exists():
                final.rename(old)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return self.load(name, check_weights=False)

    def delete(self, name: str) -> Path:
        """Remove profile ``name`` (its whole folder). Raises ProfileError when there is none."""
        folder = self.path(name)
        if not folder.is_dir():
            raise ProfileError(f"no profile {name!r} in {self.root}")
        shutil.rmtree(folder)
        return folder


def _check_weights(profile: Profile) -> None:
    from avatar_engine.geometry.mouth_bank import load_mouth_bank
    from avatar_engine.models.base_model import load_model
    from avatar_engine.models.mouth_net import load_mouth_net

    loaders: dict[str, Callable[[Path], object]] = {"mouth_weights": load_mouth_net, "mouth_bank": load_mouth_bank}
    files = [(profile.weights, "weights_sha256", load_model)]
    for file, (key, option) in OPTIONAL_FILES.items():
        path = profile.optional(file)
        if key in profile.meta and path is None:
            raise ProfileError(f"profile {profile.name!r} is incomplete (missing {file}): enroll again")
        if path is not None:
            files.append((path, key, loaders[option]))
    for path, key, load in files:
        want = profile.meta.get(key)
        if want and file_sha256(path) != want:
            raise ProfileError(f"profile {profile.name!r} is corrupt ({path.name} does not match its hash): "
                               "enroll again")
        try:
            load(path)
        except WeightsError as exc:
            raise ProfileError(f"profile {profile.name!r}: {exc}") from None


def profile_weights(name: str | None, root: str | Path | None = None, live: bool = False) -> Path | None:
    """The neural weight file of profile ``name`` (None when ``name`` is None); see
    :func:`profile_renderer_options` for everything a renderer takes from a profile.

    Args:
        live: a session is already running: a bad profile gives a warning and None (the base model)
            instead of an error.
    Raises:
        ProfileError: the profile is missing, corrupt or mismatched (``live`` False).
    """
    return profile_renderer_options(name, root, live).get("weights")


def profile_renderer_options(name: str | None, root: str | Path | None = None, live: bool = False
                             ) -> dict[str, Path]:
    """``create_renderer("neural", ...)`` keyword arguments of profile ``name`` ({} when ``name`` is None).

    Args:
        live: a session is already running: a bad profile gives a warning and {} (the base model)
            instead of an error.
    Raises:
        ProfileError: the profile is missing, corrupt or mismatched (``live`` False).
    """
    if name is None:
        return {}
    try:
        return ProfileStore(root).load(name).renderer_options()
    except ProfileError as exc:
        if not live:
            raise
        log.warning("%s; using the base model", exc)
        return {}
