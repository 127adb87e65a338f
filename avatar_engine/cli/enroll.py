"""``avatar-engine enroll``: 30 seconds of you -> a personalized avatar profile."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avatar_engine.cli.args import set_threads

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enroll", help="record ~30 s of you and personalize the avatar (a profile for --profile)",
        description="Guided capture from the webcam (look at the camera, turn your head, read a sentence, smile, "
                    "blink, raise the brows; hints when the picture is too dark, too small, blurry or shows several "
                    "faces), then fine-tune the neural renderer to you from the meta-learned weights and save a "
                    "profile: use it with 'start/serve/render --profile NAME'. Q or Esc in the preview cancels.")
    p.add_argument("--name", required=True, help="profile name (letters, digits, _ . -)")
    p.add_argument("--camera", default="0", help="webcam index, or a video file played as the camera (default: 0)")
    p.add_argument("--video", type=Path, default=None,
                   help="enroll from this clip, headless (no window; same as --camera FILE --no-preview)")
    p.add_argument("--seconds", type=float, default=30.0, help="capture length (default: %(default)s)")
    p.add_argument("--source", type=Path, default=None,
                   help="the photo the avatar will show (default: the best frontal frame of the capture)")
    p.add_argument("--profiles-dir", type=Path, default=None,
                   help="where profiles live (default: $XDG_DATA_HOME/avatar-engine/profiles)")
    p.add_argument("--no-preview", dest="preview", action="store_false", help="no preview window")
    g = p.add_argument_group("personalization")
    g.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: 120)")
    g.add_argument("--budget", type=float, default=None, metavar="S",
                   help="fine-tuning time budget of the renderer in seconds (default: 45; a learned mouth stage: "
                        "30 more)")
    g.add_argument("--params", choices=("all", "refine", "norm"), default=None,
                   help="parameters fine-tuned (default: refine, the refinement network)")
    g.add_argument("--no-mouth-bank", dest="mouth_bank", action="store_false",
                   help="do not keep your own mouth interiors (teeth, tongue) from the capture: the avatar draws "
                        "procedural teeth")
    g.add_argument("--mouth-steps", type=int, default=0, metavar="N",
                   help="also fine-tune the experimental learned mouth stage for N steps (default: 0, off; 100 takes "
                        "about 40 s)")
    g.add_argument("--init", type=Path, default=None,
                   help="start weights (default: the shipped meta-learned weights, else the base model)")
    g.add_argument("--no-identity", dest="identity", action="store_false",
                   help="skip the identity-distance metric (dlib)")
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.set_defaults(run=run)


def _adapt_config(args: argparse.Namespace):
    import dataclasses

    from calibration.personalize import MouthAdaptConfig, PersonalizeConfig

    base = PersonalizeConfig().adapt
    changes = {k: v for k, v in (("steps", args.steps), ("seconds", args.budget), ("params", args.params))
               if v is not None}
    mouth = MouthAdaptConfig(steps=args.mouth_steps) if args.mouth_steps > 0 else None
    bank = PersonalizeConfig().bank if args.mouth_bank else None
    return PersonalizeConfig(adapt=dataclasses.replace(base, **changes), init=args.init, bank=bank, mouth=mouth)


def _open_preview(wanted: bool):
    import logging

    from runtime.preview import PreviewWindow, display_available

    if not wanted:
        return None
    if not display_available():
        logging.getLogger("avatar_engine").warning("no display: capturing without the preview window")
        return None
    window = PreviewWindow("avatar-engine enroll")
    window.open()
    return window


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calibration.capture import CaptureConfig
    from calibration.enroll import EnrollConfig, enroll
    from calibration.profiles import ProfileStore, check_name
    from runtime.capture import open_camera

    set_threads(args.threads)
    check_name(args.name)
    headless = args.video is not None
    spec = str(args.video) if headless else args.camera
    camera = open_camera(spec, realtime=False) if headless else open_camera(spec)
    camera.open()
    label = f"video {args.video.name}" if headless else f"camera {args.camera}"
    preview = None
    bar = None
    try:
        preview = _open_preview(args.preview and not headless)
        personalize_cfg = _adapt_config(args)
        identity = None
        if args.identity:
            from avatar_engine.face.identity import IdentityEncoder
            identity = IdentityEncoder()
        bar = tqdm(total=personalize_cfg.adapt.steps, desc="personalize", unit="step", file=sys.stderr,
                   disable=None)

        def progress(step: int, total: int, seconds: float, loss: float) -> None:
            if step < bar.n:  # the renderer is done: the mouth stage's steps start
                bar.reset(total=total)
                bar.set_description("personalize mouth")
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        config = EnrollConfig(name=args.name, source_photo=args.source, capture_label=label,
                              capture=CaptureConfig(seconds=args.seconds), personalize=personalize_cfg)
        report = enroll(config, camera, ProfileStore(args.profiles_dir), preview, progress, identity)
    finally:
        if bar is not None:
            bar.close()
        if preview is not None:
            preview.close()
        camera.close()
    print("\n".join(report.lines()))
    return 0
