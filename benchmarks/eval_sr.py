"""Temporal SR at 512 on val: bicubic vs the frame-by-frame network (T = 1) vs the temporal network.

    python benchmarks/eval_sr.py [--cache ~/.cache/avatar-engine/sr_prepared] [--split val]
        [--temporal avatar_engine/weights/sr_light.safetensors]
        [--frame avatar_engine/weights/sr_light_t1.safetensors]
        [--max-frames 100] [--inputs cut codec mesh neural] [--output reports/sr_eval.json]

Data: the prepared cache (``avatar-engine prepare --size 256 512``), segments whose crop square covers
at least ``--min-side`` video pixels (smaller ones have no real 512 detail to score against). Each
segment is one stream (the SR state is reset at its start). Four kinds of 256 input:

* ``cut``: the 256 crop cut from the video (downscaled ground truth: pure super-resolution);
* ``codec``: the same crops with camera noise and lossy coding that change from frame to frame
  (:mod:`avatar_engine.data.degrade`: Gaussian noise ``--codec-sigma`` 8-bit levels, then JPEG at
  ``--codec-quality``; fixed seed), the frame-to-frame noise temporal SR exists to see through;
* ``mesh``, ``neural``: that renderer's self-reenactment of the segment (its first frame as the source,
  driven by every frame's landmarks): the input the SR stage gets in the pipeline (``neural`` is the
  default renderer).

Methods: ``bicubic``; ``frame-by-frame (T=1)``: the same architecture trained frame by frame (the
network the temporal one was inflated from, trained on for as many steps as the temporal fine-tune);
``temporal, no past``: the temporal network with its history reset before every frame (each frame
seen as a still clip: the same weights without temporal context); ``temporal``: the streaming stage.

Scores against the real 512 crop: PSNR and SSIM (:mod:`avatar_engine.eval.metrics`) and the flicker
ratio: mean flow-compensated frame difference of the output / that of the ground truth
(:func:`~avatar_engine.eval.metrics.warp_error`, as ``avatar-engine eval``; 1 = as steady as real video).
Prints a markdown table; ``--output`` also writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar_engine.data.prepare import default_cache_dir, load_prepared  # noqa: E402
from avatar_engine.data.degrade import Degradation, degrade_clip  # noqa: E402
from avatar_engine.eval import metrics  # noqa: E402
from avatar_engine.io.image import image_to_tensor, tensor_to_image
from avatar_engine.renderers import create_renderer
from avatar_engine.renderers.base import Renderer  # noqa: E402
from avatar_engine.face.source import crop_source  # noqa: E402
from avatar_engine.pipeline.super_resolution import DEFAULT_WEIGHTS, SuperResolver, load_sr_net  # noqa: E402


def _bicubic(crop: np.ndarray) -> np.ndarray:
    t = image_to_tensor(crop)
    return tensor_to_image(F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=False))


def _renderer_inputs(renderer: Renderer, frames: np.ndarray, landmarks: np.ndarray, key: str) -> np.ndarray:
    """Self-reenactment of one segment at 256: frame 0 is the source, every frame's landmarks drive it.

    ``frames (N, 256, 256, 3) uint8`` crops of one crop square, ``landmarks (N, 478, 3)`` in crop pixels.
    """
    source = crop_source(frames[0], landmarks[0], key)
    return np.stack([renderer.render(source, np.array(landmarks[i], np.float32)) for i in range(len(frames))])


class _Scores:
    def __init__(self) -> None:
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.flicker: list[float] = []

    def summary(self, gt_flicker: float) -> dict[str, float]:
        fl = float(np.nanmean(self.flicker)) if self.flicker else float("nan")
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)), "flicker": fl,
                "flicker_ratio": fl / gt_flicker, "frames": len(self.psnr)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=default_cache_dir().parent / "sr_prepared")
    ap.add_argument("--split", default="val")
    ap.add_argument("--temporal", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--frame", type=Path, default=DEFAULT_WEIGHTS.with_name("sr_light_t1.safetensors"))
    ap.add_argument("--min-side", type=float, default=400.0)
    ap.add_argument("--max-frames", type=int, default=100, help="scored frames per clip")
    ap.add_argument("--inputs", nargs="+", default=["cut", "codec", "mesh", "neural"],
                    choices=("cut", "codec", "mesh", "neural"))
    ap.add_argument("--codec-sigma", type=float, default=4.0, help="noise std of the codec input (8-bit levels)")
    ap.add_argument("--codec-quality", type=int, default=50, help="JPEG quality of the codec input")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    nets = {"frame-by-frame (T=1)": load_sr_net(args.frame), "temporal": load_sr_net(args.temporal)}
    renderers = {name: create_renderer(name) for name in ("mesh", "neural") if name in args.inputs}
    methods = ["bicubic", "frame-by-frame (T=1)", "temporal, no past", "temporal"]
    clips256 = {c.clip_id: c for c in load_prepared(args.cache, args.split, 256)}
    clips512 = load_prepared(args.cache, args.split, 512)
    scores = {(kind, m): _Scores() for kind in args.inputs for m in methods}
    gt_flicker: list[float] = []
    used = []
    for c512 in clips512:
        c256 = clips256[c512.clip_id]
        n_clip = 0
        for seg in c512.meta["segments"]:
            if seg["side"] < args.min_side or n_clip >= args.max_frames:
                continue
            stop = min(seg["stop"], seg["start"] + args.max_frames - n_clip)
            sl = slice(seg["start"], stop)
            n_clip += stop - seg["start"]
            gt = np.asarray(c512.frames[sl])
            used.append(f"{c512.clip_id}[{seg['start']}:{stop}] side {seg['side']:.0f}px")
            for i in range(1, len(gt)):
                gt_flicker.append(metrics.warp_error(gt[i - 1], gt[i]))
            inputs = {"cut": np.asarray(c256.frames[sl])}
            if "codec" in args.inputs:
                inputs["codec"] = degrade_clip(inputs["cut"], Degradation(args.codec_sigma, args.codec_quality),
                                               np.random.default_rng(seg["start"]))
            for name in ("mesh", "neural"):
                if name in args.inputs:
                    inputs[name] = _renderer_inputs(renderers[name], inputs["cut"], np.asarray(c256.landmarks[sl]),
                                                    f"{c512.clip_id}:{seg['start']}")
            for kind in args.inputs:
                resolvers = {name: SuperResolver(net) for name, net in nets.items()}
                no_past = SuperResolver(nets["temporal"])
                prev: dict[str, np.ndarray] = {}
                for i in tqdm(range(len(gt)), desc=f"{c512.clip_id} {kind}", leave=False,
                              disable=not sys.stderr.isatty()):
                    outs = {"bicubic": _bicubic(inputs[kind][i])}
                    outs.update({name: r(inputs[kind][i], key=kind) for name, r in resolvers.items()})
                    no_past.reset()
                    outs["temporal, no past"] = no_past(inputs[kind][i], key=kind)
                    for m, out in outs.items():
                        s = scores[(kind, m)]
                        s.psnr.append(metrics.psnr(out, gt[i]))
                        s.ssim.append(metrics.ssim(out, gt[i]))
                        if m in prev:
                            s.flicker.append(metrics.warp_error(prev[m], out))
                    prev = outs
    if not used:
        print(f"no {args.split} segments with a crop side >= {args.min_side:g} px in {args.cache}", file=sys.stderr)
        return 1
    gt_fl = float(np.nanmean(gt_flicker))
    result = {"segments": used, "gt_flicker": gt_fl, "temporal_weights": str(args.temporal),
              "codec": {"sigma": args.codec_sigma, "quality": args.codec_quality},
              "frame_weights": str(args.frame), "seconds": time.perf_counter() - start,
              "scores": {f"{kind}/{m}": s.summary(gt_fl) for (kind, m), s in scores.items()}}
    print(f"{args.split}: {', '.join(used)}; GT flicker {gt_fl:.4f}")
    print("| input | method | PSNR dB | SSIM | flicker ratio (GT = 1) |")
    print("|---|---|---|---|---|")
    for (kind, m), s in scores.items():
        v = result["scores"][f"{kind}/{m}"]
        print(f"| {kind} | {m} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['flicker_ratio']:.4f} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
