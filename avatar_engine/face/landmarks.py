"""Dense face landmarks: mediapipe Face Mesh (478 points with irises) and One-Euro smoothing.

Coordinates. Landmarks are ``(478, 3) float32``: ``x, y`` are continuous pixel coordinates of the
image they were detected on, ``(0, 0)`` being the top-left *corner* of the top-left pixel (pixel
``(row i, col j)`` covers ``[j, j + 1) x [i, i + 1)``; mediapipe's normalised coordinates times the
image size, the same convention as torch ``grid_sample(align_corners=False)``). ``z`` is mediapipe's
relative depth times the image width, i.e. in the same pixel units as ``x`` (smaller = closer to the
camera, origin near the head centre).

Two modes:

* ``static=True`` (photos): every call is an independent detection; :meth:`LandmarkDetector.detect_all`
  returns up to ``max_faces`` faces.
* ``static=False`` (video): mediapipe tracks one face from frame to frame (the face detector only
  runs again when the track is lost, which keeps a frame at a few ms) and the points are smoothed
  with a :class:`OneEuroFilter`. Feed the frames of *one* video in order. Feeding unrelated images
  is allowed (the tracker re-detects when the face it tracks is gone, and a jump of the face
  resets the smoothing), but call :meth:`LandmarkDetector.reset` between videos so that no state
  of the previous one leaks into the first frames of the next.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from avatar_engine.errors import NoFaceError

__all__ = [
    "NUM_LANDMARKS",
    "LandmarkConfig",
    "OneEuroFilter",
    "FrameClock",
    "LandmarkDetector",
    "detect_source_landmarks",
    "face_bbox",
]

logger = logging.getLogger("avatar_engine")

NUM_LANDMARKS = 478
"""Points per face: the 468-point mesh plus 2 x 5 iris points (``refine_landmarks=True``)."""


@dataclass
class LandmarkConfig:
    """Settings of :class:`LandmarkDetector`.

    The One-Euro parameters are in pixels and seconds (see :class:`OneEuroFilter`). The defaults
    (tuned on the val clips) cut the detector's frame-to-frame jitter of a still face to about a
    quarter (cutoff ~0.5-1 Hz while points move by < 0.2 px a frame) and open up to ~10-20 Hz at the
    50-100 px/s of speech, so the lips lag the raw detection by about half a pixel on average
    (mouth opening error ~1 px mean, 2-5 px at the fastest closures on 256-512 px faces).
    """

    min_detection_confidence: float = 0.5
    """Face detector score needed to start a face, in ``[0, 1]``."""
    min_tracking_confidence: float = 0.5
    """Landmark presence score below which the track is dropped and the detector re-runs, ``[0, 1]``."""
    max_faces: int = 4
    """Most faces returned by static-mode :meth:`LandmarkDetector.detect_all`."""
    max_tracked_faces: int = 1
    """Faces tracked in video mode (the largest is returned). With more than one, mediapipe runs its
    face detector on every frame in which fewer faces are tracked, which costs several ms."""
    smoothing: bool = True
    """Apply the One-Euro filter in video mode."""
    min_cutoff: float = 0.5
    """One-Euro cutoff of a still point, Hz."""
    beta: float = 0.2
    """One-Euro speed coefficient, Hz per (px/s)."""
    d_cutoff: float = 4.0
    """One-Euro cutoff of the speed estimate, Hz."""
    default_fps: float = 25.0
    """Frame rate assumed when :meth:`LandmarkDetector.detect` gets no timestamp."""
    jump_reset: float = 0.3
    """In video mode, forget the smoothing state when the face moves by more than this fraction of
    its size between two frames (a cut, or another face taken over)."""
    settle_passes: int = 4
    """In video mode, re-run a new track's first frame up to this many times so its landmarks match
    the tracked ones that follow (see ``LandmarkDetector._settle_new_track``); 0 disables."""

    def __post_init__(self) -> None:
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.max_faces < 1 or self.max_tracked_faces < 1:
            raise ValueError("max_faces and max_tracked_faces must be >= 1")
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError("One-Euro parameters need min_cutoff > 0, d_cutoff > 0, beta >= 0")
        if self.default_fps <= 0:
            raise ValueError(f"default_fps must be > 0, got {self.default_fps}")
        if self.jump_reset <= 0:
            raise ValueError(f"jump_reset must be > 0, got {self.jump_reset}")


class OneEuroFilter:
    """One-Euro low-pass filter (Casiez et al., CHI 2012), applied element-wise to an array.

    Each element is an independent signal: its cutoff frequency is
    ``min_cutoff + beta * |smoothed speed|``, so slow (jittery) signals are smoothed hard and fast
    motion passes with little lag. Units are those of the values fed (here pixels) and seconds.

    Args:
        min_cutoff: cutoff of a still signal, Hz (> 0). Lower = smoother, more lag.
        beta: speed coefficient, Hz per (unit / s) (>= 0). Higher = less lag on fast motion.
        d_cutoff: cutoff used to smooth the speed estimate, Hz (> 0).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("OneEuroFilter needs min_cutoff > 0, d_cutoff > 0, beta >= 0")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    @property
    def initialized(self) -> bool:
        """Whether the filter holds a state (it has seen a value since the last reset)."""
        return self._x is not None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter one sample.

        Args:
            x: array of any shape (the same shape on every call until :meth:`reset`; a new shape
               restarts the filter).
            t: time of the sample in seconds, strictly increasing.

        Returns:
            The filtered array, same shape, float dtype of ``x`` (float64 for integer input).
        """
        arr = np.asarray(x)
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        xv = arr.astype(np.float64)
        if self._x is None or self._x.shape != xv.shape:
            self._x = xv.copy()
            self._dx = np.zeros_like(xv)
            self._t = float(t)
            return xv.astype(out_dtype)
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"OneEuroFilter timestamps must increase: got {t} after {self._t}")
        dx = (xv - self._x) / dt
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + self._alpha(cutoff, dt) * (xv - self._x)
        self._t = float(t)
        return self._x.astype(out_dtype)

    def reset(self) -> None:
        """Forget the state; the next sample passes through unchanged."""
        self._x = None
        self._dx = None
        self._t = 0.0


class FrameClock:
    """Turns optional per-frame timestamps into strictly increasing times for a filter.

    Args:
        default_fps: frame rate assumed for frames that come without a timestamp (> 0).
    """

    def __init__(self, default_fps: float) -> None:
        if default_fps <= 0:
            raise ValueError(f"default_fps must be > 0, got {default_fps}")
        self.step = 1.0 / float(default_fps)
        self._last: float | None = None

    def next(self, timestamp: float | None) -> float:
        """Time of the next frame, seconds.

        None means one frame after the previous one (so ``frame_index / default_fps`` from the
        first frame when no timestamps are given). A timestamp that does not increase is replaced
        by the previous time plus one frame, with a warning.
        """
        if timestamp is None:
            t = 0.0 if self._last is None else self._last + self.step
        else:
            t = float(timestamp)
            if self._last is not None and not t > self._last:
                logger.warning(
                    "frame timestamps must increase (got %.6f after %.6f); assuming %.1f fps",
                    t, self._last, 1.0 / self.step,
                )
                t = self._last + self.step
        self._last = t
        return t

    def reset(self) -> None:
        """Start again: the next frame without a timestamp is at time 0."""
        self._last = None


def face_bbox(points: np.ndarray) -> tuple[float, float, float, float]:
    """Tight 2-D box ``(x0, y0, x1, y1)`` in pixels around landmarks ``(N, 2|3)``."""
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] not in (2, 3) or p.shape[0] == 0:
        raise ValueError(f"points must be (N, 2|3) with N > 0, got shape {p.shape}")
    lo = p[:, :2].min(axis=0)
    hi = p[:, :2].max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _bbox_area(points: np.ndarray) -> float:
    x0, y0, x1, y1 = face_bbox(points)
    return (x1 - x0) * (y1 - y0)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3) uint8`` RGB image and return it C-contiguous."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {rgb.shape}")
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise ValueError(f"image is too small for face detection: {rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(rgb)


class LandmarkDetector:
    """mediapipe Face Mesh with refined irises: 478 landmarks per face, in pixels.

    Args:
        config: detector and smoothing settings (defaults if None).
        static: True for independent photos, False for the frames of a video (tracking and
            One-Euro smoothing). See the module docstring for what tracking mode expects.

    Use as a context manager or call :meth:`close` to free mediapipe's graph.
    """

    def __init__(self, config: LandmarkConfig | None = None, static: bool = True) -> None:
        self.config = config if config is not None else LandmarkConfig()
        self.static = bool(static)
        self._filter = OneEuroFilter(self.config.min_cutoff, self.config.beta, self.config.d_cutoff)
        self._mesh = self._new_mesh()
        self._closed = False
        self._clock = FrameClock(self.config.default_fps)
        self._last_raw: np.ndarray | None = None
        self._tracking = False

    def _new_mesh(self):
        import mediapipe as mp

        cfg = self.config
        return mp.solutions.face_mesh.FaceMesh(
            static_image_mode=self.static,
            max_num_faces=cfg.max_faces if self.static else cfg.max_tracked_faces,
            refine_landmarks=True,
            min_detection_confidence=cfg.min_detection_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence,
        )

    def _run(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces of one mediapipe call, raw (unsmoothed), largest 2-D box first."""
        if self._closed:
            raise RuntimeError("LandmarkDetector is closed")
        img = _check_rgb(rgb)
        h, w = img.shape[:2]
        result = self._mesh.process(img)
        faces = []
        for lms in result.multi_face_landmarks or ():
            pts = np.array([(p.x, p.y, p.z) for p in lms.landmark], dtype=np.float32)
            pts *= np.array([w, h, w], dtype=np.float32)
            faces.append(pts)
        faces.sort(key=_bbox_area, reverse=True)
        return faces

    def detect_all(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Every face found, unsmoothed, largest 2-D box first.

        Args:
            rgb: ``(H, W, 3) uint8`` RGB image.

        Returns:
            A list of ``(478, 3) float32`` arrays (empty when no face). In static mode up to
            ``config.max_faces`` faces; in tracking mode the tracked faces (this call advances the
            track but leaves the smoothing state alone).
        """
        return self._run(rgb)

    def detect(self, rgb: np.ndarray, timestamp: float | None = None) -> np.ndarray | None:
        """Landmarks of the largest face, or None when there is no face.

        Args:
            rgb: ``(H, W, 3) uint8`` RGB image.
            timestamp: time of the frame in seconds (tracking mode; ignored in static mode). None
                means one frame at ``config.default_fps`` after the previous one (frame index /
                fps from the start). A timestamp that does not increase is replaced by the previous
                one plus one frame at ``default_fps``.

        Returns:
            ``(478, 3) float32`` pixels (see the module docstring), smoothed in tracking mode when
            ``config.smoothing``; None when no face is found (in tracking mode this also resets the
            smoothing, so a face that comes back is not dragged from its old position).
        """
        faces = self._run(rgb)
        if self.static:
            return faces[0] if faces else None
        t = self._clock.next(timestamp)
        if not faces:
            self._filter.reset()
            self._last_raw = None
            self._tracking = False
            return None
        if not self._tracking:
            faces = self._settle_new_track(rgb, faces)
            self._tracking = True
        raw = faces[0]
        if not self.config.smoothing:
            return raw
        if self._last_raw is not None and self._jumped(self._last_raw, raw):
            self._filter.reset()
        self._last_raw = raw
        return self._filter(raw, t)

    def _settle_new_track(self, rgb: np.ndarray, faces: list[np.ndarray]) -> list[np.ndarray]:
        """Re-run a new track's first frame until the tracked landmarks stop changing scale.

        A track starts from the face detector's box, whose landmarks differ in scale from the
        tracked ones by up to ~4 %, and tracking converges on a still frame within ~3 passes. The
        first landmarks of a track are often taken as the neutral pose, so they must agree with the
        ones that follow. Costs a few extra passes only when a face (re)appears.
        """
        for _ in range(self.config.settle_passes):
            again = self._run(rgb)
            if not again:
                break
            before, after = face_bbox(faces[0]), face_bbox(again[0])
            faces = again
            if abs((after[2] - after[0]) / max(before[2] - before[0], 1e-6) - 1) < 0.002:
                break
        return faces

    def _jumped(self, prev: np.ndarray, cur: np.ndarray) -> bool:
        x0, y0, x1, y1 = face_bbox(prev)
        size = max(x1 - x0, y1 - y0, 1.0)
        shift = float(np.abs(cur[:, :2].mean(axis=0) - prev[:, :2].mean(axis=0)).max())
        return shift > self.config.jump_reset * size

    def reset(self) -> None:
        """Forget the track and the smoothing state (call between unrelated videos)."""
        if self._closed:
            raise RuntimeError("LandmarkDetector is closed")
        self._filter.reset()
        self._clock.reset()
        self._last_raw = None
        self._tracking = False
        if not self.static:
            self._mesh.close()
            self._mesh = self._new_mesh()

    def close(self) -> None:
        """Free mediapipe's graph; the detector cannot be used afterwards. Idempotent."""
        if not self._closed:
            self._mesh.close()
            self._closed = True

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detect_source_landmarks(
    rgb: np.ndarray, config: LandmarkConfig | None = None, what: str = "the image"
) -> tuple[np.ndarray, int]:
    """Landmarks of the largest face of a photo, with the number of faces found.

    Args:
        rgb: ``(H, W, 3) uint8`` RGB photo.
        config: detector settings (defaults if None); static mode is used.
        what: how to name the image in the error message (e.g. the file name).

    Returns:
        ``((478, 3) float32 pixels, number of faces found)``.

    Raises:
        NoFaceError: no face in the photo.
    """
    with LandmarkDetector(config, static=True) as det:
        faces = det.detect_all(rgb)
    if not faces:
        raise NoFaceError(f"no face found in {what}")
    return faces[0], len(faces)
