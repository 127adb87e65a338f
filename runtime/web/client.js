// avatar-engine page: receives the avatar over WebRTC (local driving) or sends this browser's camera
// and receives the avatar made from it (remote driving). Shows the connection state and statistics
// and reports them to the server (POST /stats).
//
// Address options: ?token=... (needed on non-loopback servers), mode=local|remote, audio=0|1,
// autostart=1, stamp=1 (send/read timing stamps: capture -> decoded latency), snapshot=N (post a
// JPEG of the decoded video every N seconds, diagnostics).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const STAMP_BITS = 16, STAMP_ROWS = 16;
const $ = (id) => document.getElementById(id);

let pc = null, session = null, timer = null, localStream = null, stampTimer = null;
let latencies = [], decodedAtStart = 0, lastDecoded = 0, lastDecodedAt = 0;

function withToken(path) {
  return token ? `${path}?token=${encodeURIComponent(token)}` : path;
}

async function post(path, body) {
  const r = await fetch(withToken(path), {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

function nowMs() { return performance.timeOrigin + performance.now(); }

function setState(text, ok) {
  const el = $("state");
  el.textContent = text;
  el.className = ok === undefined ? "" : (ok ? "good" : "bad");
}

// --- timing stamps: 16 blocks (MSB first) in the bottom rows, white = 1 (same as runtime/webrtc_tracks.py)
function drawStamp(ctx, w, h, value) {
  const bw = Math.floor(w / STAMP_BITS);
  for (let i = 0; i < STAMP_BITS; i++) {
    ctx.fillStyle = ((value >> (STAMP_BITS - 1 - i)) & 1) ? "#fff" : "#000";
    ctx.fillRect(i * bw, h - STAMP_ROWS, bw, STAMP_ROWS);
  }
}

function readStamp(ctx, w, h) {
  const bw = Math.floor(w / STAMP_BITS);
  const rows = ctx.getImageData(0, h - STAMP_ROWS + 4, w, STAMP_ROWS - 8).data;
  let value = 0;
  for (let i = 0; i < STAMP_BITS; i++) {
    let sum = 0, n = 0;
    for (let y = 0; y < STAMP_ROWS - 8; y++) {
      for (let x = i * bw + Math.floor(bw / 4); x < (i + 1) * bw - Math.floor(bw / 4); x++) {
        const k = (y * w + x) * 4;
        sum += rows[k] + rows[k + 1] + rows[k + 2]; n += 3;
      }
    }
    value = (value << 1) | (sum / n > 127.5 ? 1 : 0);
  }
  return value;
}

function watchStamps(video) {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  const onFrame = () => {
    const t = nowMs();
    const w = video.videoWidth, h = video.videoHeight;
    if (w >= STAMP_BITS * 4 && h > STAMP_ROWS) {
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      ctx.drawImage(video, 0, 0, w, h);
      const stamp = readStamp(ctx, w, h);
      const ms = ((Math.floor(t) % 65536) - stamp + 65536) % 65536;
      if (ms < 5000) latencies.push(ms);
      if (latencies.length > 2000) latencies.shift();
    }
    if (pc) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// Remote driving with stamps: the camera goes through a canvas that writes the capture time in.
function stampedCameraTrack(stream) {
  const cam = document.createElement("video");
  cam.muted = true; cam.playsInline = true; cam.srcObject = stream;
  cam.play();
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  const draw = () => {
    if (cam.videoWidth) {
      if (canvas.width !== cam.videoWidth) { canvas.width = cam.videoWidth; canvas.height = cam.videoHeight; }
      ctx.drawImage(cam, 0, 0);
      drawStamp(ctx, canvas.width, canvas.height, Math.floor(nowMs()) % 65536);
    }
  };
  const onFrame = () => { draw(); if (pc) cam.requestVideoFrameCallback(onFrame); };
  cam.requestVideoFrameCallback(onFrame);
  canvas.width = 640; canvas.height = 480;
  return canvas.captureStream(30).getVideoTracks()[0];
}

async function collectStats() {
  if (!pc) return null;
  const report = await pc.getStats();
  const out = {session, state: pc.connectionState, ice: pc.iceConnectionState, framesDecoded: 0,
               framesReceived: 0, fps: 0, width: 0, height: 0, rttMs: null, audioSamples: 0, audioLevel: null};
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.framesDecoded = s.framesDecoded || 0;
      out.framesReceived = s.framesReceived || 0;
      out.fps = s.framesPerSecond || 0;
      out.width = s.frameWidth || 0;
      out.height = s.frameHeight || 0;
      if (s.jitterBufferEmittedCount) out.jitterBufferMs = 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount;
      if (s.framesDecoded) out.decodeMs = 1000 * (s.totalDecodeTime || 0) / s.framesDecoded;
    } else if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.audioSamples = s.totalSamplesReceived || 0;
      out.audioLevel = s.audioLevel ?? null;
    } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      if (s.currentRoundTripTime !== undefined) out.rttMs = s.currentRoundTripTime * 1000;
    }
  });
  const t = performance.now();
  if (lastDecodedAt && t > lastDecodedAt && !out.fps) {
    out.fps = (out.framesDecoded - lastDecoded) * 1000 / (t - lastDecodedAt);
  }
  lastDecoded = out.framesDecoded; lastDecodedAt = t;
  out.latencyMs = latencies.splice(0, latencies.length);
  return out;
}

function showStats(s, delayMs) {
  const rtt = s.rttMs === null ? "-" : s.rttMs.toFixed(1) + " ms";
  $("stats").textContent =
    `video ${s.width}x${s.height}, ${s.fps.toFixed(1)} fps, ${s.framesDecoded} frames decoded\n` +
    `round trip ${rtt}` + (delayMs !== undefined ? `, audio delayed by ${delayMs.toFixed(0)} ms to match the video` : "");
}

async function snapshot(video) {
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  await post("/snapshot", {session, jpeg: canvas.toDataURL("image/jpeg", 0.9)});
}

function waitForIce(peer, timeoutMs) {
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") return resolve();
    const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function start() {
  const mode = $("mode").value, audio = $("audio").checked, stamp = params.get("stamp") === "1";
  const video = $("video");
  $("start").disabled = true; $("stop").disabled = false;
  latencies = []; lastDecoded = 0; lastDecodedAt = 0;
  pc = new RTCPeerConnection({iceServers: []});
  pc.addEventListener("connectionstatechange", () => setState(pc.connectionState, pc.connectionState === "connected"));
  pc.addEventListener("track", (e) => {
    // a video call wants the picture now: ask the receiver for as little buffering as it can do
    if ("jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = 0;
    else if ("playoutDelayHint" in e.receiver) e.receiver.playoutDelayHint = 0;
    if (!video.srcObject) video.srcObject = e.streams[0] || new MediaStream();
    if (!e.streams[0]) video.srcObject.addTrack(e.track);
  });
  if (mode === "remote") {
    localStream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 640, height: 480, frameRate: 30}, audio});
    const cam = localStream.getVideoTracks()[0];
    pc.addTrack(stamp ? stampedCameraTrack(localStream) : cam, localStream);
    localStream.getAudioTracks().forEach((t) => pc.addTrack(t, localStream));
    if (!audio) pc.addTransceiver("audio", {direction: "recvonly"});
  } else {
    pc.addTransceiver("video", {direction: "recvonly"});
    if (audio) pc.addTransceiver("audio", {direction: "recvonly"});
  }
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc, 3000);
  setState("connecting");
  const answer = await post("/offer", {sdp: pc.localDescription.sdp, type: "offer", mode});
  session = answer.session;
  await pc.setRemoteDescription({sdp: answer.sdp, type: answer.type});
  // remote driving sends back the page's own voice: received (in sync, for recording or forwarding) but
  // not played here, where it would be an echo
  video.muted = !answer.audio || mode === "remote";
  video.play().catch(() => { video.muted = true; video.play(); });
  if (stamp) watchStamps(video);
  const snapEvery = Number(params.get("snapshot") || 0);
  let lastSnap = performance.now();
  timer = setInterval(async () => {
    try {
      const s = await collectStats();
      if (!s) return;
      const reply = await post("/stats", s);
      showStats(s, answer.audio ? reply.audio_delay_ms : undefined);
      if (snapEvery > 0 && performance.now() - lastSnap > snapEvery * 1000 && s.framesDecoded > 0) {
        lastSnap = performance.now();
        await snapshot(video);
      }
    } catch (err) {
      $("stats").textContent = String(err);
    }
  }, Number(params.get("report") || 1000));
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  if (session) navigator.sendBeacon(withToken("/close"), JSON.stringify({session}));
  if (pc) pc.close();
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  pc = null; session = null; localStream = null;
  $("video").srcObject = null;
  $("start").disabled = false; $("stop").disabled = true;
  setState("closed");
}

$("mode").value = params.get("mode") === "remote" ? "remote" : "local";
$("audio").checked = params.get("audio") !== "0";
$("start").addEventListener("click", () => start().catch((err) => { setState(String(err), false); }));
$("stop").addEventListener("click", stop);
window.addEventListener("pagehide", stop);
if (params.get("autostart") === "1") start().catch((err) => setState(String(err), false));
