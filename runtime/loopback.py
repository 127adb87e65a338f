"""An offline harness for the WebRTC stack: a loopback-only network namespace, headless Chromium.

Why this lives in ``runtime`` and not under ``tests/``: the WebRTC tests *and* the end-to-end
benchmark (``benchmarks/bench_webrtc.py``) need it, nothing may import ``tests/``, and it is a
plain, dependency-free tool (no pytest) that is also useful to anyone checking ``avatar-engine
serve`` on a machine that must not touch the network. The runtime itself never imports it.

Network isolation: WebRTC runs must not send traffic beyond loopback. :func:`loopback_netns`
moves the calling (main) thread into a new, empty network namespace (``unshare(CLONE_NEWNET)``,
needs root / CAP_SYS_ADMIN) where only ``lo`` exists, with 127.0.0.1 and a second loopback address
127.0.0.2 (set up with ioctls, as ``ip addr add 127.0.0.2/8 dev lo label lo:1`` would; aioice
gathers every address except 127.0.0.1, so peers then meet on 127.0.0.2, which is loopback too).
Sockets, threads and subprocesses (Chromium) created from the main thread meanwhile live in that
namespace; afterwards the thread returns to the original namespace. Nothing in there can reach
another machine, whatever the code under test tries. :func:`netns_unavailable_reason` says why it
cannot work here (not root, refused by the container, ...).

Browser: :func:`chromium` runs headless Chromium on a page (fresh profile, fake media devices, the
camera optionally fed from a :func:`write_y4m` file).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["netns_unavailable_reason", "loopback_netns", "write_y4m", "chromium_binary", "chromium"]

CLONE_NEWNET = 0x40000000


_PROBE = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
          "sys.exit(0 if libc.unshare(0x40000000) == 0 else ctypes.get_errno())")


def netns_unavailable_reason() -> str | None:
    """Why :func:`loopback_netns` cannot work here (None when it can); probed in a child process."""
    if not os.path.exists("/proc/self/ns/net"):
        return "no network namespaces on this system"
    if os.geteuid() != 0:
        return "isolating the network (unshare CLONE_NEWNET) needs root"
    status = subprocess.run([sys.executable, "-c", _PROBE], timeout=30).returncode
    if status != 0:
        return f"unshare(CLONE_NEWNET) is refused here ({os.strerror(status)})"
    return None


def _loopback_up() -> None:
    """In the new namespace: bring ``lo`` up and add 127.0.0.2 (as ``lo:1``), with ioctls (no iproute2 needed)."""
    siocgifflags, siocsifflags, siocsifaddr, siocsifnetmask, iff_up = 0x8913, 0x8914, 0x8916, 0x891C, 0x1

    def sockaddr(ip: str) -> bytes:
        return struct.pack("HH4s8s", socket.AF_INET, 0, socket.inet_aton(ip), b"")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in (b"lo", b"lo:1"):
            if name == b"lo:1":
                fcntl.ioctl(sock, siocsifaddr, struct.pack("16s16s", name, sockaddr("127.0.0.2")))
                fcntl.ioctl(sock, siocsifnetmask, struct.pack("16s16s", name, sockaddr("255.0.0.0")))
            flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, struct.pack("16s16s", name, b""))[:18])[1]
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14s", name, flags | iff_up, b""))


@contextlib.contextmanager
def loopback_netns():
    """Run the body with the calling thread in a fresh network namespace holding only loopback."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("loopback_netns must be entered from the main thread")
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        try:
            _loopback_up()
            yield
        finally:
            if libc.setns(original, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(original)


def write_y4m(frames: list[np.ndarray], fps: int, path: Path) -> Path:
    """Write ``(H, W, 3) uint8`` RGB frames (even sizes) as a YUV4MPEG2 file (Chromium's fake camera input)."""
    import av

    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n")
            f.write(yuv.to_ndarray().tobytes())
    return path


def chromium_binary() -> str | None:
    """The Chromium (or Chrome) executable on the PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def chromium(url: str, fake_video: Path | None = None):
    """Headless Chromium on ``url`` (fresh profile, autoplay, fake media devices); killed at the end."""
    binary = chromium_binary()
    assert binary is not None
    profile = tempfile.mkdtemp(prefix="avatar-chromium-")
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--disable-dev-shm-usage", "--mute-audio"]
    if fake_video is not None:
        args.append(f"--use-file-for-fake-video-capture={fake_video}")
    proc = subprocess.Popen(args + [url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
