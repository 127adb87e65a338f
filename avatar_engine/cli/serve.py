"""``avatar-engine serve``: the avatar in a web page over WebRTC (local or remote driving)."""
from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from avatar_engine.cli.args import (add_avatar, add_camera, add_expression, add_neutral, add_profile, add_source,
                                    reenact_from_args, renderer_options)
from avatar_engine.errors import AvatarError

if TYPE_CHECKING:
    from runtime.capture import CameraSource
    from runtime.server import ServerConfig

__all__ = ["add", "server_config"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the avatar in a web page over WebRTC (local or remote driving)",
        description="Serve a page that shows the avatar over WebRTC, with audio delayed to match the video. Local "
                    "driving: this machine's camera drives the avatar. Remote driving: the browser sends its "
                    "camera and gets the avatar back (use a server with a GPU from a machine without one). Prints "
                    "the page's address; on any --host other than loopback the page needs the token in it.")
    add_source(p)
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
    add_camera(g, default=None)
    g.add_argument("--no-local", dest="local", action="store_false",
                   help="remote driving only: do not open a camera here")
    g.add_argument("--virtual-camera", action="store_true", help="also send the local avatar to the virtual camera")
    g = p.add_argument_group("avatar")
    add_avatar(g, what="send")
    add_expression(g)
    add_neutral(g)
    add_profile(g)
    g.add_argument("--max-side", type=int, default=720,
                   help="scale sent frames down to this longer side (default: %(default)s)")
    g = p.add_argument_group("audio")
    g.add_argument("--no-audio", dest="audio", action="store_false", help="video only")
    g.add_argument("--audio-device", default=None, help="microphone (PortAudio index or name; default: the system's)")
    g.add_argument("--audio-extra-delay", type=float, default=0.0, metavar="MS",
                   help="added to the measured video latency when delaying the audio (default: %(default)s)")
    p.set_defaults(run=run)


def server_config(args: argparse.Namespace, camera: CameraSource | None = None) -> ServerConfig:
    """The :class:`~runtime.server.ServerConfig` of the parsed options; ``camera``: the opened local
    camera (None: remote driving only).

    Raises:
        AvatarError: an option out of range.
    """
    from runtime.audio import DelayConfig
    from runtime.server import ServerConfig
    from runtime.session import LiveConfig
    from runtime.webrtc_tracks import VideoTrackConfig

    audio_device = int(args.audio_device) if args.audio_device and args.audio_device.isdigit() else args.audio_device
    try:
        live = LiveConfig(
            source=args.source, camera=0 if camera is None else camera, renderer=args.renderer, size=args.size,
            device=args.device, backend=args.backend, threads=args.threads, preview=False,
            virtual_camera=args.virtual_camera, neutral_pose=args.neutral_pose, reenact=reenact_from_args(args),
            handle_signals=False, renderer_options=renderer_options(args))
        return ServerConfig(
            live=live, local=camera is not None, host=args.host, port=args.port, token=args.token,
            audio=args.audio, audio_device=audio_device, max_sessions=args.max_sessions, ice_servers=args.stun,
            video=VideoTrackConfig(max_side=args.max_side), delay=DelayConfig(extra_ms=args.audio_extra_delay))
    except ValueError as exc:
        raise AvatarError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from runtime.capture import list_cameras, open_camera
    from runtime.server import serve

    renderer_options(args)  # a bad profile is reported before the camera opens
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
    config = server_config(args, camera)
    try:
        serve(config)
    except OSError as exc:
        raise AvatarError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
