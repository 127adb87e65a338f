"""Argument groups shared by the commands: one definition of each option, one default renderer.

Each ``add_*`` function adds its options to a parser or an argument group; the ``*_from_args``
helpers turn the parsed options into the library's typed configs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from avatar_engine.config import DEFAULT_RENDERER
from avatar_engine.errors import AvatarError

__all__ = ["DEFAULT_RENDERER", "RENDERER_CHOICES", "BACKEND_CHOICES", "add_source", "add_backend", "add_camera",
           "add_avatar", "add_expression", "add_neutral", "add_profile", "renderer_options", "set_threads",
           "reenact_from_args", "size_arg"]

RENDERER_CHOICES = ("mesh", "neural", "source")
"""Names of :func:`avatar_engine.renderers.create_renderer` offered on the command line."""

BACKEND_CHOICES = ("auto", "eager", "compile", "onnxruntime", "openvino", "tensorrt")
"""``avatar_engine.backends.BACKEND_CHOICES``, spelled out so that ``--help`` does not import torch (a test
checks that the two agree)."""

THREADS_HELP = ("torch CPU threads (default: %(default)s; one is fastest on small CPUs, where extra threads fight "
                "mediapipe and the other stages for the cores)")


def add_source(p: argparse.ArgumentParser) -> None:
    """``--source``: the portrait photo the avatar shows."""
    p.add_argument("--source", required=True, type=Path, help="portrait photo (png/jpg)")


def add_camera(g: argparse._ActionsContainer, default: str | None = "0", realtime: bool = False) -> None:
    """Camera options: ``--camera --width --height --fps --loop`` (and ``--no-realtime``)."""
    default_help = f"default: {default}" if default is not None else "default: camera 0 when there is one"
    g.add_argument("--camera", default=default,
                   help=f"webcam index, or a video file played as the camera ({default_help})")
    g.add_argument("--width", type=int, default=None, help="capture width (file: resize to it)")
    g.add_argument("--height", type=int, default=None, help="capture height (file: resize to it)")
    g.add_argument("--fps", type=float, default=None, help="capture frame rate (file: playing rate; default its own)")
    g.add_argument("--loop", action="store_true", help="replay a video file camera when it ends")
    if realtime:
        g.add_argument("--no-realtime", dest="realtime", action="store_false",
                       help="play a video file as fast as it is processed (benchmarks, tests); output is unpaced")


def add_backend(g: argparse._ActionsContainer) -> None:
    """``--backend``: the inference backend of the networks (see ``avatar_engine.backends``)."""
    g.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend of the neural renderer and the 512 SR step (default: %(default)s: the "
                        "fastest that loads here, measured once and remembered; `avatar-engine doctor` lists them)")


def add_avatar(g: argparse._ActionsContainer, what: str = "output") -> None:
    """Renderer options: ``--renderer --size --device --backend --threads --mouth-net --no-paste-back``."""
    g.add_argument("--renderer", default=DEFAULT_RENDERER, choices=RENDERER_CHOICES,
                   help="renderer (default: %(default)s: the shipped trained model; mesh: the geometric warp)")
    g.add_argument("--size", type=int, default=256, choices=(256, 512), help="face-crop resolution (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    add_backend(g)
    g.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    g.add_argument("--mouth-net", action="store_true",
                   help="redraw the mouth with the shipped learned mouth stage (experimental: lower mouth-area error, "
                        "but blurrier teeth; a --profile with a personalized mouth stage uses its own)")
    g.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help=f"{what} the face crop only, not the whole photo")


def add_expression(g: argparse._ActionsContainer) -> None:
    """``--expression-scale``, ``--keep-photo-mouth``."""
    g.add_argument("--expression-scale", type=float, default=1.0, help="scale of transferred expressions")
    g.add_argument("--keep-photo-mouth", dest="lip_zero", action="store_false",
                   help="a photo with open lips keeps them open while yours are closed (default: the avatar's "
                        "mouth opens from closed, as far as yours)")


def add_neutral(g: argparse._ActionsContainer) -> None:
    """``--no-neutral-pose``: skip the live neutral-pose step (``--no-calibrate``: its old spelling, hidden)."""
    g.add_argument("--no-neutral-pose", dest="neutral_pose", action="store_false",
                   help="skip the 'look at the camera' neutral-pose step (the first face frame becomes the neutral "
                        "pose)")
    g.add_argument("--no-calibrate", dest="neutral_pose", action="store_false", help=argparse.SUPPRESS)


def add_profile(g: argparse._ActionsContainer) -> None:
    """``--profile NAME --profiles-dir DIR``: render with an enrolled profile's personalized weights."""
    g.add_argument("--profile", default=None, metavar="NAME",
                   help="personalized weights of this enrollment profile (avatar-engine enroll; neural renderer)")
    g.add_argument("--profiles-dir", type=Path, default=None,
                   help="where profiles live (default: $XDG_DATA_HOME/avatar-engine/profiles)")


def renderer_options(args: argparse.Namespace) -> dict:
    """``create_renderer`` keyword arguments of the parsed options: ``"mouth_weights"`` (the shipped
    learned mouth stage) for ``--mouth-net``; ``"weights"`` (and ``"mouth_weights"`` when the profile has a
    personalized mouth stage) for ``--profile``.

    Raises:
        ProfileError: the profile is missing, corrupt or mismatched. AvatarError: --profile with a renderer
            other than neural.
    """
    options: dict = {}
    if getattr(args, "mouth_net", False):
        from avatar_engine.models.mouth_net import DEFAULT_MOUTH_WEIGHTS

        options["mouth_weights"] = DEFAULT_MOUTH_WEIGHTS
    name = getattr(args, "profile", None)
    if name is None:
        return options
    if args.renderer != "neural":
        raise AvatarError(f"--profile needs the neural renderer (got --renderer {args.renderer})")
    from calibration.profiles import profile_renderer_options

    return options | profile_renderer_options(name, args.profiles_dir)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None: leave torch's default)."""
    if threads is not None:
        import torch

        if threads < 1:
            raise AvatarError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def reenact_from_args(args: argparse.Namespace):
    """The :class:`~avatar_engine.pipeline.reenact.ReenactConfig` of the parsed avatar options."""
    from avatar_engine.geometry.retarget import RetargetConfig
    from avatar_engine.pipeline.reenact import ReenactConfig

    return ReenactConfig(paste_back=getattr(args, "paste_back", True),
                         retarget=RetargetConfig(expression_scale=getattr(args, "expression_scale", 1.0),
                                                 lip_zero=getattr(args, "lip_zero", True)))


def size_arg(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1280x720), got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be even and at least 16x16, got {text!r}")
    return w, h
