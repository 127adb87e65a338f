"""Before / after contact sheet of the face layers: teeth, gaze and blink frames of val clips.

    python benchmarks/face_layers_sheet.py [--output reports/face_layers_before_after.jpg]

For each moment (a driving clip, a source: the clip's own first frame or a photo, and a frame: a
number or the clip's widest mouth / most sideways gaze / most closed eyes, found with mediapipe on
the driver), the driver's crop and the outputs of the mesh and neural renderers *before* (no face
layers, additive lid retargeting) and *after* (face layers, open-ratio lid retargeting), at 256,
then the same zoomed on the mouth or the eyes. Nothing random: a rerun draws the same sheet.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from avatar_engine.eval import signals as sig  # noqa: E402
from avatar_engine.face import topology  # noqa: E402
from avatar_engine.face.crop import CropConfig, crop_from_landmarks  # noqa: E402
from avatar_engine.face.landmarks import LandmarkConfig, LandmarkDetector  # noqa: E402
from avatar_engine.face.source import SourceConfig, prepare_source  # noqa: E402
from avatar_engine.geometry.retarget import RetargetConfig  # noqa: E402
from avatar_engine.io.image import read_image, write_image  # noqa: E402
from avatar_engine.io.video import iter_frames  # noqa: E402
from avatar_engine.pipeline.reenact import ReenactConfig, Reenactor  # noqa: E402
from avatar_engine.renderers import create_renderer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIDE = 256
MAX_SCAN = 120  # driver frames searched for an "auto" moment


@dataclass(frozen=True)
class Moment:
    """One row pair of the sheet: ``frame`` is an index or ``"mouth"`` / ``"gaze"`` / ``"blink"``."""

    label: str
    clip: str
    frame: int | str
    zoom: str  # "mouth" or "eyes"
    photo: str | None = None  # relative to the data folder; None: the clip's first frame


MOMENTS = (
    Moment("teeth, self", "clips/val/P048/C077.mp4", "mouth", "mouth"),
    Moment("teeth, cross", "clips/val/P004/C018.mp4", "mouth", "mouth", "images/val/P152/I036.png"),
    Moment("gaze, self", "clips/val/P048/C077.mp4", "gaze", "eyes"),
    Moment("gaze, cross", "clips/val/P048/C077.mp4", "gaze", "eyes", "images/val/P128/I002.png"),
    Moment("blink, self", "clips/val/P120/C151.mp4", "blink", "eyes"),
    Moment("blink, cross", "clips/val/P120/C151.mp4", "blink", "eyes", "images/val/P152/I036.png"),
)


def _pick(frames: list[np.ndarray], kind: str, det: LandmarkDetector) -> int:
    """The driver frame most extreme for ``kind`` (after the first, which is the neutral)."""
    values = []
    for rgb in frames[: MAX_SCAN]:
        p = det.detect(rgb)
        values.append(None if p is None else sig.face_signals(p))
    first = next(v for v in values if v is not None)
    score = {"mouth": lambda v: v["mouth_open"], "gaze": lambda v: abs(v["gaze_x"] - first["gaze_x"]),
             "blink": lambda v: -(v["eye_open_left"] + v["eye_open_right"])}[kind]
    return int(max(range(1, len(values)), key=lambda i: -np.inf if values[i] is None else score(values[i])))


def _zoom(image: np.ndarray, points: np.ndarray, region: str) -> np.ndarray:
    idx = topology.LIPS_IDX if region == "mouth" else np.concatenate([topology.LEFT_EYE_IDX, topology.RIGHT_EYE_IDX])
    p = points[idx, :2]
    centre = p.mean(axis=0)
    half = 0.62 * max(np.ptp(p[:, 0]), 1.0)
    x0, y0 = centre - half
    m = np.array([[SIDE / (2 * half), 0, -x0 * SIDE / (2 * half)], [0, SIDE / (2 * half), -y0 * SIDE / (2 * half)]])
    band = cv2.warpAffine(image, m, (SIDE, SIDE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return band[SIDE // 4: 3 * SIDE // 4]


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def moment_rows(moment: Moment, data: Path, det: LandmarkDetector) -> np.ndarray:
    """Two rows (full crops, zooms) of one moment: driver, then mesh / neural before and after."""
    frames = [rgb for rgb, _ in iter_frames(data / moment.clip, MAX_SCAN)]
    index = moment.frame if isinstance(moment.frame, int) else _pick(frames, moment.frame, det)
    rgb0 = frames[0]
    source = (prepare_source(read_image(data / moment.photo), SourceConfig(size=SIDE)) if moment.photo
              else prepare_source(rgb0, SourceConfig(size=SIDE, max_side=max(rgb0.shape[:2]))))
    columns: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name in ("mesh", "neural"):
        for after in (False, True):
            renderer = create_renderer(name)
            if not after:
                renderer.layers = None
            config = ReenactConfig(paste_back=False, retarget=RetargetConfig(lid_ratio=after))
            with Reenactor(source, renderer, config) as reenactor:
                for k in range(index + 1):
                    res = reenactor.step(frames[k], k / 25.0)
            columns.append((f"{name} {'after' if after else 'before'}", res.crop, res.target))
    driving = det.detect(frames[index])
    crop = crop_from_landmarks(driving, CropConfig(size=SIDE)) if driving is not None else None
    driver = crop.crop_image(frames[index]) if crop is not None else cv2.resize(frames[index], (SIDE, SIDE))
    driver_pts = crop.to_crop(driving) if crop is not None else columns[0][2]
    top = [_label(driver, f"{moment.label}: driver f{index}")] + [_label(c, n) for n, c, _ in columns]
    bottom = [_zoom(driver, driver_pts, moment.zoom)] + [_zoom(c, t, moment.zoom) for _, c, t in columns]
    return np.vstack([np.hstack(top), np.hstack(bottom)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--output", type=Path, default=Path("reports/face_layers_before_after.jpg"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with LandmarkDetector(LandmarkConfig(), static=True) as det:
        blocks = []
        for m in MOMENTS:
            blocks += [moment_rows(m, args.data, det), np.full((6, 5 * SIDE, 3), 255, np.uint8)]
            print(f"{m.label}: done", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.output, np.vstack(blocks[:-1]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
