"""``avatar-engine serve``: the avatar in a web page, over WebRTC.

An aiohttp server with a page (``runtime/web/``) and an offer/answer endpoint. Two modes:

* **local driving** (``?mode=local``): the server's own camera drives one shared
  :class:`~runtime.engine.LiveEngine`; every browser that connects receives its avatar, with the
  server's microphone delayed by the engine's video latency (:mod:`runtime.audio`).
* **remote driving** (``?mode=remote``): the browser sends its camera (and, if asked, its
  microphone); the server runs an engine for that session on the received track
  (:class:`~runtime.track_camera.TrackCamera`) and sends the avatar back, with the browser's own
  audio delayed to match. A machine without a GPU can thus use a server that has one.

Endpoints: ``GET /`` the page, ``POST /offer`` (``{"sdp", "type": "offer", "mode"}`` -> answer and a
session id), ``POST /stats`` (the page's receive statistics), ``POST /snapshot`` (a JPEG of the
decoded video, diagnostics), ``POST /close``, ``GET /sessions``.

Security: binds to 127.0.0.1 unless ``host`` says otherwise; on any non-loopback address every
request (but the page's static script) needs the access token (``?token=`` or ``Authorization: Bearer``), compared in constant time
(401 otherwise). Bodies over ``max_body_bytes`` get 413; a malformed, oversized or unusable offer
gets 400 and nothing else changes; more than ``max_sessions`` sessions get 503. A session is closed
(tracks stopped, engine and tasks ended) when its peer closes, fails ICE consent (vanishes), never
connects within ``connect_timeout_s``, its page stops reporting for ``heartbeat_timeout_s``, or the
page says goodbye.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from avatar_engine.errors import AvatarError

from runtime.audio import AudioSource, DelayConfig, DelayedAudio, DelayedAudioTrack, TrackAudioSource, open_microphone
from runtime.capture import CameraSource
from runtime.engine import LiveConfig, LiveEngine, LiveReport
from runtime.track_camera import TrackCamera
from runtime.webrtc_tracks import AvatarFrameHub, AvatarVideoTrack, VideoTrackConfig

__all__ = ["ServerConfig", "AvatarServer", "SessionInfo", "is_loopback", "serve"]

log = logging.getLogger("avatar_engine")

WEB_DIR = Path(__file__).resolve().parent / "web"
MODES = ("local", "remote")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """Options of ``avatar-engine serve``.

    Attributes:
        live: the engines' options (source photo, camera, renderer, size, device, threads, expression
            scale and paste-back in ``live.reenact``, neutral-pose step, ...). The local engine runs it as
            given (its camera, virtual camera, recording and extra sinks too), remote sessions with the
            browser's camera and their WebRTC track as their only output; the server never opens a
            preview window nor takes over signals.
        local: local driving: ``live.camera`` drives one shared engine (False: remote driving only,
            no camera is opened here).
        host, port: where to listen (port 0: any free port).
        token: access token; None = a new random one. Required on non-loopback hosts.
        audio: send audio (local: the microphone; remote: the browser's microphone, sent back delayed).
        audio_device: PortAudio input device (None: the default).
        audio_source: local driving audio instead of the microphone (e.g. an ``ArrayAudioSource``).
        max_sessions: concurrent peer sessions; more get 503.
        max_body_bytes: request body limit (413 beyond). max_sdp_chars: an offer longer than this gets 400.
        connect_timeout_s: a session whose peer does not connect within this is closed.
        heartbeat_timeout_s: a session whose page reported statistics and then stopped for this long
            is closed (the browser crashed or lost the network).
        ice_servers: STUN/TURN URLs for the server's peer connections (none by default: host candidates
            only, no traffic to outside servers).
        video: size limit, keepalive, timing stamp of the sent video.
        delay: how the audio delay follows the latency.
        startup_timeout_s: how long to wait for the local engine's first frame.
    """

    live: LiveConfig
    local: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    audio: bool = True
    audio_device: int | str | None = None
    audio_source: AudioSource | None = None
    max_sessions: int = 4
    max_body_bytes: int = 256 * 1024
    max_sdp_chars: int = 64 * 1024
    connect_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 10.0
    ice_servers: list[str] = field(default_factory=list)
    video: VideoTrackConfig = field(default_factory=VideoTrackConfig)
    delay: DelayConfig = field(default_factory=DelayConfig)
    startup_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


@dataclass
class SessionInfo:
    """One peer session (what ``GET /sessions`` lists).

    Attributes:
        id: session id. mode: ``"local"`` or ``"remote"``. state: the peer connection's state.
        created: ``time.monotonic()`` at the offer. audio: whether audio is sent.
        report: the page's last statistics report (``POST /stats``), {} before the first.
        snapshot: the page's last JPEG of the decoded video (``POST /snapshot``), or None.
    """

    id: str
    mode: str
    state: str
    created: float
    audio: bool
    report: dict[str, Any] = field(default_factory=dict)
    snapshot: bytes | None = None


class _Session:
    """Everything one peer connection owns, released by :meth:`AvatarServer._close_session`."""

    def __init__(self, info: SessionInfo, pc: RTCPeerConnection):
        self.info = info
        self.pc = pc
        self.tracks: list[Any] = []
        self.tasks: list[asyncio.Task] = []
        self.hub: AvatarFrameHub | None = None
        self.engine: LiveEngine | None = None
        self.engine_thread: threading.Thread | None = None
        self.camera: TrackCamera | None = None
        self.audio_in: TrackAudioSource | None = None
        self.audio: DelayedAudio | None = None
        self.closing = False
        self.last_report = 0.0  # time.monotonic() of the page's last POST /stats (0: none yet)


class AvatarServer:
    """The signalling server and its engines. Use ``await start()`` / ``await stop()`` in one event loop.

    Args:
        config: server options.

    Attributes:
        token: the access token. url: the page's address (with the token), after :meth:`start`.
        sessions: open sessions by id. local_hub: the local engine's frames (None without local driving).
        engine_reports: :class:`LiveReport` of every engine that ended (local and remote sessions).
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self.token = config.token or secrets.token_urlsafe(18)
        self.require_token = not is_loopback(config.host)
        self.sessions: dict[str, _Session] = {}
        self.local_hub: AvatarFrameHub | None = None
        self.local_engine: LiveEngine | None = None
        self.local_audio: DelayedAudio | None = None
        self.engine_reports: list[LiveReport] = []
        self.url = ""
        self.port = config.port
        self._local_thread: threading.Thread | None = None
        self._local_error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._pending = 0
        self.app = self._build_app()

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> str:
        """Start the local engine (if any), the microphone and the web server. Returns :attr:`url`.

        Call :meth:`stop` afterwards even when this raised (it releases what did start).

        Raises:
            CameraError, AvatarError: the local camera or the source photo is unusable.
            OSError: the address is in use.
        """
        cfg = self.config
        if cfg.local:
            await self._start_local_engine()
            if cfg.audio:
                source = cfg.audio_source
                if source is None:
                    source = await asyncio.to_thread(open_microphone, cfg.audio_device)
                if source is not None:
                    self.local_audio = DelayedAudio(source, lambda: self.local_hub.latency_ms, cfg.delay)
                    await asyncio.to_thread(self.local_audio.start)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        host = socket.gethostname() if cfg.host in ("0.0.0.0", "::", "") else cfg.host  # all interfaces
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{self.port}/?token={self.token}"
        return self.url

    async def stop(self) -> None:
        """Close every session, the web server, the microphone and the local engine."""
        for sid in list(self.sessions):
            await self._close_session(sid, "server stopping")
        deadline = time.monotonic() + 30.0
        while self.sessions and time.monotonic() < deadline:  # sessions other tasks are releasing
            await asyncio.sleep(0.05)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.local_audio is not None:
            await asyncio.to_thread(self.local_audio.stop)
            self.local_audio = None
        if self.local_engine is not None:
            self.local_engine.stop("quit")
        if self._local_thread is not None:
            await asyncio.to_thread(self._local_thread.join, 15.0)
            self._local_thread = None

    async def _start_local_engine(self) -> None:
        cfg = self.config
        self.local_hub = AvatarFrameHub()
        self.local_engine = LiveEngine(self.engine_config(self.local_hub))
        self._local_thread = threading.Thread(target=self._run_engine, name="local engine", daemon=True,
                                              args=(self.local_engine, "local"))
        self._local_thread.start()
        deadline = time.monotonic() + cfg.startup_timeout_s
        while self.local_hub.frames == 0:
            if not self._local_thread.is_alive():
                error = self._local_error or AvatarError("the local engine stopped before its first frame")
                raise error
            if time.monotonic() > deadline:
                self.local_engine.stop("quit")
                raise AvatarError(f"the local engine sent no frame within {cfg.startup_timeout_s:g} s")
            await asyncio.sleep(0.05)

    def engine_config(self, hub: AvatarFrameHub, camera: CameraSource | None = None) -> LiveConfig:
        """The options of one engine: ``config.live`` sending to ``hub``; with ``camera`` (remote
        driving) that camera drives it and the hub is its only output."""
        live = self.config.live
        if camera is None:
            return replace(live, sinks=[*live.sinks, hub], preview=False, handle_signals=False)
        return replace(live, camera=camera, sinks=[hub], preview=False, virtual_camera=False, output=None,
                       handle_signals=False)

    def _run_engine(self, engine: LiveEngine, label: str) -> None:
        """Engine thread: run until it stops; keep the report (or the error)."""
        try:
            report = engine.run()
        except BaseException as exc:
            if label == "local":
                self._local_error = exc  # start() raises it when the engine never came up
            if not isinstance(exc, AvatarError):
                log.exception("%s engine failed", label)
            elif label != "local" or self.local_hub.frames > 0:
                log.error("%s engine: %s", label, exc)
            return
        self.engine_reports.append(report)
        log.info("%s engine stopped (%s): %d frames at %.1f fps", label, report.stop_reason,
                 report.frames_processed, report.fps)

    # ------------------------------------------------------------------------------ http
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/client.js", self._client_js)
        app.router.add_post("/offer", self._offer)
        app.router.add_post("/stats", self._stats)
        app.router.add_post("/snapshot", self._snapshot)
        app.router.add_post("/close", self._close)
        app.router.add_get("/sessions", self._sessions)
        return app

    def token_ok(self, request: web.Request) -> bool:
        """Whether ``request`` carries the access token (constant-time comparison)."""
        given = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        # the page's script is public (the page loads it without the token; it holds no secret)
        if self.require_token and request.path != "/client.js" and not self.token_ok(request):
            return web.json_response({"error": "missing or wrong access token"}, status=401)
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def _client_js(self, request: web.Request) -> web.Response:
        return web.FileResponse(WEB_DIR / "client.js", headers={"Cache-Control": "no-store"})

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object; raises HTTPBadRequest (or 413 from aiohttp) otherwise."""
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            raise
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _offer(self, request: web.Request) -> web.Response:
        cfg = self.config
        if request.content_type != "application/json":  # cross-site pages cannot send this without CORS approval
            raise web.HTTPBadRequest(text="the offer must be sent as application/json")
        body = await self._json_body(request)
        sdp, kind, mode = body.get("sdp"), body.get("type"), body.get("mode", "local")
        if kind != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise web.HTTPBadRequest(text="expected {\"type\": \"offer\", \"sdp\": \"v=0...\"}")
        if len(sdp) > cfg.max_sdp_chars:
            raise web.HTTPBadRequest(text=f"SDP longer than {cfg.max_sdp_chars} characters")
        if mode not in MODES:
            raise web.HTTPBadRequest(text=f"mode must be one of {', '.join(MODES)}")
        if mode == "local" and self.local_hub is None:
            raise web.HTTPBadRequest(text="local driving is off on this server (no camera); use mode=remote")
        if mode == "local" and self.local_hub.closed:
            raise web.HTTPServiceUnavailable(text="the local engine has stopped (its camera ended); use mode=remote")
        if len(self.sessions) + self._pending >= cfg.max_sessions:
            raise web.HTTPServiceUnavailable(text=f"server busy: {cfg.max_sessions} sessions already")
        self._pending += 1
        try:
            answer, session = await self._negotiate(sdp, mode)
        finally:
            self._pending -= 1
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.info.id,
                                  "audio": session.info.audio})

    async def _negotiate(self, sdp: str, mode: str) -> tuple[RTCSessionDescription, _Session]:
        """Answer ``sdp``: a new session with its tracks (and engine, for remote driving)."""
        cfg = self.config
        ice = [RTCIceServer(urls=url) for url in cfg.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        info = SessionInfo(uuid.uuid4().hex, mode, "new", time.monotonic(), False)
        session = _Session(info, pc)
        remote_kinds: dict[str, Any] = {}

        @pc.on("track")
        def on_track(track) -> None:
            remote_kinds.setdefault(track.kind, track)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            kinds = {t.kind for t in pc.getTransceivers()}
            if "video" not in kinds:
                raise ValueError("the offer has no video")
            if mode == "remote" and "video" not in remote_kinds:
                raise ValueError("remote driving needs the browser's camera track in the offer")
            if mode == "local":
                hub, audio = self.local_hub, self.local_audio
            else:
                hub, audio = self._start_remote(session, remote_kinds)
            video = AvatarVideoTrack(hub, cfg.video, stamp_of=self._stamp_of(session))
            pc.addTrack(video)
            session.tracks.append(video)
            if audio is not None and "audio" in kinds and not audio.ended:
                track = DelayedAudioTrack(audio)
                pc.addTrack(track)
                session.tracks.append(track)
                info.audio = True
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # anything aiortc rejects is the client's fault: 400, and nothing stays
            await self._release(session)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            log.info("rejected an offer: %s", reason[:200])
            raise web.HTTPBadRequest(text=f"unusable offer: {reason[:200]}") from None
        self.sessions[info.id] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            info.state = pc.connectionState
            if pc.connectionState == "connected":
                session.tasks.append(asyncio.ensure_future(_fresh_keyframes(pc)))
            elif pc.connectionState in ("failed", "closed"):
                await self._close_session(info.id, f"connection {pc.connectionState}")

        session.tasks.append(asyncio.ensure_future(self._watchdog(info.id)))
        log.info("session %s (%s driving%s) started", info.id[:8], mode, ", with audio" if info.audio else "")
        return pc.localDescription, session

    def _start_remote(self, session: _Session, remote: dict[str, Any]) -> tuple[AvatarFrameHub, DelayedAudio | None]:
        """Remote driving: the received camera drives a new engine; the received audio comes back delayed."""
        cfg = self.config
        session.hub = hub = AvatarFrameHub()
        session.camera = TrackCamera(f"remote camera {session.info.id[:8]}", read_stamps=cfg.video.stamp)
        session.tasks.append(asyncio.ensure_future(session.camera.consume(remote["video"])))
        session.engine = LiveEngine(self.engine_config(hub, session.camera))
        session.engine_thread = threading.Thread(target=self._run_engine, name=f"engine {session.info.id[:8]}",
                                                 daemon=True, args=(session.engine, "remote"))
        session.engine_thread.start()
        audio = None
        if cfg.audio and "audio" in remote:
            session.audio_in = TrackAudioSource(f"remote microphone {session.info.id[:8]}")
            session.tasks.append(asyncio.ensure_future(session.audio_in.consume(remote["audio"])))
            session.audio = audio = DelayedAudio(session.audio_in, lambda: hub.latency_ms, cfg.delay)
            audio.start()
        return hub, audio

    def _stamp_of(self, session: _Session):
        """Remote driving with stamps: the avatar carries the stamp of the driving frame it was made from."""
        if not self.config.video.stamp or session.info.mode != "remote":
            return None

        def stamp_of(info) -> int:
            value = session.camera.stamp_for(info.index) if session.camera is not None else None
            return 0 if value is None else value

        return stamp_of

    async def _watchdog(self, sid: str) -> None:
        """Close a session whose peer never connects, or whose page stopped reporting (a browser that
        vanished; peers that never report are left to ICE consent checks, which fail in ~30 s)."""
        cfg = self.config
        connected = False
        while True:
            await asyncio.sleep(0.5)
            session = self.sessions.get(sid)
            if session is None or session.closing:
                return
            now = time.monotonic()
            connected = connected or session.pc.connectionState == "connected"
            if not connected and now - session.info.created > cfg.connect_timeout_s:
                await self._close_session(sid, "peer never connected")
                return
            if session.last_report > 0 and now - session.last_report > cfg.heartbeat_timeout_s:
                await self._close_session(sid, f"the page went silent for {now - session.last_report:.0f} s")
                return

    async def _close_session(self, sid: str, reason: str) -> None:
        """Release a session; it stays listed in :attr:`sessions` until everything it owned has ended."""
        session = self.sessions.get(sid)
        if session is None or session.closing:
            return
        try:
            await self._release(session)
        finally:
            self.sessions.pop(sid, None)
        log.info("session %s closed (%s)", sid[:8], reason)

    async def _release(self, session: _Session) -> None:
        """Stop a session's tracks, engine, audio and tasks, and close its peer connection."""
        session.closing = True
        for track in session.tracks:
            track.stop()
        if session.camera is not None:
            session.camera.end()
        if session.engine is not None:
            session.engine.stop("quit")
        if session.audio_in is not None:
            session.audio_in.stop()
        if session.audio is not None:
            await asyncio.to_thread(session.audio.stop)
        await session.pc.close()
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current and not task.done():
                task.cancel()
        pending = [t for t in session.tasks if t is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if session.engine_thread is not None:
            await asyncio.to_thread(session.engine_thread.join, 15.0)
            if session.engine_thread.is_alive():
                log.warning("the engine of session %s did not stop in time", session.info.id[:8])

    async def _stats(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        session = self.sessions.get(str(body.get("session", "")))
        if session is None:
            raise web.HTTPNotFound(text="no such session")
        session.info.report = {k: v for k, v in body.items() if isinstance(k, str)}
        session.last_report = time.monotonic()
        return web.json_response({"ok": True, "audio_delay_ms": self._delay_of(session)})

    def _delay_of(self, session: _Session) -> float:
        audio = self.local_audio if session.info.mode == "local" else session.audio
        return 0.0 if audio is None else audio.delay_ms

    async def _snapshot(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        session = self.sessions.get(str(body.get("session", "")))
        if session is None:
            raise web.HTTPNotFound(text="no such session")
        data = str(body.get("jpeg", ""))
        try:
            session.info.snapshot = base64.b64decode(data.split(",", 1)[-1], validate=True)
        except ValueError:
            raise web.HTTPBadRequest(text="jpeg must be base64") from None
        return web.json_response({"ok": True})

    async def _close(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise web.HTTPBadRequest(text="body is not JSON") from None
        sid = str(body.get("session", "")) if isinstance(body, dict) else ""
        if sid not in self.sessions:
            raise web.HTTPNotFound(text="no such session")
        await self._close_session(sid, "closed by the page")
        return web.json_response({"ok": True})

    async def _sessions(self, request: web.Request) -> web.Response:
        return web.json_response([{"id": s.info.id, "mode": s.info.mode, "state": s.info.state,
                                   "audio": s.info.audio, "report": s.info.report,
                                   "audio_delay_ms": self._delay_of(s)} for s in self.sessions.values()])


async def _fresh_keyframes(pc: RTCPeerConnection, after_s: tuple[float, ...] = (0.3, 1.0)) -> None:
    """Make the video encoder send keyframes shortly after the connection comes up.

    The first keyframe can reach a peer before its receiver is ready; a receiver that does not ask
    for another (aiortc's does not, browsers do) would decode garbage until the next one.
    """
    waited = 0.0
    for t in after_s:
        await asyncio.sleep(t - waited)
        waited = t
        for sender in pc.getSenders():
            request = getattr(sender, "_send_keyframe", None)  # aiortc's PLI handler
            if sender.track is not None and sender.track.kind == "video" and request is not None:
                request()


def serve(config: ServerConfig) -> None:
    """Run the server until Ctrl-C / SIGTERM (``avatar-engine serve``); prints the page's address."""
    import signal

    async def main() -> None:
        server = AvatarServer(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            url = await server.start()
            print(url, flush=True)
            if server.require_token:
                log.info("listening on %s:%d: the page needs the token in its address", config.host, server.port)
            await stop.wait()
            log.info("stopping...")
        finally:
            await server.stop()

    asyncio.run(main())
