"""Headless Chromium opens the page and receives the avatar over WebRTC (local and remote driving).

Runs in a loopback-only network namespace (``runtime.loopback.loopback_netns``); skipped, saying why,
without Chromium or where that namespace cannot be made.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import cv2
import numpy as np
import pytest
from webrtc_support import isolated_network  # noqa: F401

from avatar_engine.io.video import iter_frames
from avatar_engine.pipeline.reenact import ReenactConfig
from runtime.audio import AUDIO_RATE, ArrayAudioSource
from runtime.capture import FileCamera
from runtime.loopback import chromium, chromium_binary, netns_unavailable_reason, write_y4m
from runtime.server import AvatarServer, ServerConfig
from runtime.session import LiveConfig

_NETNS = netns_unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_NETNS is not None, reason=f"WebRTC tests need a loopback-only network: {_NETNS}"),
    pytest.mark.skipif(chromium_binary() is None, reason="Chromium is not installed (Debian package `chromium`)"),
]

CLIP = "clips/val/P004/C018.mp4"
PHOTO = "images/val/P152/I036.png"


def _live(data_dir, renderer: str, camera=None) -> LiveConfig:
    """The engines' options: the val photo, the face crop only, no neutral-pose step, no virtual camera."""
    return LiveConfig(source=data_dir / PHOTO, camera=0 if camera is None else camera, renderer=renderer, threads=1,
                      virtual_camera=False, neutral_pose=False, reenact=ReenactConfig(paste_back=False))


async def _wait_report(server: AvatarServer, browser, predicate, timeout: float) -> dict:
    """The first page report (``POST /stats``) that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        assert browser.poll() is None, f"Chromium exited: {browser.stderr.read().decode(errors='replace')[-2000:]}"
        for session in list(server.sessions.values()):
            last = session.info.report
            if last and predicate(last, session):
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"no page report satisfied the check within {timeout} s; last: {last}")


def test_chromium_receives_local_avatar_with_audio(data_dir):
    """Local driving: the page decodes the avatar (its size) and the delayed audio, and reports back;
    when the browser is killed, its session is closed."""
    beeps = (8000 * np.sin(np.arange(AUDIO_RATE) * 2 * np.pi * 440 / AUDIO_RATE)).astype(np.int16)

    async def run():
        server = AvatarServer(ServerConfig(
            _live(data_dir, "source", FileCamera(data_dir / CLIP, loop=True)), port=0,
            audio_source=ArrayAudioSource(beeps, loop=True), heartbeat_timeout_s=3.0))
        await server.start()
        try:
            with chromium(f"{server.url}&mode=local&autostart=1&report=500") as browser:
                report = await _wait_report(server, browser, lambda r, s: r.get("framesDecoded", 0) >= 30, 60)
                report = await _wait_report(server, browser, lambda r, s: r.get("audioSamples", 0) > AUDIO_RATE // 2,
                                            20)
                assert report["state"] == "connected"
                assert (report["width"], report["height"]) == (256, 256)
                assert report["rttMs"] is None or report["rttMs"] < 1000
                session = next(iter(server.sessions.values()))
                assert session.info.audio and session.info.mode == "local"
                assert server.local_audio.delay_ms > 0  # the audio follows the engine's latency
                os.killpg(browser.pid, signal.SIGKILL)  # the browser vanishes without a goodbye
                browser.wait(10)
                deadline = time.monotonic() + 15
                while server.sessions:
                    assert time.monotonic() < deadline, "the vanished page's session is still open"
                    await asyncio.sleep(0.2)
                assert session.tracks[0].readyState == "ended"
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_chromium_remote_driving_from_a_val_clip(data_dir, tmp_path):
    """Remote driving, server on all interfaces (token required): Chromium's fake camera plays a val
    clip; the server renders the avatar from it and sends it back with the page's own (fake)
    microphone delayed to match; the frame the page decoded shows a face."""
    from avatar_engine.face.landmarks import LandmarkDetector

    frames = [rgb for rgb, _ in iter_frames(data_dir / CLIP, max_frames=75)]
    clip = write_y4m(frames, 25, tmp_path / "camera.y4m")

    async def run() -> bytes:
        server = AvatarServer(ServerConfig(_live(data_dir, "mesh"), local=False, host="0.0.0.0", port=0))
        await server.start()
        assert server.require_token  # the page must pass the token on every request
        url = f"http://127.0.0.1:{server.port}/?token={server.token}&mode=remote&autostart=1&report=500&snapshot=1"
        try:
            with chromium(url, fake_video=clip) as browser:
                await _wait_report(server, browser, lambda r, s: r.get("framesDecoded", 0) >= 20
                                   and s.info.snapshot is not None and s.engine.stats.processed >= 20
                                   and r.get("audioSamples", 0) > 0, 90)
                session = next(iter(server.sessions.values()))
                assert session.info.mode == "remote" and session.camera.received >= 20
                # the page's microphone (Chromium's fake one) came back, held back by the avatar's latency
                assert session.info.audio and session.audio.delay_ms > 0
                assert session.engine.stats.processed - session.engine.stats.no_face >= 10, "faces in the camera"
                return session.info.snapshot
        finally:
            await server.stop()

    jpeg = asyncio.run(asyncio.wait_for(run(), 150))
    avatar = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert avatar.shape == (256, 256, 3)
    with LandmarkDetector(static=True) as det:
        assert det.detect(avatar) is not None, "no face in the avatar Chromium decoded"
