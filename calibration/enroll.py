"""``avatar-engine enroll``: guided capture -> prepared frames -> personalized weights -> profile.

:func:`enroll` chains :func:`calibration.capture.run_capture`, :func:`calibration.personalize.prepare_capture`,
:func:`calibration.personalize.personalize` and :meth:`calibration.profiles.ProfileStore.write`. The
capture video and the prepared crops live in a temporary folder that is removed afterwards: a
profile keeps the weights (the renderer's and the mouth stage's), the neutral landmarks, the source
photo and the contact sheet only.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from avatar_engine.face.landmarks import detect_source_landmarks
from avatar_engine.io.image import read_image, write_image
from avatar_engine.models.base_model import save_weights
from avatar_engine.models.mouth_net import save_mouth_net
from calibration.capture import CaptureConfig, CaptureResult, FrameSource, Preview, run_capture
from calibration.personalize import PersonalizeConfig, PersonalizeResult, personalize, prepare_capture
from calibration.profiles import BANK_FILE, MOUTH_FILE, Profile, ProfileStore, check_name, file_sha256

__all__ = ["EnrollConfig", "EnrollReport", "enroll"]

log = logging.getLogger("avatar_engine")


@dataclass
class EnrollConfig:
    """One enrollment.

    Attributes:
        name: profile name. source_photo: the photo the avatar shows (None: the capture's best frontal frame).
        capture_label: how the capture is described in ``profile.toml`` (``camera 0``, ``video clip.mp4``).
        capture, personalize: the two stages' options.
    """

    name: str
    source_photo: Path | None = None
    capture_label: str = "camera"
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)


@dataclass
class EnrollReport:
    """What :func:`enroll` did: the profile written, the capture, the personalization, stage seconds."""

    profile: Profile
    capture: CaptureResult
    result: PersonalizeResult
    seconds: dict[str, float]

    def lines(self) -> list[str]:
        r, c, s = self.result, self.capture, self.seconds
        out = [f"capture: {c.frames_kept} of {c.frames_seen} frames usable ({c.seconds:.0f} s)"
               + ("; rejected: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in c.rejected.items())
                  if c.rejected else ""),
               f"adapted {r.adapt.steps} steps in {r.adapt.seconds:.0f} s on {r.frames_adapt} frames from "
               f"{r.init.name}; scored on {r.frames_held} held-back frames:"]
        for key, label, unit in (("psnr", "PSNR", " dB"), ("mouth_l1", "mouth L1", ""),
                                 ("identity_distance", "identity distance", ""), ("heldout_loss", "loss", "")):
            out.append(f"  {label:<18} before {r.before[key]:.4f}{unit}  after {r.after[key]:.4f}{unit}")
        if r.bank is not None:
            b = r.bank
            out.append(f"mouth bank: {len(b.bank)} of your own mouth interiors kept; held-back mouth L1 with "
                       f"procedural teeth {b.before:.4f}, with yours {b.after:.4f} ({b.metrics['frames']} frames)")
        if r.mouth is not None:
            m = r.mouth
            out.append(f"mouth stage: {m.steps} steps in {m.seconds:.0f} s; held-back mouth L1 before "
                       f"{m.before:.4f}  after {m.after:.4f}")
        out.append(f"stages: capture {s['capture']:.0f} s, prepare {s['prepare']:.0f} s, "
                   f"personalize {s['personalize']:.0f} s")
        out.append(f"profile {self.profile.name!r} written to {self.profile.path}")
        return out


def _metrics_table(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in values.items()}


def enroll(config: EnrollConfig, camera: FrameSource, store: ProfileStore, preview: Preview | None = None,
           progress: Callable[[int, int, float, float], None] | None = None, identity_encoder=None) -> EnrollReport:
    """Capture, personalize and save profile ``config.name`` (replacing an older one only when complete).

    Raises:
        ProfileError: a bad name. NoFaceError / ImageReadError: a bad source photo (checked first).
        CaptureCancelled, AvatarError: the capture was cancelled or had too few usable frames.
    """
    check_name(config.name)
    photo = None
    if config.source_photo is not None:
        photo = read_image(config.source_photo)
        detect_source_landmarks(photo, what=str(config.source_photo))
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="avatar-enroll-") as work:
        t = time.perf_counter()
        cap = run_capture(camera, Path(work) / "capture.mp4", config.capture, preview)
        seconds["capture"] = time.perf_counter() - t
        t = time.perf_counter()
        clips = prepare_capture(cap.video, Path(work), identity=config.name)
        seconds["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        result = personalize(clips, config.personalize, progress, identity_encoder)
        seconds["personalize"] = time.perf_counter() - t
    a = config.personalize.adapt
    meta = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": str(config.source_photo.resolve()) if config.source_photo is not None else "capture (best frontal frame)",
        "capture": config.capture_label,
        "base_weights": result.init.name,
        "base_weights_sha256": file_sha256(result.init),
        "adapt": {"params": a.params, "steps": result.adapt.steps, "seconds": round(result.adapt.seconds, 2),
                  "lr": a.lr, "batch_size": a.batch_size, "frames_adapt": result.frames_adapt,
                  "frames_held_back": result.frames_held},
        "metrics": {"before": _metrics_table(result.before), "after": _metrics_table(result.after)},
    }
    bank = result.bank
    if bank is not None:
        meta["mouth_bank"] = {"exemplars": len(bank.bank), "held_back": _metrics_table(bank.metrics)}
    mouth = result.mouth
    if mouth is not None:
        meta["mouth"] = {"base_weights": mouth.init.name, "base_weights_sha256": file_sha256(mouth.init),
                         "steps": mouth.steps, "seconds": round(mouth.seconds, 2),
                         "held_back_mouth_l1": {"before": round(mouth.before, 5), "after": round(mouth.after, 5)}}

    def fill(folder: Path) -> None:
        save_weights(result.model, folder / "weights.safetensors",
                     {"kind": "personalized", "profile": config.name, "base_sha256": meta["base_weights_sha256"]},
                     half=True)
        if bank is not None:
            bank.bank.save(folder / BANK_FILE, {"profile": config.name})
        if mouth is not None:
            save_mouth_net(mouth.net, folder / MOUTH_FILE, {"kind": "personalized", "profile": config.name})
        np.save(folder / "neutral_landmarks.npy", cap.source_landmarks.astype(np.float32))
        write_image(folder / "source.png", photo if photo is not None else cap.source_frame)
        write_image(folder / "contact_sheet.png", result.sheet)

    profile = store.write(config.name, meta, fill)
    return EnrollReport(profile, cap, result, seconds)
