"""Temporal SR cost: streaming (one time slice per frame) vs recomputing the newest output from the window.

    python benchmarks/bench_sr.py [--config configs/sr_light.toml] [--frames 4 8] [--device cpu]
                                  [--threads 1] [--repeat 20]

For each window ``T`` it builds the network of the config at that ``T`` (timing does not depend on the
weights), and prints GFLOP per frame (``FlopCounterMode``) and median ms per frame of

* ``stream``: :meth:`SRNet.step` with warm caches (what the pipeline runs);
* ``window``: :meth:`SRNet.forward` over the last ``T`` frames, newest output only;
* ``bicubic``: ``F.interpolate`` alone (the floor: the network adds a residual to it).

as a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar_engine.models.sr_net import SRNet, count_flops  # noqa: E402
from avatar_engine.training.sr import load_train_config  # noqa: E402


def _time_ms(fn, repeat: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/sr_light.toml")
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = load_train_config(args.config).model
    s = base.input_size
    rows = []
    frame = torch.rand(1, 3, s, s, device=device)
    with torch.inference_mode():
        bicubic = _time_ms(lambda: F.interpolate(frame, scale_factor=2, mode="bicubic", align_corners=False),
                           args.repeat, device)
        for t in args.frames:
            cfg = type(base)(**{**base.__dict__, "frames": t})
            net = SRNet(cfg).to(device).eval()
            state = net.new_state()
            clip = torch.rand(1, 3, t, s, s, device=device)
            stream = _time_ms(lambda: net.step(frame, state), args.repeat, device)
            window = _time_ms(lambda: net(clip, n_out=1), args.repeat, device)
            rows.append((t, count_flops(net) / 1e9, count_flops(net, "window") / 1e9, stream, window))
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"{args.config.name}, channels {list(base.channels)}, {s} -> {2 * s}, {dev}; bicubic alone {bicubic:.1f} ms")
    print("| T | GFLOP/frame stream | GFLOP/frame window | ms/frame stream | ms/frame window | window / stream |")
    print("|---|---|---|---|---|---|")
    for t, fs, fw, ms, mw in rows:
        print(f"| {t} | {fs:.2f} | {fw:.2f} | {ms:.1f} | {mw:.1f} | {mw / ms:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
