"""Video reading and writing with PyAV (FFmpeg libraries bundled in the ``av`` wheel; no ``ffmpeg`` binary).

Reading:
- :func:`probe_video` describes a clip (:class:`VideoInfo`) and is the gatekeeper for user input: every
  file that cannot be used as a video raises :class:`~avatar_engine.errors.VideoReadError` with a
  one-line message.
- :func:`iter_frames` yields ``(H, W, 3) uint8`` RGB frames with their timestamps. A file that breaks
  part-way stops the iteration with a warning (logger ``avatar_engine``) and keeps what was decoded.

Writing:
- :class:`VideoWriter` encodes H.264 (libx264, yuv420p) and can copy the audio track of another file
  (re-encoded as AAC, aligned with the first video frame and trimmed to the written video).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from avatar_engine.errors import AvatarError, VideoReadError

__all__ = ["VideoInfo", "probe_video", "iter_frames", "VideoWriter"]

log = logging.getLogger("avatar_engine")

# FFmpeg demuxers that open still images or plain text as a one-frame "video": not videos for us.
_NO_FRAME = "no decodable video frame (corrupt or truncated file): {}"
_NON_VIDEO_FORMATS = frozenset({"image2", "image2pipe", "tty"})
# Sample rates the AAC encoder accepts; anything else is resampled to 48 kHz.
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000})


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found in a video file.

    Attributes:
        path: the file.
        width, height: frame size in pixels (of the decoded frames).
        fps: frames per second (the stream's average rate, e.g. ``29.97002997`` for NTSC).
        frames: number of frames :func:`iter_frames` yields for an intact file (see :func:`probe_video`).
        duration_s: ``frames / fps``, the playing time of the video track in seconds.
        has_audio: the file has an audio stream with a known codec.
        audio_rate: audio sample rate in Hz, 0 when ``has_audio`` is False.
        audio_channels: number of audio channels, 0 when ``has_audio`` is False.
    """

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    has_audio: bool
    audio_rate: int
    audio_channels: int


def _check_file(path: str | Path) -> Path:
    """The path as a :class:`Path` if it names a non-empty regular file; else :class:`VideoReadError`."""
    p = Path(path)
    if not p.exists():
        raise VideoReadError(f"video not found: {p}")
    if not p.is_file():
        raise VideoReadError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise VideoReadError(f"video file is empty: {p}")
    return p


def _open_video(p: Path) -> av.container.InputContainer:
    """Open ``p`` for reading and check that it holds a decodable video stream.

    The caller closes the returned container. Raises :class:`VideoReadError`.
    """
    try:
        container = av.open(str(p), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"not a readable video (corrupt, truncated or unsupported format): {p}") from exc
    fmt = container.format.name
    problem = None
    if fmt in _NON_VIDEO_FORMATS or fmt.endswith("_pipe"):
        problem = f"not a video (a still image or other non-video file): {p}"
    elif not container.streams.video:
        problem = f"no video stream in: {p}"
    elif container.streams.video[0].codec_context is None:
        problem = f"video codec not supported: {p}"
    if problem is not None:
        container.close()
        raise VideoReadError(problem)
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's frame rate, or None when the container does not say."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _start_time_s(stream: av.stream.Stream) -> float:
    """Start of a stream in seconds (0 when unknown)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _count_packets(container: av.container.InputContainer) -> int | None:
    """Video packets inside the stream's presentation window (start_time, start_time + duration).

    Packets outside the window are dropped by the container's edit list, so this equals the
    number of decoded frames for intact files. Returns None if the demuxer reports an error.
    """
    stream = container.streams.video[0]
    start = stream.start_time if stream.start_time is not None else -math.inf
    end = start + stream.duration if stream.duration else math.inf
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size and (packet.pts is None or start <= packet.pts < end):
                count += 1
    except av.FFmpegError:
        return None
    return count


def _count_decoded(container: av.container.InputContainer) -> int:
    """Frames the decoder delivers (no pixel conversion); stops at the first decoding error."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    count = 0
    try:
        for _ in container.decode(stream):
            count += 1
    except av.FFmpegError:
        pass
    return count


def probe_video(path: str | Path) -> VideoInfo:
    """Describe a video file, checking that it is usable.

    Frame count: the container's frame count is trusted only when it equals the number of video
    packets in the stream's presentation window (found by demuxing, which reads the file but
    decodes nothing: milliseconds). Otherwise (no count in the header, as in MPEG-PS ``.mpg``;
    an edit list that hides frames; a file cut short whose index still lists the lost frames)
    the frames are counted by decoding without pixel conversion (~400 fps at 1080p, thousands
    of fps at 256x256 on one CPU core).
    Damage inside the coded pictures that the demuxer cannot see is found only when decoding:
    :func:`iter_frames` then yields fewer frames than ``frames`` and warns.

    Raises:
        VideoReadError: missing file, a directory, an empty file, a still image or other
            non-video file, no video stream, a corrupt or truncated file with no decodable frame.
    """
    p = _check_file(path)
    container = _open_video(p)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = None
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError:
            pass
        if first is None:
            raise VideoReadError(_NO_FRAME.format(p))
        width, height = first.width, first.height
        fps = _stream_fps(stream)
        header_frames = stream.frames
        audio = container.streams.audio[0] if container.streams.audio else None
        has_audio = audio is not None and audio.codec_context is not None
        audio_rate = int(audio.codec_context.sample_rate) if has_audio else 0
        audio_channels = int(audio.codec_context.channels) if has_audio else 0
    finally:
        container.close()
    if fps is None:
        raise VideoReadError(f"video has no frame rate: {p}")

    with av.open(str(p), "r") as container:
        packets = _count_packets(container)
    if packets is not None and packets == header_frames and packets > 0:
        frames = packets
    else:
        with av.open(str(p), "r") as container:
            frames = _count_decoded(container)
        if packets is None or frames < packets:
            log.warning("video %s is damaged: only %d frames decode", p, frames)
    return VideoInfo(
        path=p,
        width=width,
        height=height,
        fps=float(fps),
        frames=frames,
        duration_s=frames / float(fps),
        has_audio=has_audio,
        audio_rate=audio_rate,
        audio_channels=audio_channels,
    )


def iter_frames(path: str | Path, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """Decode a video frame by frame.

    Yields:
        ``(rgb, t)``: ``rgb`` is ``(H, W, 3) uint8`` RGB; ``t`` is the frame's presentation time in
        seconds from the start of the video stream (the first frame of an ordinary file has ``t = 0``).

    At most ``max_frames`` frames are yielded (all when None). A file that cannot be opened or
    has no decodable frame raises :class:`VideoReadError` on the first ``next()``; a
    decoding error part-way through stops the iteration with a warning (logger ``avatar_engine``),
    keeping the frames already yielded.
    """
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    p = _check_file(path)
    container = _open_video(p)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = _start_time_s(stream)
        fps = _stream_fps(stream) or Fraction(25)
        count = 0
        frames = container.decode(stream)
        while max_frames is None or count < max_frames:
            try:
                frame = next(frames, None)
            except av.FFmpegError as exc:
                if count == 0:
                    raise VideoReadError(_NO_FRAME.format(p)) from exc
                log.warning("video %s: decoding stopped after %d frames (%s); keeping those", p, count, exc)
                return
            if frame is None:
                if count == 0:
                    raise VideoReadError(_NO_FRAME.format(p))
                return
            t = float(frame.time) - start if frame.time is not None else count / float(fps)
            yield frame.to_ndarray(format="rgb24"), t
            count += 1


class VideoWriter:
    """Encode RGB frames to an H.264 (libx264, yuv420p) video, optionally with the audio of another file.

    Args:
        path: output file; the container follows the extension (``.mp4``, ``.mov``, ``.mkv``).
            Parent folders are created.
        fps: frame rate; fractional rates are kept exactly when given as a :class:`Fraction`, and a
            float is turned into the nearest fraction with denominator <= 1001 (29.97002997 ->
            30000/1001).
        size: ``(W, H)`` of the frames passed to :meth:`write`. yuv420p needs even sizes: an odd
            width or height is padded by one pixel (the last column/row repeated), so the file is
            ``output_size = (W + W % 2, H + H % 2)``.
        audio_from: a file whose first audio stream is copied (re-encoded as AAC) into the output;
            ignored, with an info message, if it has no audio. The audio is aligned so that output
            time 0 is the start of that file's video stream (its first frame), and trimmed to the
            written video's duration ``frames / fps``.
        crf, preset: libx264 quality (lower crf = better, 18-23 typical) and speed preset.

    Use as a context manager; :meth:`close` runs even when the block raises, so the frames written
    so far form a playable file. If no frame was written the output file is removed.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        size: tuple[int, int],
        audio_from: str | Path | None = None,
        crf: int = 20,
        preset: str = "veryfast",
    ) -> None:
        width, height = (int(v) for v in size)
        if width < 2 or height < 2:
            raise ValueError(f"frame size must be at least 2x2, got {size}")
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.size = (width, height)
        self.output_size = (width + width % 2, height + height % 2)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.frames_written = 0
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._out = av.open(str(self.path), "w")
        except (av.FFmpegError, OSError, ValueError) as exc:  # ValueError: unknown extension
            raise AvatarError(f"cannot create video file {self.path}: {exc}") from exc
        self._audio_in: av.container.InputContainer | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._samples_written = 0
        try:
            self._video = self._out.add_stream("libx264", rate=self.rate)
            self._video.width, self._video.height = self.output_size
            self._video.pix_fmt = "yuv420p"
            self._video.codec_context.time_base = 1 / self.rate
            self._video.options = {"crf": str(crf), "preset": preset}
            if audio_from is not None:
                self._open_audio(_check_file(audio_from))
        except BaseException:
            self._out.close()
            self.path.unlink(missing_ok=True)
            raise

    def _open_audio(self, src: Path) -> None:
        """Set up the AAC output stream and the decoding of ``src``'s audio (if it has any)."""
        try:
            self._audio_in = av.open(str(src), "r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise VideoReadError(f"cannot read audio from {src}: not a readable media file") from exc
        streams = self._audio_in.streams
        if not streams.audio or streams.audio[0].codec_context is None:
            log.info("%s has no audio stream: writing %s without audio", src, self.path)
            self._audio_in.close()
            self._audio_in = None
            return
        in_audio = streams.audio[0]
        rate = in_audio.codec_context.sample_rate
        rate = rate if rate in _AAC_RATES else 48000
        layout = "mono" if in_audio.codec_context.channels == 1 else "stereo"
        self._audio = self._out.add_stream("aac", rate=rate, layout=layout)
        self._audio.codec_context.time_base = Fraction(1, rate)
        self._audio_rate = rate
        self._audio_layout = layout
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._audio_frames = self._audio_in.decode(in_audio)
        # Output time 0 is the first frame of the source's video stream (or the start of the file).
        self._audio_zero_s = _start_time_s(streams.video[0]) if streams.video else 0.0
        self._audio_placed = False  # the first decoded sample has been put on the output timeline
        self._audio_skip = 0  # source samples still to drop (they come before output time 0)
        self._pending = np.zeros((1 if layout == "mono" else 2, 0), np.float32)  # decoded, not yet encoded
        self._audio_done = False

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one frame: ``(H, W, 3) uint8`` RGB with ``(W, H) == size``."""
        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        w, h = self.size
        if frame_rgb.shape != (h, w, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected a ({h}, {w}, 3) uint8 frame, got {frame_rgb.shape} {frame_rgb.dtype}")
        pad_w, pad_h = self.output_size[0] - w, self.output_size[1] - h
        if pad_w or pad_h:
            frame_rgb = np.pad(frame_rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.rate
        self._out.mux(self._video.encode(frame))
        self.frames_written += 1
        if self._audio is not None:
            self._write_audio(final=False)

    def _write_audio(self, final: bool) -> None:
        """Encode the source audio up to the end of the last written video frame.

        While writing, only whole AAC frames (1024 samples) are encoded and the rest waits for the
        next video frame; ``final`` encodes everything up to the video's end and flushes the encoder.
        """
        target = int(self.frames_written / self.rate * self._audio_rate)
        needed = target - self._samples_written
        while self._pending.shape[1] < needed and not self._audio_done:
            self._decode_audio()
        n = min(needed, self._pending.shape[1])
        block = self._audio.codec_context.frame_size or 1024
        if not final:
            n -= n % block
        for i in range(0, n, block):
            samples = np.ascontiguousarray(self._pending[:, i : min(i + block, n)])
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self._audio_layout)
            frame.sample_rate = self._audio_rate
            frame.pts = self._samples_written
            frame.time_base = Fraction(1, self._audio_rate)
            self._out.mux(self._audio.encode(frame))
            self._samples_written += samples.shape[1]
        self._pending = self._pending[:, n:]
        if final:
            self._out.mux(self._audio.encode(None))

    def _decode_audio(self) -> None:
        """Decode one source audio frame into ``_pending`` (fltp at the output rate, aligned to time 0)."""
        try:
            frame = next(self._audio_frames, None)
        except av.FFmpegError as exc:
            log.warning("audio of %s: decoding stopped (%s); the rest is silent", self._audio_in.name, exc)
            frame = None
        if frame is None:
            self._audio_done = True
        elif not self._audio_placed:
            # Place the first decoded sample: before time 0 -> drop samples, after -> lead-in silence.
            self._audio_placed = True
            t0 = float(frame.time) if frame.time is not None else self._audio_zero_s
            offset = round((t0 - self._audio_zero_s) * self._audio_rate)
            self._audio_skip = max(0, -offset)
            silence = np.zeros((self._pending.shape[0], max(0, offset)), np.float32)
            self._pending = np.concatenate([self._pending, silence], axis=1)
        for out in self._resampler.resample(frame):
            samples = out.to_ndarray().astype(np.float32, copy=False)
            drop = min(self._audio_skip, samples.shape[1])
            self._audio_skip -= drop
            self._pending = np.concatenate([self._pending, samples[:, drop:]], axis=1)

    def close(self) -> None:
        """Flush the encoders and finish the file (idempotent). Removes the file if no frame was written."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.frames_written:
                self._out.mux(self._video.encode(None))
                if self._audio is not None:
                    self._write_audio(final=True)
        finally:
            self._out.close()
            if self._audio_in is not None:
                self._audio_in.close()
        if not self.frames_written:
            log.warning("no frame was written: %s not created", self.path)
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
