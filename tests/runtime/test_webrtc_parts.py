"""WebRTC building blocks without a network: timing stamp, frame hub and video track pacing,
audio delay line, delayed audio following the latency, token and loopback rules."""
from __future__ import annotations

import asyncio
import math
import threading
import time

import av
import numpy as np
import pytest

from runtime.audio import AUDIO_RATE, ArrayAudioSource, DelayConfig, DelayedAudio, DelayedAudioTrack, DelayLine
from runtime.server import is_loopback
from runtime.sinks import OutputInfo
from runtime.webrtc_tracks import (VIDEO_CLOCK_RATE, AvatarFrameHub, AvatarVideoTrack, VideoTrackConfig, draw_stamp,
                                   read_stamp)


def _info(index: int, t_capture: float, new: bool = True, t_output: float | None = None) -> OutputInfo:
    return OutputInfo(index, t_capture, time.monotonic() if t_output is None else t_output, new, True, "avatar", False)


def test_stamp_survives_video_coding():
    """A stamped frame still reads back its value after VP8 (WebRTC's default codec) at a modest bitrate."""
    rng = np.random.default_rng(0)
    values = [0, 1, 0xFFFF, 0xA5C3, 12345]
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 256, 256, "yuv420p"
    codec.bit_rate = 300_000
    codec.options = {"deadline": "realtime", "cpu-used": "8"}
    decoder = av.CodecContext.create("vp8", "r")
    yy, xx = np.mgrid[0:256, 0:256]
    picture = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.int16)
    decoded = []
    for i, v in enumerate(values):
        noisy = np.clip(picture + rng.integers(-20, 21, picture.shape), 0, 255).astype(np.uint8)
        img = draw_stamp(noisy, v)
        assert read_stamp(img) == v
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in codec.encode(frame):
            decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    for packet in codec.encode(None):
        decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    assert [read_stamp(d) for d in decoded] == values


def test_video_track_sends_newest_frame_only_with_capture_timestamps():
    """A slow reader gets the newest frame (no backlog); pts are 90 kHz capture times, increasing."""

    async def run():
        hub = AvatarFrameHub()
        track = AvatarVideoTrack(hub, VideoTrackConfig(max_side=None, keepalive_s=10.0))
        t0 = time.monotonic()
        for k in range(5):  # five frames while nobody reads: only the last may go out
            hub.send(np.full((64, 48, 3), k, np.uint8), _info(k, t0 + k / 30))
        first = await asyncio.wait_for(track.recv(), 2)
        assert (first.width, first.height) == (48, 64)
        assert int(first.to_ndarray(format="rgb24")[0, 0, 0]) == 4
        assert track.frames_skipped == 4
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert not waiting.done(), "recv must wait for a frame it has not sent"
        threading.Thread(target=hub.send, args=(np.full((64, 48, 3), 9, np.uint8), _info(9, t0 + 9 / 30))).start()
        second = await asyncio.wait_for(waiting, 2)
        assert int(second.to_ndarray(format="rgb24")[0, 0, 0]) == 9
        assert second.time_base * VIDEO_CLOCK_RATE == 1
        assert second.pts - first.pts == round(5 / 30 * VIDEO_CLOCK_RATE)
        # an engine repeat right after a new frame is not sent again
        hub.send(np.full((64, 48, 3), 9, np.uint8), _info(9, t0 + 9 / 30, new=False))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(track.recv())), 0.2)
        hub.close()
        track.stop()

    asyncio.run(run())


def test_video_track_keepalive_and_even_size():
    """With nothing new, the last frame goes out again every keepalive_s; odd sizes are made even."""

    async def run():
        hub = AvatarFrameHub()
        track = AvatarVideoTrack(hub, VideoTrackConfig(max_side=None, keepalive_s=0.2))
        hub.send(np.zeros((65, 51, 3), np.uint8), _info(0, time.monotonic()))
        a = await asyncio.wait_for(track.recv(), 2)
        t = time.monotonic()
        b = await asyncio.wait_for(track.recv(), 2)
        assert 0.15 < time.monotonic() - t < 0.6
        assert (a.width, a.height) == (50, 64) and b.pts > a.pts
        track.stop()

    asyncio.run(run())


def test_hub_latency_is_smoothed_capture_to_output():
    hub = AvatarFrameHub(latency_alpha=0.5)
    assert math.isnan(hub.latency_ms)
    hub.send(np.zeros((4, 4, 3), np.uint8), _info(0, 10.0, t_output=10.1))
    assert hub.latency_ms == pytest.approx(100.0)
    hub.send(np.zeros((4, 4, 3), np.uint8), _info(1, 11.0, t_output=11.3))
    assert hub.latency_ms == pytest.approx(200.0)
    hub.send(np.zeros((4, 4, 3), np.uint8), _info(1, 11.0, new=False, t_output=12.0))  # repeats do not count
    assert hub.latency_ms == pytest.approx(200.0)


def test_delay_line():
    line = DelayLine(100)
    line.write(np.arange(1, 31, dtype=np.int16))
    np.testing.assert_array_equal(line.read(10, 0), np.arange(21, 31))
    np.testing.assert_array_equal(line.read(10, 5), np.arange(16, 26))
    np.testing.assert_array_equal(line.read(10, 25), [0, 0, 0, 0, 0, 1, 2, 3, 4, 5])  # before the start: silence
    with pytest.raises(ValueError):
        line.read(10, 95)


def _click_track(seconds: float, clicks_s: list[float]) -> np.ndarray:
    audio = np.zeros(int(seconds * AUDIO_RATE), np.int16)
    for c in clicks_s:
        i = int(c * AUDIO_RATE)
        audio[i:i + 240] = 20000
    return audio


def _onsets(blocks: list[np.ndarray]) -> list[float]:
    """Seconds (in output samples) where a click starts."""
    x = np.concatenate(blocks)
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 10000)
    starts = loud[np.insert(np.diff(loud) > 1000, 0, True)] if loud.size else loud
    return [s / AUDIO_RATE for s in starts]


def test_delayed_audio_follows_the_latency():
    """Clicks come out delayed by the latency; when the latency changes the delay follows, by small steps."""
    latency = {"ms": 120.0}
    source = ArrayAudioSource(_click_track(1.6, [0.3, 1.3]))
    audio = DelayedAudio(source, lambda: latency["ms"], DelayConfig(max_step_ms=2.0))

    async def run() -> list[np.ndarray]:
        audio.start()
        track = DelayedAudioTrack(audio)
        blocks, steps = [], []
        last_delay = audio.delay_ms
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), 3)
            except Exception:
                break
            assert frame.sample_rate == AUDIO_RATE and frame.samples == DelayConfig().block
            blocks.append(frame.to_ndarray().reshape(-1))
            steps.append(abs(audio.delay_ms - last_delay))
            last_delay = audio.delay_ms
            if len(blocks) == 25:  # 0.5 s in: the engine got slower
                latency["ms"] = 180.0
        audio.stop()
        return blocks, steps

    blocks, steps = asyncio.run(run())
    onsets = _onsets(blocks)
    assert len(onsets) == 2, onsets
    assert onsets[0] == pytest.approx(0.3 + 0.120, abs=0.003)
    assert onsets[1] == pytest.approx(1.3 + 0.180, abs=0.003)
    assert max(steps[1:]) <= 2.0 + 1e-6  # the delay moved in bounded steps, no jump
    assert audio.ended


def test_delayed_audio_without_latency_is_not_delayed():
    source = ArrayAudioSource(_click_track(0.6, [0.2]))
    audio = DelayedAudio(source, lambda: math.nan)

    async def run():
        audio.start()
        track = DelayedAudioTrack(audio)
        blocks = []
        while True:
            try:
                blocks.append((await asyncio.wait_for(track.recv(), 3)).to_ndarray().reshape(-1))
            except Exception:
                return blocks

    assert _onsets(asyncio.run(run())) == [pytest.approx(0.2, abs=0.001)]


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
