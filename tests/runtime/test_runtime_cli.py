"""`avatar-engine start` and `avatar-engine doctor` as a user runs them (console script, subprocess)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from avatar_engine.io.video import iter_frames, probe_video
from runtime.capture import list_cameras
from runtime.doctor import setup_instructions

PHOTO = "images/val/P152/I036.png"
CLIP = "clips/val/P048/C077.mp4"  # 512x512, 30 fps


def _exe() -> str:
    exe = shutil.which("avatar-engine")
    assert exe, "console script avatar-engine is not installed"
    return exe


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return env


def test_start_without_a_camera_lists_cameras_and_suggests_a_clip(data_dir):
    if list_cameras():
        pytest.skip("this machine has a camera")
    t0 = time.monotonic()
    proc = subprocess.run([_exe(), "start", "--source", str(data_dir / PHOTO)], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1] == ("error: camera 0 not found; cameras found: none. Connect a webcam, choose another with "
                       "--camera N, or play a video as the camera with --camera clip.mp4 (see: avatar-engine doctor)")
    assert time.monotonic() - t0 < 15  # fails fast: no model is loaded before the camera is checked


@pytest.mark.slow
def test_sigint_stops_cleanly_and_leaves_a_playable_recording(data_dir, tmp_path):
    """Ctrl-C is the normal way to end a session: exit status 0, summary printed, mp4 finished."""
    out = tmp_path / "live.mp4"
    proc = subprocess.Popen([_exe(), "start", "--source", str(data_dir / PHOTO), "--camera", str(data_dir / CLIP),
                             "--loop", "--no-preview", "--no-virtual-camera", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 60
        started = False
        while time.monotonic() < deadline and not started:  # wait for the session to run, then 3 s more
            line = proc.stderr.readline()
            started = "neutral pose taken" in line
            assert line or proc.poll() is None, "avatar-engine exited early"
        assert started
        time.sleep(3.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped (interrupted)" in stdout and f"recorded {out}" in stdout
    assert "Traceback" not in stderr
    info = probe_video(out)
    assert (info.width, info.height) == (256, 256) and info.fps == pytest.approx(30.0)
    assert info.duration_s > 3.5
    assert sum(1 for _ in iter_frames(out)) == info.frames


def _close_window(display: str, title: str) -> bool:
    """Ask the top-level window titled ``title`` to close, as a window manager's close button does
    (a WM_DELETE_WINDOW message through libX11). False when libX11 or the window is not found."""
    path = ctypes.util.find_library("X11")
    if path is None:
        return False
    x = ctypes.cdll.LoadLibrary(path)
    x.XOpenDisplay.restype = ctypes.c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XDefaultRootWindow.restype = ctypes.c_ulong
    x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x.XInternAtom.restype = ctypes.c_ulong
    x.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x.XQueryTree.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong),
                             ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.POINTER(ctypes.c_ulong)),
                             ctypes.POINTER(ctypes.c_uint)]
    x.XFetchName.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_char_p)]

    class ClientMessage(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                    ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]

    class Event(ctypes.Union):
        _fields_ = [("xclient", ClientMessage), ("pad", ctypes.c_long * 24)]

    x.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(Event)]
    d = x.XOpenDisplay(display.encode())
    if not d:
        return False
    try:
        root, parent, n = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.c_uint()
        children = ctypes.POINTER(ctypes.c_ulong)()
        x.XQueryTree(d, x.XDefaultRootWindow(d), ctypes.byref(root), ctypes.byref(parent), ctypes.byref(children),
                     ctypes.byref(n))
        for i in range(n.value):
            name = ctypes.c_char_p()
            if x.XFetchName(d, children[i], ctypes.byref(name)) and name.value == title.encode():
                ev = Event()
                ev.xclient.type = 33  # ClientMessage
                ev.xclient.window = children[i]
                ev.xclient.message_type = x.XInternAtom(d, b"WM_PROTOCOLS", 0)
                ev.xclient.format = 32
                ev.xclient.data[0] = x.XInternAtom(d, b"WM_DELETE_WINDOW", 0)
                x.XSendEvent(d, children[i], 0, 0, ctypes.byref(ev))
                x.XFlush(ctypes.c_void_p(d))
                return True
        return False
    finally:
        x.XCloseDisplay(ctypes.c_void_p(d))


@pytest.fixture()
def xvfb_display():
    """A virtual X display (Xvfb, installed by CI) for the preview window."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed")
    number = next(n for n in range(90, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    server = subprocess.Popen([exe, f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            assert time.monotonic() < deadline and server.poll() is None, "Xvfb did not start"
            time.sleep(0.1)
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_preview_window_on_a_display(data_dir, xvfb_display):
    """With a display, the preview window opens and shows the avatar; closing the window ends the session."""
    env = {**_env(), "DISPLAY": xvfb_display}
    proc = subprocess.Popen([_exe(), "start", "--source", str(data_dir / PHOTO), "--camera", str(data_dir / CLIP),
                             "--loop", "--no-virtual-camera", "--stats", "--duration", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            lines.append(line)
            if not line or "neutral pose taken" in line:
                break
        shot = None
        try:
            from PIL import ImageGrab

            for _ in range(20):  # until the window has been painted
                time.sleep(0.5)
                shot = ImageGrab.grab(xdisplay=xvfb_display)
                if shot.getbbox() is not None:
                    break
        except (ImportError, OSError):
            pass  # no screenshot support: the run itself is still checked
        closed = _close_window(xvfb_display, "avatar-engine")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + stderr
    assert proc.returncode == 0, stderr
    assert "-> preview window" in stderr and "hotkeys: C neutral pose" in stderr
    assert "no display" not in stderr
    assert ("stopped (window closed)" if closed else "stopped (duration)") in stdout
    if shot is not None:
        assert shot.getbbox() is not None, "the preview window showed nothing"
        x0, y0, x1, y1 = shot.getbbox()  # the window: the 256-px avatar shown at 480 px, camera inset
        assert y1 - y0 >= 480 and x1 - x0 >= 480


def test_doctor_on_this_machine():
    proc = subprocess.run([_exe(), "doctor"], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    import mediapipe
    import torch

    assert f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" in out
    assert torch.__version__ in out and mediapipe.__version__ in out
    for name in ("python", "torch", "mediapipe", "opencv", "gpu", "display", "cameras", "virtual camera"):
        assert f"] {name}" in out
    if sys.platform.startswith("linux"):
        assert 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1' in out
        assert "/etc/modules-load.d/v4l2loopback.conf" in out and "/etc/modprobe.d/v4l2loopback.conf" in out
    if not list_cameras():
        assert "none found" in out
        assert "[FAIL] virtual camera" in out  # no v4l2loopback device here


def test_doctor_instructions_for_other_systems():
    win, mac = setup_instructions("win32"), setup_instructions("darwin")
    for text in (win, mac):
        assert "OBS Virtual Camera" in text and "Start Virtual Camera" in text and "modprobe" not in text
    assert "Privacy & Security" in mac
