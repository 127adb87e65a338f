"""``avatar-engine doctor``: is this machine ready for a live session, and if not, what to do.

Checks Python, torch, mediapipe (a face-mesh graph is built), OpenCV, the display (preview window),
the cameras, the GPU, whether a virtual camera backend opens, and which inference backends load, with
their milliseconds per frame of the neural renderer's graph (:func:`check_backends`); then prints the
setup steps of the virtual camera for this OS (v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS).
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass

from runtime.capture import list_cameras
from runtime.preview import display_available
from runtime.vcam import MODPROBE_LINE

__all__ = ["Check", "run_checks", "check_backends", "setup_instructions", "format_report"]

_LINUX_OPTIONS = 'options v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1'


@dataclass
class Check:
    """One line of the doctor's report.

    Attributes:
        name: what was checked. status: ``"ok"``, ``"warn"`` (works, with a limitation) or ``"fail"``
            (a live session cannot run). detail: what was found. fix: what to do ("" when nothing).
    """

    name: str
    status: str
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_python() -> Check:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) != (3, 11):
        return Check("python", "warn", text, "avatar-engine is tested with Python 3.11")
    return Check("python", "ok", text)


def _check_torch() -> tuple[Check, Check]:
    try:
        import torch
    except Exception as exc:  # broken install: report, do not crash the doctor
        fail = Check("torch", "fail", f"cannot import torch: {exc}", "pip install torch==2.13.0")
        return fail, Check("gpu", "warn", "unknown (torch missing)")
    torch_check = Check("torch", "ok", f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        gpu = Check("gpu", "ok", f"CUDA: {names} (use --device cuda)")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        gpu = Check("gpu", "ok", "Apple MPS (use --device mps)")
    else:
        gpu = Check("gpu", "warn", "none usable by torch: the renderer runs on the CPU",
                    "fine for --renderer mesh; a neural renderer needs a CUDA GPU for live speed")
    return torch_check, gpu


def _check_mediapipe() -> Check:
    try:
        import mediapipe as mp

        mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True)
        mesh.close()
    except Exception as exc:
        return Check("mediapipe", "fail", f"face mesh unavailable: {exc}",
                     "pip install mediapipe==0.10.21 'numpy<2' (newer mediapipe ships no face mesh model)")
    return Check("mediapipe", "ok", f"{_version('mediapipe')}, face mesh model loads")


def _check_opencv() -> Check:
    import cv2

    gui = "none"
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
    return Check("opencv", "ok", f"{cv2.__version__}, GUI backend {gui}")


def _check_display() -> Check:
    if display_available():
        return Check("display", "ok", "preview window available")
    return Check("display", "warn", "no display (DISPLAY/WAYLAND_DISPLAY unset): no preview window",
                 "run from a desktop session, or use --no-preview (hotkeys need the window; Ctrl-C stops)")


def _check_cameras() -> Check:
    cams = list_cameras()
    if not cams:
        where = " (no /dev/video*)" if sys.platform.startswith("linux") else ""
        return Check("cameras", "warn", "none found" + where,
                     "connect a webcam, or play a video as the camera: avatar-engine start --camera clip.mp4")
    return Check("cameras", "ok", ", ".join(str(c) for c in cams) + " (pick one with --camera N)")


def _check_virtual_camera() -> Check:
    try:
        import pyvirtualcam
    except Exception as exc:
        return Check("virtual camera", "fail", f"pyvirtualcam unavailable: {exc}", "pip install pyvirtualcam==0.15.0")
    backends = ", ".join(pyvirtualcam.camera.BACKENDS) or "none"
    try:
        with pyvirtualcam.Camera(640, 480, 30, fmt=pyvirtualcam.PixelFormat.RGB) as cam:
            device, backend = cam.device, cam.backend
    except Exception as exc:
        reason = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return Check("virtual camera", "fail", f"pyvirtualcam {pyvirtualcam.__version__} (backends: {backends}): "
                     f"cannot open: {reason}", "see the setup steps below")
    return Check("virtual camera", "ok", f"pyvirtualcam {pyvirtualcam.__version__}: {backend} -> {device}")


def check_backends(device: str = "cpu", threads: int = 1, runs: int = 5) -> list[Check]:
    """One line per inference backend: whether it loads on ``device`` and its milliseconds per frame of the
    neural renderer's graph (shipped weights, made-up inputs, ``threads`` CPU threads as the commands'
    default). ``compile`` is listed but not timed on the CPU (its first compile takes a minute or more).
    The first run exports the ONNX graph once (half a minute); later runs load it from the cache."""
    import torch

    from avatar_engine.backends import BackendOptions, available_backends, load_backend, time_runner
    from avatar_engine.backends.base import BackendUnavailable
    from avatar_engine.errors import WeightsError
    from avatar_engine.models.base_model import load_model
    from avatar_engine.models.frame_graph import DetailTransfer, NeuralFrameGraph

    status = available_backends(device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        graph = NeuralFrameGraph(load_model(device=device), DetailTransfer().to(device))  # as the renderer runs it
        spec = graph.eval().synthetic_spec()
    except WeightsError as exc:
        spec = None
        status = {name: why or f"not timed: {exc}" for name, why in status.items()}
    checks = []
    try:
        for name, why in status.items():
            label = f"backend {name}"
            if why:
                checks.append(Check(label, "warn" if name != "eager" else "fail", f"not available: {why}"))
            elif name == "compile" and torch.device(device).type == "cpu":
                checks.append(Check(label, "ok", "loads; not timed (compiles for a minute; "
                                                 "see benchmarks/bench_backends.py)"))
            elif spec is not None:
                try:
                    runner = load_backend(spec, name, BackendOptions(threads=threads))
                    ms = time_runner(runner, spec.example_inputs, runs=runs, warmup=2)
                    checks.append(Check(label, "ok", f"{ms:.1f} ms per {spec.name} frame ({threads} thread)"))
                except BackendUnavailable as exc:
                    checks.append(Check(label, "warn", f"does not load: {exc}"))
    finally:
        torch.set_num_threads(old)
    return checks


def run_checks(backends: bool = True) -> list[Check]:
    """Run every check (a second or two: builds a face-mesh graph, opens the virtual camera briefly; the
    backend timings a few seconds more, half a minute the first time)."""
    torch_check, gpu = _check_torch()
    checks = [_check_python(), torch_check, _check_mediapipe(), _check_opencv(), gpu, _check_display(),
              _check_cameras(), _check_virtual_camera()]
    if backends and torch_check.status == "ok":
        checks += check_backends()
    return checks


def setup_instructions(plat: str | None = None) -> str:
    """How to create the virtual camera on ``plat`` (``sys.platform`` style; default this machine)."""
    plat = sys.platform if plat is None else plat
    if plat.startswith("linux"):
        return "\n".join([
            'Virtual camera on Linux (v4l2loopback creates "Avatar Cam" as /dev/video10):',
            "  1. install the module:  sudo apt install v4l2loopback-dkms   (Fedora: sudo dnf install "
            "v4l2loopback; Arch: sudo pacman -S v4l2loopback-dkms)",
            f"  2. load it now:         {MODPROBE_LINE}",
            "  3. make it permanent (loaded at every boot with the same options):",
            "       echo v4l2loopback | sudo tee /etc/modules-load.d/v4l2loopback.conf",
            f"       echo '{_LINUX_OPTIONS}' | sudo tee /etc/modprobe.d/v4l2loopback.conf",
            "  4. avatar-engine start --source me.png, then choose \"Avatar Cam\" as the camera in Zoom, Teams "
            "or Meet (restart the app if it was already open). With Secure Boot, the module must be signed "
            "(the dkms package asks to enroll a key).",
        ])
    if plat == "darwin":
        return "\n".join([
            "Virtual camera on macOS (OBS Virtual Camera, macOS 13+):",
            "  1. install OBS Studio 30 or newer (https://obsproject.com or: brew install --cask obs)",
            "  2. open OBS once, click \"Start Virtual Camera\", and allow the system extension in System "
            "Settings > Privacy & Security; then stop it and quit OBS",
            "  3. avatar-engine start --source me.png, then choose \"OBS Virtual Camera\" in Zoom, Teams or Meet "
            "(restart the app if it was already open)",
        ])
    return "\n".join([
        "Virtual camera on Windows (OBS Virtual Camera):",
        "  1. install OBS Studio 26 or newer (https://obsproject.com or: winget install OBSProject.OBSStudio)",
        "  2. open OBS once and click \"Start Virtual Camera\" (this registers the device); then stop it and "
        "close OBS",
        "  3. avatar-engine start --source me.png, then choose \"OBS Virtual Camera\" in Zoom, Teams or Meet "
        "(restart the app if it was already open)",
    ])


def format_report(checks: list[Check], plat: str | None = None) -> str:
    """The doctor's text: one line per check (with its fix), then this OS's virtual-camera steps."""
    mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    lines = [f"avatar-engine doctor ({platform.system()} {platform.release()}, {platform.machine()})"]
    for c in checks:
        lines.append(f"  [{mark[c.status]}] {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"         {'':<{width}}  -> {c.fix}")
    vcam = next((c for c in checks if c.name == "virtual camera"), None)
    lines.append("")
    if vcam is not None and vcam.status == "ok":
        lines.append("The virtual camera works: run avatar-engine start --source me.png and pick it in your "
                     "meeting app.")
        lines.append("")
    lines.append(setup_instructions(plat))
    return "\n".join(lines)
