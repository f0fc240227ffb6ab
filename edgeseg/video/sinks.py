"""Frame sinks: a window, a video file, an image folder, a browser view, or nothing.

``open_sink(spec)`` returns a :class:`Sink` with ``write(frame_rgb)``, ``poll_key()``,
``close()`` and context-manager use. Sinks take uint8 RGB frames and convert to OpenCV's BGR
themselves. Files appear complete or not at all: a video is written under a temporary name and
renamed on close, and each image is renamed into place once written.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.io import atomic_path
from edgeseg.video.sources import IMAGE_SUFFIXES, parse_option_value

VIDEO_FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
"""Video file suffixes and the codec each is written with unless ``fourcc`` says otherwise."""

SINK_SPECS = """\
  display                   a window (display?title=NAME; probe=0 skips the display check)
  out.mp4, out.avi, ...     a video file (.mp4 .m4v .mov .avi .mkv; ?fps=30&fourcc=MJPG)
  frames/                   an image folder: 000000.png, 000001.png, ... (?ext=jpg)
  frames/%05d.jpg           an image folder with a file name pattern
  http://0.0.0.0:8080       a browser view: a web page with the video and statistics
                            (port 0: a free one; ?quality=80&title=NAME)
  none (or null)            nothing"""

SINK_OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "display": {
        "title": ("edgeseg", "window title"),
        "probe": (True, "check in a child process that a window can open (Qt aborts if not)"),
    },
    "video": {
        "fps": (30.0, "frame rate written into the file"),
        "fourcc": (None, "codec; default by suffix: mp4v for .mp4, MJPG for .avi"),
    },
    "folder": {
        "ext": ("png", "image format: png (lossless) or jpg"),
        "start": (0, "number of the first file"),
    },
    "http": {
        "quality": (80, "JPEG quality of the served frames, 1 to 100"),
        "title": ("edgeseg", "the page's title"),
    },
    "none": {},
}


class SinkError(RuntimeError):
    """A sink could not be opened or written."""


class Sink:
    """Takes uint8 RGB frames (H, W, 3). ``frames`` counts the frames written."""

    def __init__(self, spec: str):
        self.spec = spec
        self.frames = 0
        self.closed = False

    def write(self, frame: np.ndarray) -> None:
        if self.closed:
            raise SinkError(f"sink {self.spec!r} is closed")
        _check_frame(frame, self.spec)
        self._write(frame)
        self.frames += 1

    def _write(self, frame: np.ndarray) -> None:
        pass

    def poll_key(self) -> str | None:
        """The key pressed since the last call, as a one-character string, or None."""
        return None

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def _check_frame(frame: Any, spec: str) -> None:
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] != 3
        or frame.size == 0
    ):
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(
            f"sink {spec!r} takes uint8 RGB (H, W, 3) frames, got shape {shape} of {dtype}"
        )


class NullSink(Sink):
    """Drops every frame (benchmarks, headless runs)."""


# ----------------------------------------------------------------------------------- display


def _opencv_gui() -> str:
    """The GUI backend OpenCV was built with ("NONE" for opencv-python-headless)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match.group(1) if match else "UNKNOWN"


_PROBE = "import cv2; cv2.namedWindow('edgeseg-probe'); cv2.waitKey(1); cv2.destroyAllWindows()"


def display_unavailable_reason(probe: bool = True) -> str | None:
    """Why no window can be opened here, or None if one can (as far as can be told).

    OpenCV's Qt backend aborts the whole process (not an exception) when it cannot reach the
    display, so on Linux the first window is opened in a child process to find out.
    """
    gui = _opencv_gui()
    if gui == "NONE":
        return "this OpenCV was built without GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux"):
        displays = {
            name: os.environ[name] for name in ("DISPLAY", "WAYLAND_DISPLAY") if os.environ.get(name)
        }
        if not displays:
            return "neither $DISPLAY nor $WAYLAND_DISPLAY is set, so there is no desktop to show it on"
        if probe:
            where = ", ".join(f"{name}={value}" for name, value in displays.items())
            try:
                result = subprocess.run(
                    [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30
                )
            except subprocess.TimeoutExpired:
                return f"opening a test window on {where} did not finish in 30 s"
            if result.returncode != 0:
                lines = [line for line in result.stderr.splitlines() if line.strip()]
                detail = f": {lines[0].strip()}" if lines else ""
                return f"a window cannot be opened on {where}{detail}"
    return None


class DisplaySink(Sink):
    """A window (``cv2.imshow``); with no display it warns once and shows nothing.

    ``poll_key()`` returns the key pressed ("q", " ", "\\x1b" for Esc, ...), and "q" once the
    window has been closed with the mouse.
    """

    def __init__(self, spec: str = "display", title: str = "edgeseg", probe: bool = True):
        super().__init__(spec)
        self.title = title
        self._pending: str | None = None
        self._window_open = False
        reason = display_unavailable_reason(probe)
        self.available = reason is None
        self.reason = reason
        if reason:
            self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        self.available, self.reason = False, reason
        print(f"edgeseg: no window, frames are not shown: {reason}", file=sys.stderr)

    def _write(self, frame: np.ndarray) -> None:
        if not self.available:
            return
        try:
            cv2.imshow(self.title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            self._window_open = True
            key = cv2.waitKey(1)  # also lets the window repaint
        except cv2.error as error:
            self._fall_back(f"cv2.imshow failed: {str(error).strip().splitlines()[-1]}")
            return
        if key >= 0 and self._pending is None:
            self._pending = chr(key & 0xFF)

    def poll_key(self) -> str | None:
        if not self.available or not self._window_open:
            return None
        key, self._pending = self._pending, None
        if key is None:
            code = cv2.waitKey(1)
            key = chr(code & 0xFF) if code >= 0 else None
        if key is None:
            try:
                visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
            except cv2.error:  # some backends raise for a window that is gone
                visible = 0
            if visible < 1:
                return "q"
        return key

    def close(self) -> None:
        if self._window_open and not self.closed:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
        super().close()


# ----------------------------------------------------------------------------------- files


class VideoFileSink(Sink):
    """A video file, opened at the first frame's size and renamed into place on close.

    Frames of another size are letterboxed into the first frame's size (``resized`` counts
    them), as a video has one size.
    """

    def __init__(self, spec: str, path: str | os.PathLike, fps: float = 30.0,
                 fourcc: str | None = None):
        super().__init__(spec)
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        self.fourcc = fourcc or VIDEO_FOURCCS.get(suffix, "MJPG")
        if len(self.fourcc) != 4:
            raise ValueError(f"sink {spec!r}: fourcc must be 4 characters, got {self.fourcc!r}")
        self.fps = float(fps)
        if self.fps <= 0:
            raise ValueError(f"sink {spec!r}: fps must be positive, got {fps}")
        self.size: tuple[int, int] | None = None
        self.resized = 0
        self._writer: cv2.VideoWriter | None = None
        self._temporary = contextlib.ExitStack()  # closing it renames the video into place
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self, width: int, height: int) -> None:
        # The temporary name keeps the suffix: OpenCV picks the container from it.
        temp = self._temporary.enter_context(atomic_path(self.path))
        writer = cv2.VideoWriter(
            str(temp), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, (width, height)
        )
        if not writer.isOpened():
            with self._temporary:  # the error passes through atomic_path: no file is left
                raise SinkError(
                    f"cannot write {self.path}: this OpenCV has no {self.fourcc!r} encoder for "
                    f"{self.path.suffix}; try out.avi (MJPG) or fourcc=..."
                )
        self._writer, self.size = writer, (width, height)

    def _write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self._writer is None:
            self._open(width, height)
        if (width, height) != self.size:
            frame = letterbox(frame, self.size)
            self.resized += 1
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self._writer is not None:
            self._writer.release()
            self._temporary.close()


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled to fit ``size`` (W, H) keeping its aspect ratio, centred on black."""
    width, height = size
    frame_h, frame_w = frame.shape[:2]
    ratio = min(width / frame_w, height / frame_h)
    w, h = max(1, round(frame_w * ratio)), max(1, round(frame_h * ratio))
    canvas = np.zeros((height, width, 3), np.uint8)
    x, y = (width - w) // 2, (height - h) // 2
    canvas[y : y + h, x : x + w] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return canvas


class ImageFolderSink(Sink):
    """Numbered images in a folder, each written under a temporary name and renamed."""

    def __init__(self, spec: str, folder: str | os.PathLike, pattern: str = "%06d.png",
                 start: int = 0):
        super().__init__(spec)
        self.folder = Path(folder)
        self.pattern = pattern
        self.suffix = Path(pattern).suffix.lower()
        if self.suffix not in IMAGE_SUFFIXES:
            raise ValueError(
                f"sink {spec!r}: image format {self.suffix or '(none)'!r} is not one of "
                + ", ".join(IMAGE_SUFFIXES)
            )
        try:
            pattern % 0
        except TypeError:
            raise ValueError(
                f"sink {spec!r}: the file name pattern needs one integer field such as %06d"
            ) from None
        self.start = int(start)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, index: int) -> Path:
        """The file of the ``index``-th frame written (0 is the first)."""
        return self.folder / (self.pattern % (self.start + index))

    def _write(self, frame: np.ndarray) -> None:
        write_image(self.path_of(self.frames), frame)


def write_image(path: str | os.PathLike, frame_rgb: np.ndarray) -> None:
    """Writes an RGB image atomically (a temporary file renamed into place).

    Not flushed to disk before the rename (``write_bytes_atomic`` is): a frame folder gets
    frames at camera rates, and an fsync each would slow the loop that writes them.
    """
    path = Path(path)
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SinkError(f"cannot encode {path.suffix} images with this OpenCV")
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.tobytes())


# ----------------------------------------------------------------------------------- specs


def _sink_options(kind: str, spec: str, query: str, options: dict) -> dict:
    parsed = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"sink option must be key=value, got {pair!r} in {spec!r}")
        parsed[key.strip()] = parse_option_value(value.strip())
    parsed.update(options)
    accepted = SINK_OPTIONS[kind]
    unknown = sorted(set(parsed) - set(accepted))
    if unknown:
        raise ValueError(
            f"sink {spec!r} ({kind}): unknown option(s) {', '.join(unknown)}; accepted: "
            + (", ".join(accepted) or "none")
        )
    return {name: parsed.get(name, default) for name, (default, _) in accepted.items()}


def open_sink(spec: str | None, **options: Any) -> Sink:
    """Opens a window, a video file, an image folder or nothing as a :class:`Sink`.

    Spec syntax (``SINK_SPECS``; options after '?' or as keyword arguments, which win)::

      display                   a window (display?title=NAME; probe=0 skips the display check)
      out.mp4, out.avi, ...     a video file (?fps=30&fourcc=MJPG)
      frames/                   an image folder: 000000.png, 000001.png, ... (?ext=jpg)
      frames/%05d.jpg           an image folder with a file name pattern
      http://0.0.0.0:8080       a browser view (edgeseg.video.http_view; ?quality=80)
      none (or null)            nothing

    A window that cannot open (no display, or OpenCV without GUI support) prints one message and
    shows nothing; the run goes on.
    """
    text = "none" if spec is None else str(spec).strip()
    base, _, query = text.partition("?") if not os.path.exists(text) else (text, "", "")
    lowered = base.lower()
    if lowered in ("", "none", "null"):
        _sink_options("none", text, query, options)
        return NullSink(text)
    if lowered in ("display", "window", "screen"):
        opts = _sink_options("display", text, query, options)
        return DisplaySink(text, title=str(opts["title"]), probe=bool(opts["probe"]))
    if lowered.startswith("http://"):
        return _open_http_view(text, base, query, options)
    path = Path(os.path.expanduser(base))
    suffix = path.suffix.lower()
    if suffix in VIDEO_FOURCCS:
        opts = _sink_options("video", text, query, options)
        return VideoFileSink(text, path, fps=opts["fps"], fourcc=opts["fourcc"])
    if suffix in IMAGE_SUFFIXES:
        if "%" not in path.name:
            raise ValueError(
                f"sink {text!r}: an image file holds one frame; write frames to a folder "
                f"(frames/) or a numbered pattern (frames/%06d{suffix})"
            )
        opts = _sink_options("folder", text, query, options)
        return ImageFolderSink(text, path.parent, pattern=path.name, start=opts["start"])
    if suffix and not path.is_dir() and not base.endswith(("/", os.sep)):
        raise ValueError(
            f"sink {text!r}: unknown output {suffix!r}. An output is one of:\n{SINK_SPECS}"
        )
    opts = _sink_options("folder", text, query, options)
    ext = str(opts["ext"]).lower().lstrip(".")
    return ImageFolderSink(text, path, pattern=f"%06d.{ext}", start=opts["start"])


def _open_http_view(text: str, base: str, query: str, options: dict) -> Sink:
    from urllib.parse import urlsplit

    from edgeseg.video.http_view import HttpViewSink  # imports this module

    parts = urlsplit(base)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = 8080
    if port < 0 or parts.path not in ("", "/") or not parts.hostname:
        raise ValueError(
            f"sink {text!r}: a browser view is http://HOST:PORT, e.g. http://0.0.0.0:8080 "
            "(every interface) or http://127.0.0.1:0 (this machine, a free port)"
        )
    opts = _sink_options("http", text, query, options)
    return HttpViewSink(text, host=parts.hostname, port=port, quality=opts["quality"],
                        title=str(opts["title"]))


@contextlib.contextmanager
def as_sink(sink: str | os.PathLike | Sink | None) -> Iterator[Any]:
    """A ``with`` block over a sink: a spec (or None) is opened with :func:`open_sink`; an open
    sink, or anything with ``write``, ``poll_key`` and ``close``, is used as it is. It is
    closed at the end of the block.
    """
    if sink is None or isinstance(sink, str | os.PathLike):
        sink = open_sink(None if sink is None else os.fspath(sink))
    try:
        yield sink
    finally:
        sink.close()
