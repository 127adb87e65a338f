"""Robustness sweep: does the avatar keep a face on every clip of the corpus?

    python benchmarks/robustness.py [--data ../shared/data] [--splits train val] [--photos I036 I045]
        [--renderers mesh neural] [--every 3] [--max-scored 24] [--clips C122 ...] [--output DIR]
    python benchmarks/robustness.py --merge DIR1 DIR2 ... --output DIR   (runs over disjoint --clips)

Drives each photo with every clip of the splits, the way ``avatar-engine render`` does (tracking
landmarks on every frame, the render command's neutral choice, the pipeline's retargeting with its
hold / ease logic), and scores a subsample of the output frames: every ``k``-th frame with
``k = max(every, ceil(frames / max_scored))``, so every clip is covered from start to end with at most
``max_scored`` scored frames. Per clip and in total, for each photo and renderer:

* ``no_face``: output frames in which the static mediapipe detector finds no face;
* ``id_over``: output frames whose dlib identity distance to the source crop exceeds 0.6
  (:data:`~avatar_engine.face.identity.SAME_PERSON_THRESHOLD`), frames without a face not included;
* ``fold``: frames whose target mesh flips an exterior triangle
  (:meth:`~avatar_engine.geometry.mesh_warp.MeshWarp.flipped_triangles`; renderer-independent);
* ``outside``: frames whose target face oval reaches outside the crop.

Writes ``DIR/robustness.json`` (everything), ``DIR/robustness.md`` (tables) and
``DIR/worst_frames.png``: one row per clip: the driving frame and, per photo and renderer, the worst
output frame of the clip (no face first, then the largest identity distance), labelled.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402
from avatar_engine.data.corpus import ClipEntry, load_dataset  # noqa: E402
from avatar_engine.face import topology  # noqa: E402
from avatar_engine.face.crop import CropConfig, crop_from_landmarks  # noqa: E402
from avatar_engine.face.identity import SAME_PERSON_THRESHOLD, IdentityConfig, IdentityEncoder  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.face.source import SourceConfig, SourceFace, prepare_source  # noqa: E402
from avatar_engine.geometry.mesh_warp import MeshWarp  # noqa: E402
from avatar_engine.io.video import iter_frames, probe_video  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
THUMB = 80


@dataclass
class Driving:
    """One clip's driving landmarks (every frame) and thumbnails of the scored frames."""

    clip: ClipEntry
    times: list[float]
    points: list[np.ndarray | None]
    scored: list[int]
    thumbs: dict[int, np.ndarray]
    neutral_index: int | None


@dataclass
class Tally:
    """Per (photo, renderer) counts over the scored frames of one clip (or all clips)."""

    frames: int = 0
    no_face: int = 0
    id_over: int = 0
    fold: int = 0
    outside: int = 0
    distances: list[float] = field(default_factory=list)
    worst: tuple[float, int, np.ndarray | None] = (-1.0, -1, None)  # (badness, frame, thumbnail)

    def add(self, other: "Tally") -> None:
        for k in ("frames", "no_face", "id_over", "fold", "outside"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.distances += other.distances

    def summary(self) -> dict[str, float]:
        d = np.asarray(self.distances, np.float64)
        return {"frames": self.frames, "no_face": self.no_face, "id_over": self.id_over, "fold": self.fold,
                "outside": self.outside, "id_mean": float(d.mean()) if d.size else math.nan,
                "id_max": float(d.max()) if d.size else math.nan, "worst_frame": self.worst[1]}


def read_driving(clip: ClipEntry, every: int, max_scored: int, neutral: str) -> Driving:
    """Track the whole clip (as the render command does) and pick the scored frames and the neutral."""
    total = probe_video(clip.path).frames
    stride = max(every, math.ceil(total / max_scored))
    times, points, thumbs = [], [], {}
    box = None
    with LandmarkDetector(LandmarkConfig(), static=False) as det:
        for i, (rgb, t) in enumerate(iter_frames(clip.path)):
            pts = det.detect(rgb, t)
            times.append(t)
            points.append(pts)
            if pts is not None and box is None:
                box = crop_from_landmarks(pts, CropConfig(size=THUMB))
            if i % stride == 0:
                thumbs[i] = (box.crop_image(rgb) if box is not None
                             else cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA))
    scored = sorted(thumbs)
    neutral_index = None
    if neutral == "auto":
        from avatar_engine.pipeline.neutral import choose_neutral_frame

        neutral_index = choose_neutral_frame(times, points).index
    return Driving(clip, times, points, scored, thumbs, neutral_index)


class Sweep:
    """The shared detector, identity encoder and renderers of one sweep."""

    def __init__(self, renderers: list[str]):
        self.detector = LandmarkDetector(LandmarkConfig(), static=True)
        self.identity = IdentityEncoder(IdentityConfig())
        self.renderers = {name: create_renderer(name, "cpu") for name in renderers}

    def source_id(self, source: SourceFace) -> np.ndarray:
        pts = self.detector.detect(source.crop_image)
        desc = None if pts is None else self.identity.embed(source.crop_image, pts)
        if desc is None:
            raise SystemExit("the photo's own crop has no face for dlib")
        return desc

    def run(self, drv: Driving, source: SourceFace, src_id: np.ndarray) -> dict[str, Tally]:
        """Score every renderer on one (clip, photo)."""
        tallies = {name: Tally() for name in self.renderers}
        warp = MeshWarp(source.landmarks, source.size)
        oval = np.asarray(topology.FACE_OVAL_LOOP)
        with Reenactor(source, next(iter(self.renderers.values())), ReenactConfig(paste_back=False)) as reen:
            if drv.neutral_index is not None:
                reen.set_neutral(drv.points[drv.neutral_index])
            scored = set(drv.scored)
            for i, (t, pts) in enumerate(zip(drv.times, drv.points)):
                target = reen.target(pts, t)
                if i not in scored:
                    continue
                fold = bool(warp.flipped_triangles(torch.from_numpy(target)[None])[0, ~warp.is_face_triangle].any())
                ov = target[oval, :2]
                outside = bool((ov < 0).any() or (ov > source.size).any())
                for name, renderer in self.renderers.items():
                    out = renderer.render(reen.render_source, target)
                    tally = tallies[name]
                    tally.frames += 1
                    tally.fold += fold
                    tally.outside += outside
                    out_pts = self.detector.detect(out)
                    if out_pts is None:
                        tally.no_face += 1
                        badness = math.inf
                    else:
                        desc = self.identity.embed(out, out_pts)
                        badness = math.inf if desc is None else self.identity.distance(desc, src_id)
                        if desc is None:
                            tally.no_face += 1
                        else:
                            tally.distances.append(badness)
                            tally.id_over += badness > SAME_PERSON_THRESHOLD
                    if badness > tally.worst[0]:
                        tally.worst = (badness, i, cv2.resize(out, (THUMB, THUMB), interpolation=cv2.INTER_AREA))
        return tallies


def _label(img: np.ndarray, text: str, bad: bool = False) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (THUMB, 11), (0, 0, 0), -1)
    cv2.putText(out, text, (1, 9), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 80, 80) if bad else (255, 255, 255), 1)
    return out


def contact_sheet(rows: list[list[np.ndarray]], blocks: int = 3) -> np.ndarray:
    """Rows of equal-length thumbnail lists, wrapped into ``blocks`` side-by-side columns of rows."""
    lines = [np.concatenate(r, axis=1) for r in rows]
    per = math.ceil(len(lines) / blocks)
    blank = np.zeros_like(lines[0])
    cols = []
    for b in range(blocks):
        chunk = lines[b * per:(b + 1) * per]
        chunk += [blank] * (per - len(chunk))
        cols.append(np.concatenate(chunk, axis=0))
        cols.append(np.full((cols[-1].shape[0], 6, 3), 255, np.uint8))
    return np.concatenate(cols[:-1], axis=1)


def _merge_totals(results: list[dict]) -> dict[str, dict[str, float]]:
    """Totals over the clips of several runs (shards): counts summed, identity mean weighted, max of maxima."""
    totals: dict[str, dict[str, float]] = {}
    for res in results:
        for entry in res["clips"].values():
            for key, v in entry.items():
                if not isinstance(v, dict):
                    continue
                t = totals.setdefault(key, {"frames": 0, "no_face": 0, "id_over": 0, "fold": 0, "outside": 0,
                                            "id_sum": 0.0, "id_n": 0, "id_max": -math.inf})
                for k in ("frames", "no_face", "id_over", "fold", "outside"):
                    t[k] += v[k]
                n = v["frames"] - v["no_face"]
                if n and not math.isnan(v["id_mean"]):
                    t["id_sum"] += v["id_mean"] * n
                    t["id_n"] += n
                    t["id_max"] = max(t["id_max"], v["id_max"])
    for t in totals.values():
        t["id_mean"] = t.pop("id_sum") / max(t.pop("id_n"), 1)
    return totals


def write_report(output: Path, results: list[dict], sheets: list[np.ndarray]) -> None:
    """``robustness.md`` (and ``worst_frames.png``) in ``output`` for one run or several shards of one."""
    opts = results[0]["options"]
    clips = {c: e for res in results for c, e in res["clips"].items()}
    lines = [f"Robustness sweep: {len(clips)} clips of {', '.join(opts['splits'])}; photos {', '.join(opts['photos'])}; "
             f"every {opts['every']}-th frame or sparser, at most {opts['max_scored']} scored per clip; "
             f"neutral: {opts['neutral']}.",
             "Machine: " + "; ".join(f"{r['machine']}, load {r['load'][0]:.1f}, {r['seconds']:.0f} s" for r in results),
             "", "| photo/renderer | scored frames | no face | id > 0.6 | fold frames | face outside crop | mean id | max id |",
             "|---|---|---|---|---|---|---|---|"]
    for k, t in _merge_totals(results).items():
        lines.append(f"| {k} | {t['frames']} | {t['no_face']} | {t['id_over']} | {t['fold']} | {t['outside']} | "
                     f"{t['id_mean']:.3f} | {t['id_max']:.3f} |")
    failing = [c for c, e in clips.items() if "error" in e or any(
        isinstance(v, dict) and (v["no_face"] or v["id_over"]) for v in e.values())]
    folding = [c for c, e in clips.items() if any(isinstance(v, dict) and v["fold"] for v in e.values())]
    lines += ["", f"Clips with a frame without a face or id > 0.6: {', '.join(failing) or 'none'}",
              f"Clips with a folding frame: {', '.join(folding) or 'none'}"]
    (output / "robustness.md").write_text("\n".join(lines) + "\n")
    if sheets:
        width = max(s.shape[1] for s in sheets)
        padded = [np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sheets]
        cv2.imwrite(str(output / "worst_frames.png"), cv2.cvtColor(np.concatenate(padded), cv2.COLOR_RGB2BGR))
    print("\n".join(lines))


def merge(output: Path, shards: list[Path]) -> None:
    """Combine the outputs of runs over disjoint clip sets (``--clips``) into one report in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    results = [json.loads((d / "robustness.json").read_text()) for d in shards]
    sheets = [cv2.cvtColor(cv2.imread(str(d / "worst_frames.png")), cv2.COLOR_BGR2RGB) for d in shards
              if (d / "worst_frames.png").exists()]
    write_report(output, results, sheets)


def _result(args: argparse.Namespace, start: float, totals: dict[str, Tally], per_clip: dict) -> dict:
    return {"machine": machine(args.threads), "load": os.getloadavg(), "seconds": time.time() - start,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "totals": {k: t.summary() for k, t in totals.items()}, "clips": per_clip}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    ap.add_argument("--photos", nargs="+", default=["I036", "I045"], help="image ids of images.csv (any split)")
    ap.add_argument("--renderers", nargs="+", default=["mesh", "neural"])
    ap.add_argument("--every", type=int, default=3, help="score at most every k-th frame")
    ap.add_argument("--max-scored", type=int, default=24, help="scored frames per clip (the stride grows)")
    ap.add_argument("--clips", nargs="*", default=None, help="only these clip ids")
    ap.add_argument("--neutral", choices=["auto", "first"], default="auto",
                    help="auto: the render command's neutral choice; first: the first face frame")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=Path("robustness_out"))
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                    help="only combine the outputs of earlier runs over disjoint --clips into --output")
    args = ap.parse_args()
    if args.merge:
        merge(args.output, args.merge)
        return 0
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)

    clips = [c for s in args.splits for c in load_dataset(args.data, s).clips]
    if args.clips:
        clips = [c for c in clips if c.clip_id in set(args.clips)]
    images = {i.image_id: i for s in ("train", "val") for i in load_dataset(args.data, s).images}
    sweep = Sweep(args.renderers)
    sources = {pid: prepare_source(images[pid].path, SourceConfig(size=256)) for pid in args.photos}
    source_ids = {pid: sweep.source_id(src) for pid, src in sources.items()}
    pairs = [(p, r) for p in args.photos for r in args.renderers]
    totals = {f"{p}/{r}": Tally() for p, r in pairs}
    per_clip: dict[str, dict[str, object]] = {}
    rows = []
    start = time.time()
    for n, clip in enumerate(clips):
        try:
            drv = read_driving(clip, args.every, args.max_scored, args.neutral)
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be read is reported, not fatal
            per_clip[clip.clip_id] = {"error": str(exc)}
            continue
        entry: dict[str, object] = {"frames": len(drv.times), "scored": len(drv.scored),
                                    "driving_no_face": sum(p is None for p in drv.points),
                                    "neutral_frame": drv.neutral_index}
        row_cells, worst_frame, worst_bad = [], drv.scored[0], -1.0
        for pid, src in sources.items():
            tallies = sweep.run(drv, src, source_ids[pid])
            for rname, tally in tallies.items():
                key = f"{pid}/{rname}"
                totals[key].add(tally)
                entry[key] = tally.summary()
                bad, frame, thumb = tally.worst
                text = "no face" if math.isinf(bad) else f"{bad:.2f}"
                row_cells.append(_label(thumb if thumb is not None else np.zeros((THUMB, THUMB, 3), np.uint8),
                                        f"{rname[:4]} {text}", bad > SAME_PERSON_THRESHOLD))
                if bad > worst_bad:
                    worst_bad, worst_frame = bad, frame
        rows.append([_label(drv.thumbs[worst_frame], f"{clip.clip_id} f{worst_frame}")] + row_cells)
        per_clip[clip.clip_id] = entry
        # written after every clip, so a long sweep that is stopped keeps what it measured
        (args.output / "robustness.json").write_text(json.dumps(_result(args, start, totals, per_clip), indent=1,
                                                                default=float))
        bad = {k: (v["no_face"], v["id_over"], v["fold"]) for k, v in entry.items() if isinstance(v, dict)
               and (v["no_face"] or v["id_over"] or v["fold"])}
        print(f"[{n + 1}/{len(clips)} {time.time() - start:.0f}s] {clip.clip_id}: {len(drv.scored)} scored"
              + (f"; (no face, id>0.6, fold): {bad}" if bad else ""), flush=True)

    result = _result(args, start, totals, per_clip)
    (args.output / "robustness.json").write_text(json.dumps(result, indent=1, default=float))
    write_report(args.output, [result], [contact_sheet(rows)] if rows else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
