"""End-to-end WebRTC latency and frame rate: capture -> avatar -> headless Chromium's decoded frame.

    python benchmarks/bench_webrtc.py [--seconds 15] [--sizes 256 512] [--modes local remote]
                                      [--renderer mesh] [--threads 1]

For each driving mode and face-crop size, ``avatar-engine serve``'s server runs with the val clip
P048/C077 (512x512, 30 fps) as the camera: played by the server (local driving) or by Chromium's
fake camera (remote driving: the page sends it, the server renders the avatar from it and sends it
back). Every frame carries a timing stamp (16 black/white blocks in its bottom rows,
``runtime.webrtc_tracks.draw_stamp``): local driving stamps the wall-clock time the server captured
the camera frame; remote driving, the time the page drew the camera frame it sent. The page reads
the stamp of every frame it decodes (``requestVideoFrameCallback``) and reports ``now - stamp``.
Prints a markdown table: latency p50/p99 (capture -> browser-decoded frame), frames per second
decoded by the browser, the engine's own capture-to-output p50, the browser's mean jitter-buffer
delay and decode time (its WebRTC statistics), and the round-trip time.

Runs in a loopback-only network namespace (needs root; see ``runtime/loopback.py``); the
server, its engines and Chromium all share this machine's CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig  # noqa: E402
from runtime.capture import FileCamera  # noqa: E402
from runtime.loopback import chromium, loopback_netns, netns_unavailable_reason, write_y4m  # noqa: E402
from runtime.server import AvatarServer, ServerConfig  # noqa: E402
from runtime.session import LiveConfig  # noqa: E402
from runtime.webrtc_tracks import VideoTrackConfig  # noqa: E402

DATA = REPO.parent / "shared" / "data"


async def measure(mode: str, size: int, args, clip_y4m: Path) -> dict:
    """One configuration: warm up, then collect the page's reports for ``args.seconds``."""
    live = LiveConfig(source=args.source, camera=FileCamera(args.clip, loop=True), renderer=args.renderer, size=size,
                      threads=args.threads, virtual_camera=False, neutral_pose=False,
                      reenact=ReenactConfig(paste_back=False))
    server = AvatarServer(ServerConfig(live, local=mode == "local", port=0, audio=False,
                                       video=VideoTrackConfig(max_side=None, stamp=True)))
    await server.start()
    url = f"{server.url}&mode={mode}&autostart=1&stamp=1&report=250&audio=0"
    latencies: list[float] = []
    rtts: list[float] = []
    seen: set[int] = set()
    buffer_ms = decode_ms = float("nan")  # the browser's mean jitter-buffer delay and decode time (session totals)
    try:
        with chromium(url, fake_video=clip_y4m if mode == "remote" else None) as browser:
            t_end = time.monotonic() + args.warmup + args.seconds
            t_measure = time.monotonic() + args.warmup
            first = last = None
            while time.monotonic() < t_end:
                if browser.poll() is not None:
                    raise RuntimeError("Chromium exited")
                for session in list(server.sessions.values()):
                    report = session.info.report
                    if not report or id(report) in seen:
                        continue
                    seen.add(id(report))
                    now = time.monotonic()
                    if now < t_measure:
                        continue
                    latencies += [float(v) for v in report.get("latencyMs", [])]
                    if report.get("rttMs") is not None:
                        rtts.append(float(report["rttMs"]))
                    if report.get("jitterBufferMs") is not None:
                        buffer_ms, decode_ms = float(report["jitterBufferMs"]), float(report.get("decodeMs", "nan"))
                    sample = (now, int(report.get("framesDecoded", 0)))
                    first = first or sample
                    last = sample
                await asyncio.sleep(0.05)
            engines = ([server.local_engine] if mode == "local" else
                       [s.engine for s in server.sessions.values() if s.engine is not None])
            engine_p50 = engines[0].stats.latency.percentile(50) if engines else float("nan")
    finally:
        await server.stop()
    fps = (last[1] - first[1]) / (last[0] - first[0]) if first and last and last[0] > first[0] else 0.0
    lat = np.asarray(latencies)
    return {"mode": mode, "size": size, "n": lat.size,
            "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "fps": fps, "engine_p50": engine_p50, "rtt": float(np.median(rtts)) if rtts else float("nan"),
            "buffer": buffer_ms, "decode": decode_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=DATA / "clips/val/P048/C077.mp4")
    p.add_argument("--source", type=Path, default=DATA / "images/val/P152/I036.png")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=6.0)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--modes", nargs="+", default=["local", "remote"], choices=["local", "remote"])
    p.add_argument("--renderer", default="mesh")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reason = netns_unavailable_reason()
    if reason is not None:
        sys.exit(f"cannot isolate the network: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        frames = [rgb for rgb, _ in iter_frames(args.clip, max_frames=150)]
        clip_y4m = write_y4m(frames, 30, Path(tmp) / "camera.y4m")
        rows = []
        with loopback_netns():
            for mode in args.modes:
                for size in args.sizes:
                    rows.append(asyncio.run(measure(mode, size, args, clip_y4m)))
                    r = rows[-1]
                    print(f"{mode} {size}: p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, {r['fps']:.1f} fps "
                          f"({r['n']} frames timed)", flush=True)
    print(f"\n{os.cpu_count()} CPU cores, renderer {args.renderer}, torch threads {args.threads}, "
          f"{args.seconds:g} s per row after {args.warmup:g} s warm-up\n")
    print("| driving | size | capture -> decoded p50 (ms) | p99 (ms) | decoded fps | engine capture -> output p50 (ms) "
          "| browser jitter buffer (ms) | browser decode (ms) | round trip (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['size']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['fps']:.1f} | "
              f"{r['engine_p50']:.0f} | {r['buffer']:.0f} | {r['decode']:.1f} | {r['rtt']:.1f} |")


if __name__ == "__main__":
    main()
