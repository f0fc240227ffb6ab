"""Frame sources: cameras, streams, video files, image folders and synthetic scenes.

``open_source(spec)`` returns a :class:`Source`: an iterator of uint8 RGB frames (H, W, 3) and a
context manager. Files and folders are read in order, every frame. Live sources (cameras,
streams, live synthetic scenes) are read by a background thread that keeps only the newest frame,
so a slow consumer always gets a fresh frame; the frames it never saw are counted in
``dropped``. A live source that stops delivering is reopened with exponential back-off
(``reopened``). Frames that cannot be decoded, or that are empty or have the wrong shape, are
skipped and counted in ``skipped``.

Every frame handed out carries the time it was read (``read_at``, ``time.perf_counter()``), so
that a consumer can tell how old it is when it uses it. A live source also keeps its outages
(:class:`Outage`: the last frame before a failure, the reopen, the first frame after) and the
longest gap between two frames; ``outage_stats()`` sums them up for a summary.

Streams are read by the FFmpeg inside OpenCV (``cv2.CAP_FFMPEG``; the opencv-python wheels have
it): RTSP (RTP over UDP, falling back to TCP; JPEG, H.264, ...) and MJPEG over HTTP work as they
are. FFmpeg's own options go in the environment variable ``OPENCV_FFMPEG_CAPTURE_OPTIONS``, read
at each open, as ``key;value`` pairs joined by ``|``: ``rtsp_transport;tcp`` forces RTP over TCP
(through firewalls and NAT), and ``analyzeduration;0|probesize;32`` skips the stream probing
that otherwise takes some 0.7 s of every RTSP open, reconnects included
(benchmarks/results/outage_cpu.md).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edgeseg.io import parse_size

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Options each kind of source accepts: name -> (default, help). This table drives validation,
# the error for an unknown option and the spec documentation.
_LIVE_OPTIONS = {
    "retries": (10, "reopen attempts after the source fails before giving up (0: never reopen)"),
    "retry_delay": (0.1, "seconds before the first reopen attempt; doubles each attempt"),
    "retry_max_delay": (5.0, "longest wait between reopen attempts, in seconds"),
}
SOURCE_OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "camera": {
        "width": (None, "requested frame width in pixels"),
        "height": (None, "requested frame height in pixels"),
        "fps": (None, "requested frame rate"),
        "fourcc": (None, "requested pixel format, e.g. MJPG (USB cameras: higher frame rates)"),
        "buffer": (1, "frames the driver buffers (1: the newest frame, lowest latency)"),
        **_LIVE_OPTIONS,
    },
    "stream": {
        "timeout": (10.0, "seconds to wait when opening or reading before the read fails"),
        "live": (True, "0 reads a remote file in order instead, with no drops or reopening"),
        **_LIVE_OPTIONS,
    },
    "video": {
        "live": (False, "1 plays the file at its frame rate like a camera (dropping frames)"),
        **_LIVE_OPTIONS,
    },
    "folder": {},
    "synthetic": {
        "size": ((640, 360), "frame size WIDTHxHEIGHT"),
        "fps": (30.0, "frame rate of the live mode"),
        "frames": (None, "number of frames (default: endless)"),
        "seed": (0, "chooses the scene"),
        "objects": (None, "number of moving objects (default: chosen by the seed)"),
        "live": (True, "1: paced at fps by a thread, stale frames dropped; 0: every frame"),
        "loop": (64, "live: frames drawn once when the source opens and replayed forwards "
                 "then backwards, so that drawing scenes takes no CPU from the consumer, as a "
                 "camera takes none (0: each frame drawn when it is due)"),
        **_LIVE_OPTIONS,
    },
}

SOURCE_SPECS = """\
  0, 1, ...                 camera by index (Linux: /dev/video0, ...)
  /dev/video2               camera by device path
  rtsp://host/path          network stream (rtsp, rtsps, rtmp, http, https, udp, tcp, srt)
  clip.mp4                  video file, every frame in order (clip.mp4?live=1: paced like a camera)
  frames/ or 'frames/*.png' image folder or glob, in natural order (frame2 before frame10)
  synthetic                 moving synthetic scenes, e.g. synthetic?size=640x360&fps=30&frames=300
                            (live=0: every frame, no pacing, no drops)
Options follow '?' as key=value pairs joined by '&' (not for URLs, whose query belongs to the
URL: pass options as keyword arguments there), or as keyword arguments of open_source."""


class SourceError(RuntimeError):
    """A source could not be opened, or failed and could not be reopened."""


class VideoCaptureLike(Protocol):
    """What a source needs of ``cv2.VideoCapture`` (fakes in tests implement the same)."""

    def isOpened(self) -> bool: ...  # OpenCV's name

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[Any], VideoCaptureLike]
"""Opens a capture for a target: a camera index (int), a device path, a file path or a URL."""


class _EndOfStream(Exception):
    """Raised by a capture's read when its stream has ended normally (not a failure)."""


# ----------------------------------------------------------------------------------- frames


def to_rgb_frame(frame: Any, bgr: bool = True) -> np.ndarray | None:
    """A valid uint8 RGB (H, W, 3) frame, or None if ``frame`` is empty or malformed.

    Grey (H, W) and BGRA / RGBA (H, W, 4) frames are converted; anything else (None, size 0,
    other ranks or channel counts, other dtypes) is not a frame.
    """
    if not isinstance(frame, np.ndarray) or frame.size == 0 or frame.dtype != np.uint8:
        return None
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim != 3 or min(frame.shape[:2]) < 1:
        return None
    channels = frame.shape[2]
    if channels == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(frame)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if channels == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2RGB)
    return None


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def list_video_devices() -> list[str]:
    """The camera device nodes of this machine (/dev/video*, Linux only), in natural order."""
    return sorted(glob.glob("/dev/video*"), key=_natural_key)


# ----------------------------------------------------------------------------------- base


class Source:
    """An iterator of uint8 RGB frames (H, W, 3), and a context manager that closes it.

    Attributes:
        spec: what was opened, as given.
        live: True where frames arrive in real time and stale ones are dropped.
        fps: the nominal frame rate where known, else None.
        frames: frames delivered so far.
        dropped: live frames replaced by a newer one before anybody read them.
        skipped: frames that could not be decoded, or were empty or malformed.
        reopened: times a failed live source was opened again.
        read_at: when the frame handed out last was read (``time.perf_counter()``): for a live
            source, when its reader thread took it from the capture, which may be well before
            the consumer asked for it; for others, when it was decoded.
    """

    live = False

    def __init__(self, spec: str):
        self.spec = spec
        self.fps: float | None = None
        self.frames = 0
        self.dropped = 0
        self.skipped = 0
        self.reopened = 0
        self.read_at: float | None = None
        self.closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.closed:
            raise StopIteration
        frame = self._next_frame()
        if not self.live:
            self.read_at = time.perf_counter()
        self.frames += 1
        return frame

    def _next_frame(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def stats(self) -> dict:
        """The counters, for a summary."""
        return {
            "frames": self.frames,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "reopened": self.reopened,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


# ----------------------------------------------------------------------------------- in order


class VideoFileSource(Source):
    """A video file (or a remote file with ``live=0``) read in order, every decodable frame.

    A truncated or damaged file ends at its last decodable frame.
    """

    # A decoder that keeps returning unusable frames is not going to recover.
    max_consecutive_skips = 100

    def __init__(self, spec: str, target: str, capture_factory: CaptureFactory):
        super().__init__(spec)
        self.target = target
        self._capture = capture_factory(target)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"cannot open video {target}: not a video OpenCV can decode here")
        fps = _capture_fps(self._capture)
        self.fps = fps

    def _next_frame(self) -> np.ndarray:
        bad_in_a_row = 0
        while True:
            try:
                ok, frame = self._capture.read()
            except cv2.error:
                ok, frame = False, None
            if not ok:
                raise StopIteration
            rgb = to_rgb_frame(frame)
            if rgb is not None:
                return rgb
            self.skipped += 1
            bad_in_a_row += 1
            if bad_in_a_row >= self.max_consecutive_skips:
                raise StopIteration

    def close(self) -> None:
        if not self.closed:
            self._capture.release()
        super().close()


class ImageFolderSource(Source):
    """The images of a folder (or a glob pattern) in natural order; unreadable ones are skipped."""

    def __init__(self, spec: str, paths: list[str]):
        super().__init__(spec)
        self.paths = paths
        self._index = 0

    def _next_frame(self) -> np.ndarray:
        while self._index < len(self.paths):
            path = self.paths[self._index]
            self._index += 1
            rgb = _read_image(path)
            if rgb is not None:
                return rgb
            self.skipped += 1
        raise StopIteration


def _read_image(path: str) -> np.ndarray | None:
    """An image file as RGB, or None where it is empty, unreadable or not an image."""
    try:
        data = np.fromfile(path, np.uint8)  # np.fromfile + imdecode: any path encoding
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return to_rgb_frame(image)


class SyntheticSource(Source):
    """Every frame of a :class:`edgeseg.data.SceneSequence`, unpaced (``live=0``)."""

    def __init__(self, spec: str, size, seed: int, objects: int | None, frames: int | None,
                 fps: float):
        super().__init__(spec)
        self._scenes = _SceneCapture(size, seed, objects, frames)
        self.fps = fps

    def _next_frame(self) -> np.ndarray:
        try:
            return self._scenes.read()[1]
        except _EndOfStream:
            raise StopIteration from None


class _SceneCapture:
    """Synthetic scenes behind the capture interface (RGB frames).

    With ``loop`` (a list of frames drawn beforehand, :func:`_scene_loop`), read ``t`` returns
    a copy of ``loop[t]`` for the loop's length, then plays it backwards and forwards again:
    consecutive frames always differ and moving objects move smoothly, at the cost of a copy.
    """

    def __init__(self, size, seed: int, objects: int | None, frames: int | None,
                 loop: list[np.ndarray] | None = None):
        from edgeseg.data.synthetic import SceneSequence

        self._sequence = SceneSequence(seed=seed, size=size, objects=objects)
        self._limit = frames
        self._loop = loop
        self._t = 0

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        if self._limit is not None and self._t >= self._limit:
            raise _EndOfStream
        if self._loop and len(self._loop) > 1:
            period = 2 * len(self._loop) - 2
            index = self._t % period
            image = self._loop[min(index, period - index)].copy()
        else:
            image = self._sequence.frame(self._t)[0]
        self._t += 1
        return True, image

    def release(self) -> None:
        pass


def _scene_loop(size, seed: int, objects: int | None, frames: int | None,
                count: int) -> list[np.ndarray]:
    """The first ``count`` scene frames (no more than ``frames``), drawn now, read-only."""
    if count < 0:
        raise ValueError(f"synthetic loop must be 0 or more frames, got {count}")
    from edgeseg.data.synthetic import SceneSequence

    sequence = SceneSequence(seed=seed, size=size, objects=objects)
    loop = []
    for t in range(count if frames is None else min(count, frames)):
        image = sequence.frame(t)[0]
        image.flags.writeable = False  # shared by every read, which hands out a copy
        loop.append(image)
    return loop


# ----------------------------------------------------------------------------------- live


@dataclass
class Outage:
    """A live source's failure and recovery, in ``time.perf_counter()`` seconds.

    Attributes:
        failed: when a read first failed (after ``last_frame``).
        last_frame: when the last frame before it was read (None: none had been).
        reopened: when a reopen attempt last succeeded (None: none yet).
        recovered: when the first frame after it was read (None: not yet, or never).
        ended: when the source stopped trying, for an outage it never recovered from.
    """

    failed: float
    last_frame: float | None = None
    reopened: float | None = None
    recovered: float | None = None
    ended: float | None = None

    def without_frames(self, now: float | None = None) -> float:
        """Seconds from the last frame before the failure to the first one after it (or to
        the end, or to ``now``, for an outage not recovered from)."""
        end = self.recovered or self.ended or (time.perf_counter() if now is None else now)
        return end - (self.failed if self.last_frame is None else self.last_frame)

    def to_reconnect(self) -> float | None:
        """Seconds from the failure to the first frame after it; None if none came."""
        return None if self.recovered is None else self.recovered - self.failed


class LiveSource(Source):
    """A source read by a background thread that keeps only the newest frame.

    The first open happens in the constructor, so that a missing device fails at once. When a
    read fails (returns False or raises), the capture is released and opened again after
    ``retry_delay`` seconds, doubling up to ``retry_max_delay``, at most ``retries`` times in a
    row; a successful reopen counts in ``reopened``. When the attempts run out, iterating raises
    :class:`SourceError`. Each failure is kept in ``outages`` (:class:`Outage`) until frames
    come again; reads that fail again before a frame has come belong to the same outage.

    Args:
        spec: what was opened, for messages.
        open_capture: opens a new capture (called again to reopen).
        describe: names the source in messages ("camera 0 (/dev/video0)").
        bgr: whether the capture's frames are BGR (OpenCV) rather than RGB.
        pace: frames per second to pace reads at (for files and synthetic scenes, which would
            otherwise be read as fast as they decode); None for real devices.
    """

    live = True

    def __init__(
        self,
        spec: str,
        open_capture: Callable[[], VideoCaptureLike],
        describe: str,
        bgr: bool = True,
        pace: float | None = None,
        retries: int | None = 10,
        retry_delay: float = 0.1,
        retry_max_delay: float = 5.0,
        fps: float | None = None,
    ):
        super().__init__(spec)
        self.describe = describe
        self.retries = retries
        self.retry_delay = float(retry_delay)
        self.retry_max_delay = float(retry_max_delay)
        self._open_capture = open_capture
        self._bgr = bgr
        self._pace = pace
        self._latest: np.ndarray | None = None
        self._latest_at = 0.0  # when _latest was read
        self.outages: list[Outage] = []
        self.longest_gap = 0.0  # seconds between two frames read, outages included
        self._last_read: float | None = None
        self._finished = False
        self._error: SourceError | None = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        capture = open_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {describe}")
        self.fps = fps if fps is not None else (pace or _capture_fps(capture))
        self._thread = threading.Thread(
            target=self._read_loop, args=(capture,), name=f"edgeseg-source-{spec}", daemon=True
        )
        self._thread.start()

    # --- the reader thread ----------------------------------------------------------------------

    def _read_loop(self, capture: VideoCaptureLike) -> None:
        start, count = time.perf_counter(), 0
        try:
            while not self._stop.is_set():
                if self._pace:
                    delay = start + count / self._pace - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                try:
                    ok, frame = capture.read()
                except _EndOfStream:
                    break
                except Exception:  # a driver's error of any kind means: reopen
                    ok, frame = False, None
                if not ok:
                    self._outage_begins()
                    capture = self._reopen(capture)
                    if capture is None:
                        break
                    start, count = time.perf_counter(), 0
                    continue
                count += 1
                rgb = to_rgb_frame(frame, bgr=self._bgr)
                read_at = time.perf_counter()
                with self._condition:
                    if rgb is None:
                        self.skipped += 1
                        continue
                    self._frame_read(read_at)
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest, self._latest_at = rgb, read_at
                    self._condition.notify_all()
        finally:
            if capture is not None:
                capture.release()
            with self._condition:
                if self.outages and self.outages[-1].recovered is None:
                    self.outages[-1].ended = time.perf_counter()
                self._finished = True
                self._condition.notify_all()

    def _outage_begins(self) -> None:
        """Notes a failed read: a new outage, unless no frame has come since the last one."""
        with self._condition:
            if not self.outages or self.outages[-1].recovered is not None:
                self.outages.append(Outage(failed=time.perf_counter(),
                                           last_frame=self._last_read))

    def _frame_read(self, read_at: float) -> None:
        """Notes a good frame: the end of an outage, the gap since the last. Call holding the
        condition."""
        if self.outages and self.outages[-1].recovered is None:
            self.outages[-1].recovered = read_at
        if self._last_read is not None:
            self.longest_gap = max(self.longest_gap, read_at - self._last_read)
        self._last_read = read_at

    def _reopen(self, capture: VideoCaptureLike) -> VideoCaptureLike | None:
        """A newly opened capture, or None (stopping, or out of attempts: ``_error`` says why)."""
        capture.release()
        delay, attempt, waited = self.retry_delay, 0, 0.0
        while self.retries is None or attempt < self.retries:
            attempt += 1
            if self._stop.wait(delay):
                return None
            waited += delay
            delay = min(delay * 2, self.retry_max_delay)
            try:
                capture = self._open_capture()
            except Exception:  # an open that raises is a failed attempt
                continue
            if capture.isOpened():
                with self._condition:
                    self.reopened += 1
                    if self.outages:
                        self.outages[-1].reopened = time.perf_counter()
                return capture
            capture.release()
        self._error = SourceError(
            f"{self.describe} stopped delivering frames and could not be reopened "
            f"({attempt} attempts over {waited:.1f} s; retries={self.retries})"
        )
        return None

    # --- the consumer ---------------------------------------------------------------------------

    def _next_frame(self) -> np.ndarray:
        with self._condition:
            # A timeout so that Ctrl-C reaches the main thread promptly.
            while self._latest is None and not self._finished:
                self._condition.wait(0.1)
            if self._latest is not None:
                frame, self._latest = self._latest, None
                self.read_at = self._latest_at
                return frame
        if self._error is not None and not self.closed:
            error, self._error = self._error, None
            raise error
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stops the reader thread; a driver stuck in a read is left to its daemon thread."""
        if self.closed:
            return
        self._stop.set()
        self._thread.join(timeout)
        super().close()

    def outage_stats(self) -> dict:
        """The outages in numbers, for a summary: ``outages`` (how many), ``reopened``,
        ``seconds_without_frames`` (summed over the outages, last frame before to first frame
        after), ``longest_gap_seconds`` (between any two frames, or in an outage still going
        on), ``reconnect_seconds`` (each outage's failure to its first frame again; None for
        one not recovered from)."""
        with self._condition:
            now = time.perf_counter()
            gaps = [outage.without_frames(now) for outage in self.outages]
            return {
                "outages": len(self.outages),
                "reopened": self.reopened,
                "seconds_without_frames": float(sum(gaps)),
                "longest_gap_seconds": float(max([self.longest_gap, *gaps])),
                "reconnect_seconds": [outage.to_reconnect() for outage in self.outages],
            }


def _capture_fps(capture: VideoCaptureLike) -> float | None:
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    except (AttributeError, cv2.error, TypeError, ValueError):
        return None
    return fps if 0 < fps < 1000 else None


# ----------------------------------------------------------------------------------- specs


def parse_option_value(text: str) -> Any:
    """A spec option's text as a value: bool, None, (W, H) for '640x360', int, float or str."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null", ""):
        return None
    if re.fullmatch(r"\d+x\d+", lowered):
        return parse_size(lowered)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split_options(spec: str) -> tuple[str, dict]:
    """'synthetic?size=64x48&live=0' -> ('synthetic', {'size': (64, 48), 'live': 0})."""
    if "?" not in spec or "://" in spec or os.path.exists(spec):
        return spec, {}
    base, _, query = spec.partition("?")
    options = {}
    for pair in query.split("&"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"source option must be key=value, got {pair!r} in {spec!r}")
        options[key.strip()] = parse_option_value(value.strip())
    return base, options


def _check_options(kind: str, spec: str, options: dict) -> dict:
    accepted = SOURCE_OPTIONS[kind]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        names = ", ".join(accepted) or "none"
        raise ValueError(
            f"source {spec!r} ({kind}): unknown option(s) {', '.join(unknown)}; accepted: {names}"
        )
    return {name: options.get(name, default) for name, (default, _) in accepted.items()}


def _size_option(value: Any, spec: str) -> tuple[int, int]:
    if isinstance(value, str):
        value = parse_option_value(value)
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"source {spec!r}: size must be WIDTHxHEIGHT, got {value!r}") from None
    return width, height


def source_kind(spec: str) -> tuple[str, str]:
    """('camera' | 'stream' | 'video' | 'folder' | 'synthetic', target) of a spec without options."""
    text = spec.strip()
    if text == "synthetic":
        return "synthetic", text
    if text.isdigit() or re.fullmatch(r"/dev/video\d+", text):
        return "camera", text
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme == "file":
            text = rest
        elif scheme in STREAM_SCHEMES:
            return "stream", text
        else:
            raise ValueError(
                f"source {spec!r}: unknown URL scheme {scheme!r}; streams: "
                + ", ".join(STREAM_SCHEMES)
            )
    path = os.path.expanduser(text)
    if os.path.isdir(path) or glob.has_magic(path):
        return "folder", path
    if os.path.isfile(path):
        is_image = Path(path).suffix.lower() in IMAGE_SUFFIXES
        return ("folder" if is_image else "video"), path
    raise FileNotFoundError(
        f"source {spec!r} does not exist. A source is one of:\n{SOURCE_SPECS}"
    )


def default_capture_factory(target: Any, backend: int = cv2.CAP_ANY,
                            params: list[int] | None = None) -> VideoCaptureLike:
    """``cv2.VideoCapture(target, backend, params)``."""
    return cv2.VideoCapture(target, backend, params or [])


def open_source(
    spec: str | int, capture_factory: CaptureFactory | None = None, **options: Any
) -> Source:
    """Opens a camera, stream, video file, image folder or synthetic scenes as a :class:`Source`.

    Spec syntax (``SOURCE_SPECS``; the options of each kind are in ``SOURCE_OPTIONS``)::

      0, 1, ...                 camera by index (Linux: /dev/video0, ...)
      /dev/video2               camera by device path
      rtsp://host/path          network stream (rtsp, rtsps, rtmp, http, https, udp, tcp, srt)
      clip.mp4                  video file, every frame in order (clip.mp4?live=1: paced)
      frames/ or 'frames/*.png' image folder or glob, in natural order
      synthetic                 moving synthetic scenes: synthetic?size=640x360&fps=30&frames=300
                                (live=0: every frame, unpaced, nothing dropped)

    Options follow '?' as key=value pairs joined by '&', or come as keyword arguments, which
    win. A URL's query string belongs to the URL: give a stream's options as keyword arguments.

    Args:
        spec: the source; an int is a camera index.
        capture_factory: opens a ``cv2.VideoCapture``-like object for a target (camera index,
            device path, file path or URL); tests pass fakes. Default: ``cv2.VideoCapture``.
        **options: the kind's options, e.g. ``retries=3`` or ``size=(640, 360)``.

    Raises:
        FileNotFoundError: a path that does not exist.
        SourceError: a camera, stream or file that cannot be opened (a camera's error lists
            the video devices found).
        ValueError: an unknown URL scheme or option, or a malformed option value.
    """
    if isinstance(spec, int):
        spec = str(spec)
    base, query_options = _split_options(spec)
    kind, target = source_kind(base)
    opts = _check_options(kind, spec, {**query_options, **options})
    live_options = {name: opts[name] for name in _LIVE_OPTIONS if name in opts}

    if kind == "synthetic":
        size = _size_option(opts["size"], spec)
        frames, fps = opts["frames"], float(opts["fps"])
        if fps <= 0:
            raise ValueError(f"source {spec!r}: fps must be positive, got {fps}")
        if not opts["live"]:
            return SyntheticSource(spec, size, int(opts["seed"]), opts["objects"], frames, fps)
        loop = _scene_loop(size, int(opts["seed"]), opts["objects"], frames, int(opts["loop"]))
        return LiveSource(
            spec,
            lambda: _SceneCapture(size, int(opts["seed"]), opts["objects"], frames, loop),
            describe=f"synthetic scenes {size[0]}x{size[1]} at {fps:g} fps",
            bgr=False,
            pace=fps,
            **live_options,
        )

    if kind == "folder":
        paths = _folder_images(target, spec)
        return ImageFolderSource(spec, paths)

    if kind == "camera":
        return _open_camera(spec, target, opts, capture_factory, live_options)

    if kind == "stream" and opts["live"]:
        timeout_ms = int(1000 * float(opts["timeout"]))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                  timeout_ms]
        factory = capture_factory or (
            lambda url: default_capture_factory(url, cv2.CAP_FFMPEG, params)
        )
        try:
            return LiveSource(spec, lambda: factory(target), describe=f"stream {target}",
                              **live_options)
        except SourceError:
            raise SourceError(
                f"cannot open stream {target}: unreachable, refused, or not a stream OpenCV's "
                f"FFmpeg can read (waited up to {float(opts['timeout']):g} s)"
            ) from None

    factory = capture_factory or default_capture_factory
    if opts["live"]:  # a file played like a camera, at its own frame rate
        probe = factory(target)
        fps = _capture_fps(probe) or 30.0
        probe.release()
        return LiveSource(spec, lambda: _EndingCapture(factory(target)),
                          describe=f"video {target}", pace=fps, **live_options)
    return VideoFileSource(spec, target, factory)


@contextlib.contextmanager
def as_source(source: str | int | os.PathLike | Iterable[np.ndarray]) -> Iterator[Any]:
    """A ``with`` block over a source: a spec is opened with :func:`open_source`; an open
    source, or any iterable of frames (a list, a generator), is used as it is. Either is closed
    at the end of the block where it has a ``close`` method.
    """
    if isinstance(source, str | int | os.PathLike):
        source = open_source(source if isinstance(source, int) else os.fspath(source))
    try:
        yield source
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()



class _EndingCapture:
    """A file's capture for live playback: the end of the file ends the stream, no reopening."""

    def __init__(self, capture: VideoCaptureLike):
        self._capture = capture

    def isOpened(self) -> bool:
        return self._capture.isOpened()

    def read(self):
        ok, frame = self._capture.read()
        if not ok:
            raise _EndOfStream
        return ok, frame

    def get(self, prop: int) -> float:
        return self._capture.get(prop)

    def release(self) -> None:
        self._capture.release()


def _folder_images(target: str, spec: str) -> list[str]:
    if os.path.isfile(target):
        return [target]
    if glob.has_magic(target):
        paths = [p for p in glob.glob(target) if os.path.isfile(p)]
    else:
        paths = [
            os.path.join(target, name)
            for name in os.listdir(target)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    if not paths:
        raise SourceError(
            f"source {spec!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return sorted(paths, key=_natural_key)


def _open_camera(spec: str, target: str, opts: dict, capture_factory: CaptureFactory | None,
                 live_options: dict) -> LiveSource:
    if target.isdigit():
        index = int(target)
        device = f"/dev/video{index}"
        name, capture_target = f"camera at index {index} ({device})", index
    else:
        device = target
        name, capture_target = f"camera {device}", device
    factory = capture_factory or default_capture_factory

    def missing(reason: str) -> SourceError:
        if sys.platform.startswith("linux"):
            found = list_video_devices()
            listing = ", ".join(found) if found else "none"
            return SourceError(f"no {name}: {reason}; found video devices: {listing}")
        return SourceError(f"no {name}: {reason}")

    # Where device nodes exist to look at, a missing one needs no driver probing.
    if capture_factory is None and sys.platform.startswith("linux") and not os.path.exists(device):
        raise missing(f"{device} does not exist")

    def open_capture() -> VideoCaptureLike:
        capture = factory(capture_target)
        if capture.isOpened():
            _configure_camera(capture, opts)
        return capture

    try:
        return LiveSource(spec, open_capture, describe=name, **live_options)
    except SourceError:
        reason = "it could not be opened (in use by another program, or not a camera?)"
        raise missing(reason) from None


def _configure_camera(capture: Any, opts: dict) -> None:
    setter = getattr(capture, "set", None)
    if setter is None:
        return
    if opts["fourcc"]:
        setter(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*str(opts["fourcc"])[:4].ljust(4)))
    for prop, name in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height"),
                       (cv2.CAP_PROP_FPS, "fps"), (cv2.CAP_PROP_BUFFERSIZE, "buffer")):
        if opts[name] is not None:
            setter(prop, float(opts[name]))
