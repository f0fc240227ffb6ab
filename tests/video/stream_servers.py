"""Real network streams on 127.0.0.1 for the stream tests and the outage benchmark.

- :class:`MjpegHttpServer`: Debian's ``ffmpeg`` serving a generated test pattern as MJPEG over
  HTTP (``-f mpjpeg -listen 1``). ffmpeg's HTTP server serves one client and exits, so a thread
  starts it again after each client, as a camera's web server would take the next one.
- :class:`RtspServer`: GStreamer's RTSP server library (``rtsp_server.py`` beside this file, run
  by the system Python, which has PyGObject and the library's typelib) serving
  ``videotestsrc ! jpegenc ! rtpjpegpay`` at rtsp://127.0.0.1:PORT/test.

Both can be killed (SIGKILL, as a crash or a pulled cable would end them) and started again on
the same port, to make an outage of a known length. ``*_missing()`` say what is not installed
(None when everything is), for ``tests.side_envs.unavailable``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SYSTEM_PYTHON = os.environ.get("EDGESEG_SYSTEM_PYTHON", "/usr/bin/python3")
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
# The GStreamer elements rtsp_server.py uses, and the Debian packages that hold them.
RTSP_ELEMENTS = {"videotestsrc": "gstreamer1.0-plugins-base",
                 "jpegenc": "gstreamer1.0-plugins-good",
                 "rtpjpegpay": "gstreamer1.0-plugins-good"}
RTSP_PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base " \
                "gstreamer1.0-plugins-good"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:``port``, without connecting to it (a connection
    would be the one client ffmpeg's server takes). Linux: /proc/net/tcp, state 0A."""
    local = f"0100007F:{port:04X}"
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(row.split()[1] == local and row.split()[3] == "0A" for row in rows)


def ffmpeg_missing() -> str | None:
    """Why the MJPEG server cannot run here, or None."""
    if shutil.which("ffmpeg") is None:
        return "ffmpeg is not installed (Debian: apt-get install ffmpeg)"
    if not Path("/proc/net/tcp").is_file():
        return "the MJPEG server helper needs Linux's /proc/net/tcp"
    return None


def rtsp_missing() -> str | None:
    """Why the RTSP server cannot run here, or None (checks the typelib and each element)."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"the system Python {SYSTEM_PYTHON} (with PyGObject) is missing"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None)\n"
        f"missing = [e for e in {list(RTSP_ELEMENTS)!r} if Gst.ElementFactory.find(e) is None]\n"
        "print(' '.join(missing))"
    )
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot probe GStreamer with {SYSTEM_PYTHON}: {error}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"{SYSTEM_PYTHON} cannot load GStreamer's RTSP server ({last}); apt-get install " \
               f"{RTSP_PACKAGES}"
    missing = result.stdout.split()
    if missing:
        packages = sorted({RTSP_ELEMENTS[e] for e in missing})
        return f"GStreamer elements {', '.join(missing)} are missing; apt-get install " \
               f"{' '.join(packages)}"
    return None


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
    if process is not None:
        process.wait(timeout=10)


class RtspServer:
    """rtsp://127.0.0.1:PORT/test, served by ``rtsp_server.py`` in a process of its own.

    Args:
        port: the port (default: a free one); kept across :meth:`kill` and :meth:`start`.
        size: the frame size, (width, height).
        fps: the frame rate.
    """

    def __init__(self, port: int | None = None, size: tuple[int, int] = (320, 240),
                 fps: int = 30):
        self.port = port or free_port()
        self.size = size
        self.fps = fps
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> RtspServer:
        """Starts the server and waits until it says "ready" (then it accepts clients)."""
        command = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), str(self.port),
                   f"{self.size[0]}x{self.size[1]}", str(self.fps)]
        deadline = time.monotonic() + timeout
        while True:  # the port of a server just killed may take a moment to be free
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
            line = _read_line(self.process, deadline)
            if line == "ready":
                return self
            _kill(self.process)
            error = self.process.stderr.read().strip()
            if time.monotonic() > deadline or "cannot listen" not in error:
                raise RuntimeError(f"the RTSP server did not start on port {self.port}: "
                                   f"{error or line or 'no output'}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Ends the server at once (SIGKILL): its clients see the connection drop."""
        _kill(self.process)
        self.process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()


def _read_line(process: subprocess.Popen, deadline: float) -> str:
    """The process's first line of output, or "" if it ends or says nothing by the deadline."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(max(deadline - time.monotonic(), 0.1))
    return lines[0].strip() if lines else ""


class MjpegHttpServer:
    """http://127.0.0.1:PORT/feed.mjpg: ffmpeg's test pattern as multipart JPEG, started again
    after each client until :meth:`kill`.

    Args:
        port: the port (default: a free one); kept across :meth:`kill` and :meth:`start`.
        size: the frame size, (width, height).
        fps: the frame rate (ffmpeg paces it with ``-re``).
    """

    def __init__(self, port: int | None = None, size: tuple[int, int] = (320, 240),
                 fps: int = 30):
        self.port = port or free_port()
        self.size = size
        self.fps = fps
        self.url = f"http://127.0.0.1:{self.port}/feed.mjpg"
        self.clients = 0  # ffmpeg processes started: one per client, plus one waiting
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _command(self) -> list[str]:
        return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                "-f", "lavfi", "-i", f"testsrc=size={self.size[0]}x{self.size[1]}:rate={self.fps}",
                "-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg", "-listen", "1", self.url]

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
                self.clients += 1
            self.process.wait()

    def start(self, timeout: float = 30.0) -> MjpegHttpServer:
        """Starts serving and waits until ffmpeg listens."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="mjpeg-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ffmpeg did not listen on 127.0.0.1:{self.port} within "
                                   f"{timeout:g} s")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """Ends the server at once (SIGKILL) and serves nobody until :meth:`start`."""
        with self._lock:
            self._stop.set()
            _kill(self.process)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> MjpegHttpServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()


if __name__ == "__main__":  # a quick look by hand: python -m tests.video.stream_servers
    for name, missing, server in (("http", ffmpeg_missing, MjpegHttpServer),
                                  ("rtsp", rtsp_missing, RtspServer)):
        reason = missing()
        if reason:
            print(f"{name}: {reason}", file=sys.stderr)
            continue
        with server() as running:
            print(f"{name}: serving {running.url} for 5 s")
            time.sleep(5)
