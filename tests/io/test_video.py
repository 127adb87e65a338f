"""Tests of avatar_engine.io.video on the real clips in ../shared/data (probe, decode, encode, audio mux, bad input)."""
from __future__ import annotations

import csv
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avatar_engine.errors import AvatarError, VideoReadError
from avatar_engine.io.video import VideoInfo, VideoWriter, iter_frames, probe_video

# Val clips with an audio track: C054/C059 (16 kHz mono speech), C077 (44.1 kHz stereo),
# C153 (44.1 kHz mono, digital silence). The MEAD clips (C018-C025), C122 and C151 have no audio.
CLIP_16K_MONO = "clips/val/P029/C054.mp4"
CLIP_STEREO_30FPS = "clips/val/P048/C077.mp4"
CLIP_MOV = "clips/val/P122/C153.mov"
CLIP_NO_AUDIO = "clips/val/P004/C018.mp4"


@pytest.fixture(scope="module")
def clips_csv(data_dir: Path) -> dict[str, dict[str, str]]:
    """All rows of clips.csv by path."""
    with open(data_dir / "clips.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def audio_stream_duration(path: Path) -> float:
    """Duration of the audio track as the container records it, in seconds."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return float(stream.duration * stream.time_base)


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """All audio of ``path`` as mono float32 ``(n,)`` at its own rate."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [f.to_ndarray()[0] for frame in c.decode(stream) for f in resampler.resample(frame)]
    return np.concatenate(chunks).astype(np.float32), rate


def best_lag(out_audio: np.ndarray, ref: np.ndarray, start: int, n: int, max_lag: int) -> int:
    """Lag (samples) of ``ref`` that best matches ``out_audio[start:start + n]`` (normalised dot product)."""
    seg = out_audio[start : start + n]
    lags = [lag for lag in range(-max_lag, max_lag + 1) if start + lag >= 0]
    windows = [ref[start + lag : start + lag + n] for lag in lags]
    scores = [np.dot(seg, w) / (np.linalg.norm(w) + 1e-9) for w in windows]
    return lags[int(np.argmax(scores))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# ---------------------------------------------------------------- probe / iter_frames


@pytest.mark.parametrize(
    "rel",
    [
        CLIP_NO_AUDIO,
        CLIP_16K_MONO,
        CLIP_STEREO_30FPS,
        "clips/val/P092/C122.mp4",  # 1280x720
        CLIP_MOV,
        "clips/train/P009/C030.mp4",  # edit list hides 57 of the 266 frames the header lists
        "clips/train/P117/C148.mp4",  # 29.97 fps; the header lists one frame more than decodes
        "clips/train/P094/C124.mpg",  # MPEG-PS: no frame count in the container
    ],
)
def test_probe_matches_csv_and_decoded_frames(data_dir: Path, rel: str, clips_csv: dict) -> None:
    row = clips_csv[rel]
    info = probe_video(data_dir / rel)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
    assert info.fps == pytest.approx(float(row["fps"]), abs=0.01)
    assert info.frames == int(row["frames"])
    assert info.duration_s == pytest.approx(info.frames / info.fps)

    frames = list(iter_frames(data_dir / rel))
    assert len(frames) == info.frames
    rgb, t0 = frames[0]
    assert rgb.shape == (info.height, info.width, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 5  # real picture content, not a blank frame
    times = np.array([t for _, t in frames])
    assert t0 == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.diff(times) > 0)
    assert np.median(np.diff(times)) == pytest.approx(1 / info.fps, rel=0.01)


def test_probe_audio_fields(data_dir: Path) -> None:
    stereo = probe_video(data_dir / CLIP_STEREO_30FPS)
    assert (stereo.has_audio, stereo.audio_rate, stereo.audio_channels) == (True, 44100, 2)
    mono = probe_video(data_dir / CLIP_MOV)
    assert (mono.has_audio, mono.audio_rate, mono.audio_channels) == (True, 44100, 1)
    silent = probe_video(data_dir / CLIP_NO_AUDIO)
    assert (silent.has_audio, silent.audio_rate, silent.audio_channels) == (False, 0, 0)


def test_iter_frames_max_frames(data_dir: Path) -> None:
    assert len(list(iter_frames(data_dir / CLIP_NO_AUDIO, max_frames=7))) == 7
    assert list(iter_frames(data_dir / CLIP_NO_AUDIO, max_frames=0)) == []
    with pytest.raises(ValueError):
        next(iter_frames(data_dir / CLIP_NO_AUDIO, max_frames=-1))


# ---------------------------------------------------------------- VideoWriter


def test_write_with_audio_roundtrip(data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / CLIP_16K_MONO
    originals = [rgb[:, ::-1] for rgb, _ in iter_frames(src, max_frames=50)]  # mirrored
    out = tmp_path / "nested" / "dir" / "out.mp4"  # parent dirs are created
    with VideoWriter(out, fps=25, size=(224, 224), audio_from=src) as writer:
        for rgb in originals:
            writer.write(rgb)

    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (224, 224, 50)
    assert info.fps == pytest.approx(25.0)
    assert (info.has_audio, info.audio_rate, info.audio_channels) == (True, 16000, 1)
    decoded = [rgb for rgb, _ in iter_frames(out)]
    assert min(psnr(a, b) for a, b in zip(decoded, originals)) > 30

    assert audio_stream_duration(out) == pytest.approx(info.duration_s, abs=0.01)
    audio, rate = decode_audio(out)
    assert info.duration_s - 0.01 <= len(audio) / rate <= info.duration_s + 1024 / rate  # + AAC tail padding
    # The output audio is the source's first 2 s, starting at the first video frame (lag ~ 0).
    ref, ref_rate = decode_audio(src)
    assert ref_rate == rate
    assert best_lag(audio, ref, start=200, n=len(audio) - 400, max_lag=160) == pytest.approx(0, abs=2)
    assert np.corrcoef(audio[200:-200], ref[200 : len(audio) - 200])[0, 1] > 0.9


@pytest.mark.parametrize(("video_start", "audio_start"), [(0.0, 0.4), (0.4, 0.0)])
def test_audio_aligned_to_first_video_frame(
    data_dir: Path, tmp_path: Path, video_start: float, audio_start: float
) -> None:
    """Sources whose audio starts after (or before) their video: output audio time 0 = first video frame."""
    src = data_dir / CLIP_16K_MONO
    shifted = tmp_path / "shifted.mkv"
    with av.open(str(src)) as c:
        audio_frames = list(c.decode(audio=0))[:40]  # 40 x 1024 samples = 2.56 s
    with av.open(str(shifted), "w") as dst:
        vs = dst.add_stream("libx264", rate=25)
        vs.width = vs.height = 224
        vs.pix_fmt = "yuv420p"
        aus = dst.add_stream("aac", rate=16000, layout="mono")
        for i, (rgb, _) in enumerate(iter_frames(src, max_frames=50)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i + round(video_start * 25), Fraction(1, 25)
            dst.mux(vs.encode(frame))
        pos = round(audio_start * 16000)
        for frame in audio_frames:
            frame.pts, frame.time_base = pos, Fraction(1, 16000)
            pos += frame.samples
            dst.mux(aus.encode(frame))
        dst.mux(vs.encode(None))
        dst.mux(aus.encode(None))

    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=25, size=(224, 224), audio_from=shifted) as writer:
        for rgb, _ in iter_frames(shifted, max_frames=40):
            writer.write(rgb)
    audio, rate = decode_audio(out)
    ref, _ = decode_audio(src)
    shift = round((video_start - audio_start) * rate)  # output sample i plays source sample i + shift
    assert best_lag(audio, ref, start=8000, n=12000, max_lag=abs(shift) + 800) == pytest.approx(shift, abs=2)
    if audio_start > video_start:  # lead-in silence until the audio starts
        assert np.abs(audio[: -shift - 1100]).max() < 1e-3


def test_write_fractional_fps_stereo_audio(data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / CLIP_STEREO_30FPS
    out = tmp_path / "ntsc.mp4"
    with VideoWriter(out, fps=Fraction(30000, 1001), size=(512, 512), audio_from=src, preset="ultrafast") as writer:
        for rgb, _ in iter_frames(src, max_frames=30):
            writer.write(rgb)
    info = probe_video(out)
    assert info.frames == 30
    assert info.fps == pytest.approx(30000 / 1001, abs=1e-4)
    assert (info.has_audio, info.audio_rate, info.audio_channels) == (True, 44100, 2)
    assert audio_stream_duration(out) == pytest.approx(info.duration_s, abs=0.01)
    assert info.duration_s == pytest.approx(30 * 1001 / 30000)


def test_write_without_audio_and_from_silent_clip(data_dir: Path, tmp_path: Path) -> None:
    frames = [rgb for rgb, _ in iter_frames(data_dir / CLIP_NO_AUDIO, max_frames=10)]
    for name, audio_from in (("none.mp4", None), ("silent.mp4", data_dir / CLIP_NO_AUDIO)):
        with VideoWriter(tmp_path / name, fps=25, size=(256, 256), audio_from=audio_from) as writer:
            for rgb in frames:
                writer.write(rgb)
        info = probe_video(tmp_path / name)
        assert info.frames == 10 and not info.has_audio
        with av.open(str(tmp_path / name)) as c:
            assert len(c.streams.audio) == 0


def test_odd_size_is_padded_to_even(data_dir: Path, tmp_path: Path) -> None:
    crops = [np.ascontiguousarray(rgb[10:111, 20:245]) for rgb, _ in iter_frames(data_dir / CLIP_MOV, max_frames=12)]
    assert crops[0].shape == (101, 225, 3)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, fps=24, size=(225, 101), audio_from=data_dir / CLIP_MOV) as writer:
        assert writer.output_size == (226, 102)
        for rgb in crops:
            writer.write(rgb)
    info = probe_video(out)
    assert (info.width, info.height, info.frames, info.has_audio) == (226, 102, 12, True)
    decoded = [rgb for rgb, _ in iter_frames(out)]
    assert min(psnr(d[:101, :225], c) for d, c in zip(decoded, crops)) > 30


def test_writer_closes_on_exception_and_rejects_bad_frames(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"
    frames = [rgb for rgb, _ in iter_frames(data_dir / CLIP_16K_MONO, max_frames=8)]
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, fps=25, size=(224, 224), audio_from=data_dir / CLIP_16K_MONO) as writer:
            for rgb in frames:
                writer.write(rgb)
            with pytest.raises(ValueError):
                writer.write(np.zeros((100, 100, 3), np.uint8))
            with pytest.raises(ValueError):
                writer.write(frames[0].astype(np.float32))
            raise RuntimeError("boom")
    info = probe_video(out)
    assert info.frames == 8 and info.has_audio
    with pytest.raises(ValueError):
        writer.write(frames[0])  # closed


def test_writer_with_no_frames_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "empty.mp4"
    with VideoWriter(out, fps=25, size=(64, 64)):
        pass
    assert not out.exists()


def test_writer_bad_audio_source(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError):
        VideoWriter(tmp_path / "x.mp4", fps=25, size=(64, 64), audio_from=tmp_path / "missing.mp4")
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(AvatarError):
        VideoWriter(tmp_path / "x.unknownext", fps=25, size=(64, 64))


# ---------------------------------------------------------------- bad input


def _bad_files(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    clip = (data_dir / CLIP_NO_AUDIO).read_bytes()
    mdat, moov = clip.find(b"mdat"), clip.find(b"moov")
    files = {
        "missing": tmp_path / "missing.mp4",
        "directory": tmp_path / "a_dir.mp4",
        "empty": tmp_path / "empty.mp4",
        "png": data_dir / "images/val/P152/I036.png",
        "jpg renamed mp4": tmp_path / "photo.mp4",
        "text renamed mp4": tmp_path / "text.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "corrupt": tmp_path / "corrupt.mp4",
        "audio only": tmp_path / "audio.m4a",
    }
    files["directory"].mkdir()
    files["empty"].touch()
    files["jpg renamed mp4"].write_bytes((data_dir / "images/val/P144/I045.jpg").read_bytes())
    files["text renamed mp4"].write_text("this is not a video\n" * 50)
    files["truncated"].write_bytes(clip[: len(clip) // 2])  # the index (moov) is at the end: lost
    noise = np.random.default_rng(0).integers(0, 256, moov - mdat - 16, dtype=np.uint8).tobytes()
    files["corrupt"].write_bytes(clip[: mdat + 8] + noise + clip[moov - 8 :])  # index intact, pictures noise
    with av.open(str(data_dir / CLIP_16K_MONO)) as src, av.open(str(files["audio only"]), "w") as dst:
        stream = dst.add_stream("aac", rate=16000, layout="mono")
        for frame in src.decode(audio=0):
            frame.pts = None
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return files


def test_bad_inputs_raise_video_read_error(data_dir: Path, tmp_path: Path) -> None:
    for kind, path in _bad_files(data_dir, tmp_path).items():
        with pytest.raises(VideoReadError) as err:
            probe_video(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, kind
        with pytest.raises(VideoReadError):
            next(iter_frames(path))


def test_damage_mid_file_keeps_decoded_frames(data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clip = (data_dir / CLIP_NO_AUDIO).read_bytes()
    mdat, moov = clip.find(b"mdat"), clip.find(b"moov")
    mid = (mdat + moov) // 2
    noise = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(clip[:mid] + noise + clip[mid + 20000 :])
    with caplog.at_level(logging.WARNING, logger="avatar_engine"):
        frames = list(iter_frames(damaged))
    assert 10 < len(frames) < 104
    assert "decoding stopped" in caplog.text
