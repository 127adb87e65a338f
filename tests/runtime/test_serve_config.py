"""``avatar-engine serve``'s options: one :class:`LiveConfig` inside the :class:`ServerConfig`, and the
engines the server runs use it (expression scale, paste-back, neutral-pose step, renderer).

The server here listens on 127.0.0.1 only and no WebRTC peer connects, so no network namespace is needed.
"""
from __future__ import annotations

import asyncio

import pytest

from avatar_engine.cli.main import build_parser
from avatar_engine.cli.serve import server_config
from avatar_engine.config import DEFAULT_RENDERER
from runtime.capture import FileCamera
from runtime.server import AvatarServer, ServerConfig
from runtime.session import LiveConfig
from runtime.track_camera import TrackCamera
from runtime.webrtc_tracks import AvatarFrameHub

PHOTO = "images/val/P152/I036.png"
CLIP = "clips/val/P004/C018.mp4"


def _args(*extra: str):
    return build_parser().parse_args(["serve", "--source", "me.png", *extra])


def test_serve_options_make_one_live_config_inside_the_server_config(capsys):
    camera = FileCamera("unused.mp4")
    cfg = server_config(_args("--expression-scale", "0.5", "--no-paste-back", "--no-neutral-pose", "--size", "512",
                              "--virtual-camera", "--port", "0", "--keep-photo-mouth"), camera)
    assert isinstance(cfg, ServerConfig) and isinstance(cfg.live, LiveConfig)
    live = cfg.live
    assert live.camera is camera and cfg.local and cfg.port == 0
    assert live.reenact.retarget.expression_scale == 0.5 and not live.reenact.paste_back
    assert not live.reenact.retarget.lip_zero
    assert not live.neutral_pose and live.size == 512 and live.virtual_camera and not live.preview
    assert live.renderer == DEFAULT_RENDERER

    defaults = server_config(_args(), None)  # no camera here: remote driving only
    assert not defaults.local and defaults.live.neutral_pose and defaults.live.reenact.paste_back
    assert defaults.live.reenact.retarget.expression_scale == 1.0 and not defaults.live.virtual_camera
    assert defaults.live.reenact.retarget.lip_zero
    assert not server_config(_args("--no-calibrate"), None).live.neutral_pose  # the old spelling still works
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--no-neutral-pose" in shown and "--no-calibrate" not in shown  # the old spelling is hidden


def test_library_configs_default_to_the_default_renderer():
    assert LiveConfig(source="me.png").renderer == DEFAULT_RENDERER == build_parser().parse_args(
        ["start", "--source", "me.png"]).renderer


def test_serve_expression_scale_reaches_the_reenactors(data_dir, monkeypatch):
    """The local engine's pipeline retargets with the scale given to ``serve``; a remote session's
    engine gets the same options with the browser's camera and the WebRTC track as its only output."""
    import runtime.engine

    made = []

    class SpyReenactor(runtime.engine.Reenactor):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(runtime.engine, "Reenactor", SpyReenactor)
    args = _args("--expression-scale", "0.4", "--no-paste-back", "--no-neutral-pose", "--renderer", "source",
                 "--port", "0", "--no-audio")
    args.source = data_dir / PHOTO
    cfg = server_config(args, FileCamera(data_dir / CLIP, loop=True))

    async def run() -> None:
        server = AvatarServer(cfg)
        try:
            await server.start()  # returns once the local engine has sent its first frame
            remote = server.engine_config(AvatarFrameHub(), TrackCamera("remote"))
        finally:
            await server.stop()
        [reenactor] = made
        assert reenactor.retargeter.config.expression_scale == 0.4 and not reenactor.config.paste_back
        assert remote.reenact is cfg.live.reenact and not remote.virtual_camera and not remote.preview
        assert isinstance(remote.camera, TrackCamera) and len(remote.sinks) == 1
        assert [r.stop_reason for r in server.engine_reports] == ["quit"]  # the local engine ran and stopped

    asyncio.run(run())
