"""``avatar-engine`` console script.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``. Heavy
modules are imported inside the ``_run_*`` functions so ``--help`` stays fast. User-caused problems
(:class:`~avatar_engine.errors.AvatarError`) print one line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from avatar_engine.errors import AvatarError
from avatar_engine.cli.stderr_filter import filtered_stderr

__all__ = ["main", "build_parser"]

RENDERER_CHOICES = ("mesh", "neural", "source")


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="animate a photo with a driving video, write an mp4",
                       description="Animate the face in --source with the head, mouth, eye and brow motion of "
                                   "--driving; the driving clip's audio is muxed into --output.")
    p.add_argument("--source", required=True, type=Path, help="portrait photo (png/jpg)")
    p.add_argument("--driving", required=True, type=Path, help="driving video (mp4/mov/...)")
    p.add_argument("--output", required=True, type=Path, help="output mp4")
    p.add_argument("--renderer", default="neural", choices=RENDERER_CHOICES,
                   help="renderer (default: %(default)s: the shipped trained model; mesh: the geometric warp)")
    p.add_argument("--size", type=int, default=256, choices=(256, 512), help="face-crop resolution (default: %(default)s)")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="write the face crop only, not the whole photo")
    p.add_argument("--no-audio", dest="audio", action="store_false", help="do not copy the driving clip's audio")
    p.add_argument("--max-frames", type=int, default=None, help="render at most N frames")
    p.add_argument("--expression-scale", type=float, default=1.0, help="scale of transferred expressions")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s; one is fastest on small CPUs, where extra "
                        "threads fight mediapipe and video coding for the cores)")
    p.set_defaults(run=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    from avatar_engine.pipeline.reenact import ReenactConfig
    from avatar_engine.pipeline.render_job import RenderJobConfig, render_video
    from avatar_engine.geometry.retarget import RetargetConfig

    _set_threads(args.threads)
    reenact = ReenactConfig(paste_back=args.paste_back, retarget=RetargetConfig(expression_scale=args.expression_scale))
    report = render_video(RenderJobConfig(
        source=args.source, driving=args.driving, output=args.output, renderer=args.renderer, size=args.size,
        device=args.device, audio=args.audio, max_frames=args.max_frames, progress=sys.stderr.isatty(),
        reenact=reenact))
    audio = "with audio" if report.has_audio else "no audio"
    print(f"wrote {report.output}: {report.frames} frames, {report.width}x{report.height} @ {report.fps:.2f} fps, "
          f"{audio}, {report.frames / max(report.seconds, 1e-9):.1f} frames/s")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="quality report of renderers on a data split (json + md + png)",
                       description="Self-reenactment (each clip re-animates its first face frame, scored against "
                                   "the real frames) and cross-reenactment (photos of identities without clips, "
                                   "driven by other identities' clips), renderers side by side. Writes --output "
                                   "(.json) and, next to it, a .md table and a .png contact sheet.")
    p.add_argument("--data", required=True, type=Path, help="folder with clips.csv / images.csv (as ../shared/data)")
    p.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    p.add_argument("--renderer", nargs="+", default=["source", "mesh"], metavar="NAME",
                   help="renderer(s) to compare (default: source mesh)")
    p.add_argument("--output", required=True, type=Path, help="report .json (the .md and .png go next to it)")
    p.add_argument("--size", type=int, default=256, choices=(256, 512), help="face-crop resolution (default: %(default)s)")
    p.add_argument("--max-frames-per-clip", type=int, default=None, help="scored frames per clip (default: all)")
    p.add_argument("--identity-every", type=int, default=5, help="identity on every N-th frame (default: %(default)s)")
    p.add_argument("--cross-drivers", type=int, default=2, help="driving clips per photo (default: %(default)s)")
    p.add_argument("--no-cross", dest="cross", action="store_false", help="skip cross-reenactment")
    p.add_argument("--clips", nargs="+", default=None, metavar="ID", help="only these clip ids")
    p.add_argument("--images", nargs="+", default=None, metavar="ID", help="only these cross-reenactment photo ids")
    p.add_argument("--device", default="cpu", help="torch device of the renderers")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from avatar_engine.eval import EvalConfig, run_evaluation, write_report
    from avatar_engine.eval.report import summary_lines

    result = run_evaluation(EvalConfig(
        data=args.data, split=args.split, renderers=tuple(args.renderer), size=args.size,
        max_frames_per_clip=args.max_frames_per_clip, identity_every=args.identity_every, cross=args.cross,
        cross_drivers=args.cross_drivers, clip_ids=None if args.clips is None else tuple(args.clips),
        image_ids=None if args.images is None else tuple(args.images), device=args.device,
        progress=sys.stderr.isatty()))
    paths = write_report(result, args.output)
    print("\n".join(summary_lines(result)))
    print(f"wrote {paths.json}, {paths.markdown}, {paths.sheet}")
    return 0 if result.self_reports or result.cross_reports else 1


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="cache aligned face crops, landmarks and identity codes of a corpus (training)",
                       description="Decode every clip of --data/clips.csv, detect the face in every frame, cut fixed "
                                   "per-segment face crops (the evaluation's framing) and store crops, landmarks and "
                                   "dlib identity codes under --cache. Incremental: cached clips are skipped. "
                                   "Reports the skipped frames and why.")
    p.add_argument("--data", required=True, type=Path, help="folder with clips.csv (as ../shared/data)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default: $AVATAR_CACHE/prepared or ~/.cache/avatar-engine/prepared)")
    p.add_argument("--split", nargs="+", default=["train", "val"], help="splits (default: train val)")
    p.add_argument("--size", nargs="+", type=int, default=[256], choices=(256, 512),
                   help="crop sides to store (default: 256)")
    p.add_argument("--segment-frames", type=int, default=50, help="frames per fixed-crop segment (default: %(default)s)")
    p.add_argument("--identity-every", type=int, default=10,
                   help="identity code on every N-th frame of a segment (default: %(default)s)")
    p.add_argument("--max-frames-per-clip", type=int, default=None, help="decode at most N frames per clip")
    p.add_argument("--clips", nargs="+", default=None, metavar="ID", help="only these clip ids")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from avatar_engine.data.prepare import PrepareConfig, default_cache_dir, prepare_dataset

    report = prepare_dataset(PrepareConfig(
        data=args.data, cache=args.cache or default_cache_dir(), splits=tuple(args.split), sizes=tuple(args.size),
        segment_frames=args.segment_frames, identity_every=args.identity_every,
        max_frames_per_clip=args.max_frames_per_clip, clip_ids=None if args.clips is None else tuple(args.clips),
        progress=sys.stderr.isatty()))
    print("\n".join(report.lines()))
    return 0 if any(c.frames_kept for c in report.clips) else 1


def _add_train_sr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-sr", help="train the temporal super-resolution stage 256 -> 512 (causal, streaming)",
                           description="Train the temporal SR network on the prepared cache (avatar-engine prepare "
                                       "--size 256 512). Stage 2d trains the frame-by-frame network; stage 3d "
                                       "inflates it (--init) to 3-D kernels over the last T frames and fine-tunes. "
                                       "Resumable (run it again to continue); DDP under torchrun. Also spelt "
                                       "'avatar-engine train sr'.")
    p.add_argument("--config", required=True, type=Path, help="configs/sr_light.toml or configs/sr_gpu.toml")
    p.add_argument("--stage", required=True, choices=("2d", "3d"), help="training stage")
    p.add_argument("--init", type=Path, default=None, help="stage 3d: the stage-2d weights to inflate")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and exported weights")
    p.add_argument("--cache", type=Path, default=None, help="prepared cache (default: the prepare default)")
    p.add_argument("--inputs", type=Path, default=None, help="renderer-input cache (built when missing)")
    p.add_argument("--steps", type=int, default=None, help="total steps of this stage (overrides the config)")
    p.add_argument("--batch", type=int, default=None, help="samples per step per process")
    p.add_argument("--device", default=None, help="torch device (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(run=_run_train_sr)


def _run_train_sr(args: argparse.Namespace) -> int:
    from avatar_engine.training.sr import build_render_inputs, load_train_config, train_sr

    _set_threads(args.threads)
    cfg = load_train_config(args.config, stage=args.stage, init=args.init, run_dir=args.run_dir, cache=args.cache,
                            inputs=args.inputs, steps=args.steps, batch=args.batch, device=args.device,
                            progress=sys.stderr.isatty())
    if cfg.render_fraction > 0 and int(os.environ.get("RANK", 0)) == 0:
        build_render_inputs(cfg.cache, cfg.inputs, cfg.split, cfg.min_source_side, progress=cfg.progress)
    report = train_sr(cfg)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in report.last_losses.items())
    print(f"wrote {report.weights}: {report.steps} steps in {report.seconds:.0f} s; last losses: {losses}; "
          f"{report.flops_per_frame / 1e9:.2f} GFLOP per streamed frame")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the neural renderer on a prepared cache (resumable; torchrun for DDP)",
                       description="Train the warping + refinement networks on self-reenactment pairs from the "
                                   "'prepare' cache: warp stage, then warp + refine. Re-running with the same "
                                   "--output resumes. Under torchrun (e.g. torchrun --nproc-per-node 8 "
                                   "$(which avatar-engine) train ...) it trains with DistributedDataParallel.")
    p.add_argument("--config", type=Path, required=True, help="TOML config (configs/neural_lite.toml, neural_full.toml)")
    p.add_argument("--output", type=Path, required=True, help="run folder: checkpoint, loss log, samples")
    p.add_argument("--cache", type=Path, default=None, help="prepare cache (default: the prepare default)")
    p.add_argument("--steps", type=int, default=None, help="total steps to reach (default: the config's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--export", type=Path, default=None,
                   help="afterwards, write the renderer's fp16 safetensors weights here (rank 0)")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from avatar_engine.data.prepare import default_cache_dir
    from avatar_engine.training.trainer import export_weights, load_train_config, train

    _set_threads(args.threads)
    config = load_train_config(args.config)
    report = train(config, args.cache or default_cache_dir(), args.output, steps=args.steps, device=args.device,
                   progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    losses = ", ".join(f"{k} {v:.4f}" for k, v in report.last_losses.items())
    print(f"step {report.steps} ({report.steps_this_run} this run, {report.seconds:.0f} s); {losses}")
    if report.last_val:
        print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in report.last_val.items()))
    if args.export is not None:
        export_weights(report.checkpoint, args.export)
        print(f"wrote {args.export}")
    return 0


def _size_arg(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1280x720), got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be even and at least 16x16, got {text!r}")
    return w, h


def _add_start(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "start", help="live: your webcam drives the avatar; preview window + virtual camera",
        description="Animate --source live from a webcam (or a video played as one). The avatar goes to a virtual "
                    "camera (pick \"Avatar Cam\" / \"OBS Virtual Camera\" in Zoom, Teams or Meet), a preview "
                    "window and optionally a recording. Preview hotkeys: C recalibrate the neutral pose, S stats, "
                    "P pause, T passthrough (your real camera), Q/Esc quit. Ctrl-C stops cleanly (exit status 0).",
        epilog="Set up the virtual camera first: avatar-engine doctor")
    p.add_argument("--source", required=True, type=Path, help="portrait photo (png/jpg)")
    g = p.add_argument_group("camera")
    g.add_argument("--camera", default="0",
                   help="webcam index, or a video file played as the camera (default: %(default)s)")
    g.add_argument("--width", type=int, default=None, help="capture width (file: resize to it)")
    g.add_argument("--height", type=int, default=None, help="capture height (file: resize to it)")
    g.add_argument("--fps", type=float, default=None, help="capture frame rate (file: playing rate; default its own)")
    g.add_argument("--loop", action="store_true", help="replay a video file camera when it ends")
    g.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="play a video file as fast as it is processed (benchmarks, tests); output is unpaced")
    g = p.add_argument_group("avatar")
    g.add_argument("--renderer", default="neural", choices=RENDERER_CHOICES,
                   help="renderer (default: %(default)s: the shipped trained model; mesh: the geometric warp)")
    g.add_argument("--size", type=int, default=256, choices=(256, 512),
                   help="face-crop resolution (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s, fastest on small CPUs where more threads fight "
                        "mediapipe and the other stages for the cores)")
    g.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="output the face crop only, not the whole photo")
    g.add_argument("--expression-scale", type=float, default=1.0, help="scale of transferred expressions")
    g.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the 'look at the camera' step (the first face frame becomes the neutral pose)")
    g = p.add_argument_group("outputs")
    g.add_argument("--no-preview", dest="preview", action="store_false", help="no preview window")
    g.add_argument("--virtual-camera", action=argparse.BooleanOptionalAction, default=True,
                   help="send the avatar to the virtual camera (default: on)")
    g.add_argument("--vcam-size", type=_size_arg, default=(1280, 720), metavar="WxH",
                   help="virtual camera frame size (default: 1280x720)")
    g.add_argument("--vcam-device", default=None, help="virtual camera device (e.g. /dev/video10; default: any)")
    g.add_argument("--vcam-backend", default=None, help="pyvirtualcam backend (default: the first that works)")
    g.add_argument("--mirror", action="store_true", help="mirror the virtual camera image left-right")
    g.add_argument("--output-fps", type=float, default=30.0,
                   help="frame rate of the virtual camera and the recording (default: %(default)s)")
    g.add_argument("--output", type=Path, default=None, help="also record the session to this mp4")
    g.add_argument("--stats", action="store_true", help="start with the stats overlay shown (S toggles)")
    g = p.add_argument_group("run length (headless runs, tests, benchmarks)")
    g.add_argument("--max-frames", type=int, default=None, help="stop after N processed camera frames")
    g.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.set_defaults(run=_run_start)


def _run_start(args: argparse.Namespace) -> int:
    from runtime.capture import open_camera

    # the camera first, before the models load: a missing camera is reported at once
    camera = open_camera(args.camera, args.width, args.height, args.fps, args.loop, args.realtime)
    camera.open()

    from runtime.engine import LiveConfig, LiveEngine
    from runtime.sinks import VirtualCameraConfig

    from avatar_engine.pipeline.reenact import ReenactConfig
    from avatar_engine.geometry.retarget import RetargetConfig

    vcam = VirtualCameraConfig(width=args.vcam_size[0], height=args.vcam_size[1], mirror=args.mirror,
                               backend=args.vcam_backend, device=args.vcam_device)
    config = LiveConfig(
        source=args.source, camera=camera, renderer=args.renderer, size=args.size,
        device=args.device, threads=args.threads, paste_back=args.paste_back, preview=args.preview,
        virtual_camera=args.virtual_camera, vcam=vcam, output=args.output, output_fps=args.output_fps,
        calibrate=args.calibrate, stats_overlay=args.stats, max_frames=args.max_frames, duration_s=args.duration,
        reenact=ReenactConfig(retarget=RetargetConfig(expression_scale=args.expression_scale)))
    report = LiveEngine(config).run()
    print(report.summary())
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the avatar in a web page over WebRTC (local or remote driving)",
        description="Serve a page that shows the avatar over WebRTC, with audio delayed to match the video. Local "
                    "driving: this machine's camera drives the avatar. Remote driving: the browser sends its "
                    "camera and gets the avatar back (use a server with a GPU from a machine without one). Prints "
                    "the page's address; on any --host other than loopback the page needs the token in it.")
    p.add_argument("--source", required=True, type=Path, help="portrait photo (png/jpg)")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; any other needs the printed token)")
    g.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0: any free port)")
    g.add_argument("--token", default=None, help="access token (default: a new random one)")
    g.add_argument("--max-sessions", type=int, default=4, help="concurrent peers (default: %(default)s)")
    g.add_argument("--stun", action="append", default=[], metavar="URL",
                   help="STUN/TURN server for the server's peers (e.g. stun:stun.example.org:3478; repeatable; "
                        "default: none, host candidates only)")
    g = p.add_argument_group("local driving")
    g.add_argument("--camera", default=None,
                   help="webcam index or video file driving the avatar (default: camera 0 when there is one)")
    g.add_argument("--no-local", dest="local", action="store_false",
                   help="remote driving only: do not open a camera here")
    g.add_argument("--width", type=int, default=None, help="capture width (file: resize to it)")
    g.add_argument("--height", type=int, default=None, help="capture height (file: resize to it)")
    g.add_argument("--fps", type=float, default=None, help="capture frame rate (file: playing rate)")
    g.add_argument("--loop", action="store_true", help="replay a video file camera when it ends")
    g.add_argument("--virtual-camera", action="store_true", help="also send the local avatar to the virtual camera")
    g = p.add_argument_group("avatar")
    g.add_argument("--renderer", default="mesh", choices=RENDERER_CHOICES, help="renderer (default: %(default)s)")
    g.add_argument("--size", type=int, default=256, choices=(256, 512),
                   help="face-crop resolution (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s, fastest on small CPUs where more threads fight "
                        "mediapipe and the other stages for the cores)")
    g.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="send the face crop only, not the whole photo")
    g.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the 'look at the camera' step (the first face frame becomes the neutral pose)")
    g.add_argument("--max-side", type=int, default=720,
                   help="scale sent frames down to this longer side (default: %(default)s)")
    g = p.add_argument_group("audio")
    g.add_argument("--no-audio", dest="audio", action="store_false", help="video only")
    g.add_argument("--audio-device", default=None, help="microphone (PortAudio index or name; default: the system's)")
    g.add_argument("--audio-extra-delay", type=float, default=0.0, metavar="MS",
                   help="added to the measured video latency when delaying the audio (default: %(default)s)")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from runtime.audio import DelayConfig
    from runtime.capture import list_cameras, open_camera
    from runtime.server import ServerConfig, serve
    from runtime.webrtc_tracks import VideoTrackConfig

    camera = None
    if args.local:
        if args.camera is None and not list_cameras():
            logging.getLogger("avatar_engine").warning(
                "no camera found: local driving is off; the page can still drive the avatar with its own camera "
                "(remote driving)")
        else:  # the camera first, before the models load: a missing camera is reported at once
            camera = open_camera(args.camera if args.camera is not None else "0", args.width, args.height, args.fps,
                                 args.loop)
            camera.open()
    audio_device = int(args.audio_device) if args.audio_device and args.audio_device.isdigit() else args.audio_device
    try:
        config = ServerConfig(
            source=args.source, host=args.host, port=args.port, token=args.token, camera=camera,
            renderer=args.renderer, size=args.size, device=args.device, threads=args.threads,
            paste_back=args.paste_back, calibrate=args.calibrate, virtual_camera=args.virtual_camera,
            audio=args.audio, audio_device=audio_device, max_sessions=args.max_sessions, ice_servers=args.stun,
            video=VideoTrackConfig(max_side=args.max_side), delay=DelayConfig(extra_ms=args.audio_extra_delay))
    except ValueError as exc:
        raise AvatarError(str(exc)) from None
    try:
        serve(config)
    except OSError as exc:
        raise AvatarError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine for live use; virtual camera setup steps",
                       description="Report Python/torch/mediapipe/OpenCV versions, the display, cameras, GPU and "
                                   "whether a virtual camera opens, then print the virtual-camera setup steps "
                                   "for this OS. Exit status 1 when a live session cannot run.")
    p.set_defaults(run=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from runtime.doctor import format_report, run_checks

    checks = run_checks()
    print(format_report(checks))
    essential = {"python", "torch", "mediapipe"}
    return 1 if any(c.status == "fail" and c.name in essential for c in checks) else 0


def _set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None: leave torch's default)."""
    if threads is not None:
        import torch

        if threads < 1:
            raise AvatarError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_render, _add_eval, _add_start, _add_doctor,
                                                                       _add_prepare, _add_train, _add_train_sr, _add_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-engine",
                                     description="Real-time avatar engine: one photo, driven by your webcam.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _join_compound(argv: list[str]) -> list[str]:
    """``train sr ...`` is another spelling of ``train-sr ...``."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            if word == "train" and argv[i + 1: i + 2] == ["sr"]:
                return [*argv[:i], "train-sr", *argv[i + 2:]]
            break
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the process exit status."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging: errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(_join_compound(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("avatar_engine").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with filtered_stderr():
            return int(args.run(args))
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
