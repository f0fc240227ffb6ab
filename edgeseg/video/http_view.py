"""The browser view: a sink that serves the latest frame and the run's statistics over HTTP.

``open_sink("http://0.0.0.0:8080")`` starts a small web server (the standard library's
``ThreadingHTTPServer`` in a daemon thread) for a board without a screen::

    /             a page with the live video, fps, dropped frames, stage times and the legend
    /stream.mjpg  the video as MJPEG (multipart/x-mixed-replace JPEGs)
    /frame.jpg    the latest frame alone
    /stats.json   the latest statistics: frames, dropped, fps, stage ms, model, classes

``write`` only keeps a reference to a copy of the frame and wakes the viewers: each frame is
JPEG-encoded once, when the first viewer asks for it, in that viewer's thread (OpenCV releases
the GIL while it encodes). Each MJPEG viewer waits for a frame newer than the one it sent and
sends the latest, so a slow viewer skips frames and never holds up the pipeline; a viewer
that leaves ends its own thread. ``publish(stats)`` sets what ``/stats.json`` and the page show.
"""

from __future__ import annotations

import html
import json
import select
import socket
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from edgeseg.video.sinks import Sink, SinkError

__all__ = ["HttpViewSink"]

_BOUNDARY = "edgeseg-frame"
_WAIT_S = 0.5  # a viewer re-checks for a closed sink this often while no frame comes
_FPS_WINDOW = 30  # frames the sink's own fps is taken over


class HttpViewSink(Sink):
    """Serves the frames written to it, and the statistics published to it, to web browsers.

    Args:
        spec: the spec it was opened with (``http://0.0.0.0:8080``).
        host: the address to listen on; 0.0.0.0 for every interface (other machines), 127.0.0.1
            for this one alone.
        port: the TCP port; 0 picks a free one (see :attr:`url`).
        quality: JPEG quality, 1 to 100.
        title: the page's title.
        announce: print where to look when the server starts.

    Raises:
        SinkError: the address cannot be listened on (the port is taken, say).
    """

    def __init__(self, spec: str, host: str = "0.0.0.0", port: int = 8080, quality: int = 80,
                 title: str = "edgeseg", announce: bool = True):
        super().__init__(spec)
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"sink {spec!r}: quality must be 1 to 100, got {quality}")
        self.quality = int(quality)
        self.title = str(title)
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0  # frames written; a viewer sends a frame when this has moved on
        self._encode_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last frame encoded
        self._stats: dict[str, Any] = {}
        self._written: deque[float] = deque(maxlen=_FPS_WINDOW)
        self.viewers = 0  # MJPEG streams being sent now
        try:
            self._server = _Server((host, int(port)), _Handler)
        except OSError as error:
            raise SinkError(f"sink {spec!r}: cannot listen on {host}:{port}: {error}") from None
        self._server.view = self
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"edgeseg-http-{self.port}", daemon=True,
        )
        self._thread.start()
        if announce:
            where = self.url
            if host in ("0.0.0.0", "::", ""):
                where += f" (on this machine; from others: http://{socket.gethostname()}:{self.port}/)"
            print(f"edgeseg: browser view at {where}", file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        """The page's address (127.0.0.1 where the server listens on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}/"

    # --- the pipeline side ----------------------------------------------------------------------

    def _write(self, frame: np.ndarray) -> None:
        # A copy: the caller may draw the next frame into the same array.
        frame = frame.copy()
        with self._cond:
            self._frame = frame
            self._seq += 1
            self._written.append(time.perf_counter())
            self._cond.notify_all()

    def publish(self, stats: dict[str, Any]) -> None:
        """Sets the statistics ``/stats.json`` serves (a JSON-serialisable dict), merged over
        the sink's own frames written and fps."""
        with self._cond:
            self._stats = dict(stats)

    def stats(self) -> dict[str, Any]:
        """What ``/stats.json`` serves now: the published statistics over the sink's own
        ``frames`` (written), ``fps`` (of writes, over the last 30), and ``viewers``."""
        with self._cond:
            times, published = list(self._written), self._stats
            frames, viewers = self._seq, self.viewers
        fps = (len(times) - 1) / max(times[-1] - times[0], 1e-9) if len(times) > 1 else 0.0
        age = 1e3 * (time.perf_counter() - times[-1]) if times else None
        own = {"frames": frames, "fps": fps, "viewers": viewers, "last_frame_ms_ago": age}
        return {**own, **published, "frames_written": frames, "viewers": viewers}

    def close(self) -> None:
        """Stops the server and frees the port; viewers' streams end."""
        if self.closed:
            return
        with self._cond:
            super().close()
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- the viewers' side ----------------------------------------------------------------------

    def wait_for_frame(self, after: int, timeout: float = _WAIT_S) -> int | None:
        """Waits until a frame newer than number ``after`` is written; its number, or None on
        a timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self.closed, timeout)
            return None if self.closed or self._seq <= after else self._seq

    def latest_jpeg(self) -> tuple[int, bytes] | None:
        """The latest frame's number and JPEG bytes (encoded once per frame), None before the
        first frame."""
        with self._cond:
            seq, frame = self._seq, self._frame
        if frame is None:
            return None
        with self._encode_lock:
            if self._jpeg is None or self._jpeg[0] != seq:
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise SinkError("cannot encode JPEG images with this OpenCV")
                self._jpeg = (seq, data.tobytes())
            return self._jpeg

    def _count_viewer(self, change: int) -> None:
        with self._cond:
            self.viewers += change


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's thread never keeps the process alive
    allow_reuse_address = True
    view: HttpViewSink

    def handle_error(self, request, client_address) -> None:
        pass  # a viewer that left mid-response is not the pipeline's problem


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # a viewer that takes nothing for this long is dropped (its thread ends)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request on the demo's terminal

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        view = self.server.view
        try:
            if path in ("/", "/index.html"):
                self._send(_page(view.title).encode(), "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(json.dumps(view.stats(), allow_nan=False, default=_plain).encode(),
                           "application/json")
            elif path == "/frame.jpg":
                latest = view.latest_jpeg()
                if latest is None:
                    self._send(b"no frame yet\n", "text/plain", HTTPStatus.SERVICE_UNAVAILABLE)
                else:
                    self._send(latest[1], "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream(view)
            else:
                self._send(b"not found: try / , /stream.mjpg, /frame.jpg or /stats.json\n",
                           "text/plain", HTTPStatus.NOT_FOUND)
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True  # the viewer left

    def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, view: HttpViewSink) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        view._count_viewer(+1)
        try:
            sent = 0
            latest = view.latest_jpeg()
            while not view.closed:
                if latest is not None and latest[0] > sent:
                    sent, data = latest
                    self.wfile.write(
                        f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n"
                    )
                    self.wfile.flush()
                if view.wait_for_frame(sent) is not None:
                    latest = view.latest_jpeg()
                elif self._client_left():
                    break
        finally:
            view._count_viewer(-1)

    def _client_left(self) -> bool:
        """Whether the viewer closed its end (seen while no frame comes to be sent)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True


def _plain(value: Any) -> Any:
    """NumPy numbers and arrays as JSON takes them."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _page(title: str) -> str:
    return _PAGE.replace("__TITLE__", html.escape(title))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { background: #111; color: #ddd; font: 14px/1.4 system-ui, sans-serif; margin: 12px; }
main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
#video { max-width: 100%; border: 1px solid #333; background: #000; min-width: 160px; }
aside { min-width: 220px; }
h1 { font-size: 16px; margin: 0 0 8px; }
table { border-collapse: collapse; }
td { padding: 1px 8px 1px 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #fff;
          vertical-align: middle; margin-right: 6px; }
#state { color: #888; }
</style></head>
<body>
<h1>__TITLE__ <span id="state">connecting...</span></h1>
<main>
<img id="video" src="/stream.mjpg" alt="live segmented video">
<aside>
<table>
<tr><td>model</td><td id="model">-</td></tr>
<tr><td>runtime</td><td id="runtime">-</td></tr>
<tr><td>frames</td><td class="n" id="frames">-</td></tr>
<tr><td>dropped</td><td class="n" id="dropped">-</td></tr>
<tr><td>fps</td><td class="n" id="fps">-</td></tr>
</table>
<h1>stage (ms, median)</h1>
<table id="stages"></table>
<h1>classes</h1>
<div id="legend"></div>
</aside>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fixed = (x, d) => (typeof x === "number" ? x.toFixed(d) : "-");
let legendKey = "";
function show(s) {
  $("state").textContent = "live";
  $("model").textContent = s.model || "-";
  $("runtime").textContent = s.runtime || "-";
  $("frames").textContent = s.frames;
  $("dropped").textContent = s.dropped === undefined || s.dropped === null ? "-" : s.dropped;
  $("fps").textContent = fixed(s.fps, 1);
  const rows = Object.entries(s.stages_ms || {}).map(
    ([k, v]) => "<tr><td>" + k + "</td><td class='n'>" + fixed(v, 1) + "</td></tr>");
  $("stages").innerHTML = rows.join("");
  const classes = s.classes || [];
  const key = JSON.stringify(classes);
  if (key !== legendKey) {
    legendKey = key;
    const legend = $("legend");
    legend.textContent = "";
    for (const c of classes) {
      const row = document.createElement("div");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = "rgb(" + c.colour.join(",") + ")";
      row.appendChild(swatch);
      row.appendChild(document.createTextNode(c.name));
      legend.appendChild(row);
    }
  }
}
async function poll() {
  try {
    const response = await fetch("/stats.json", {cache: "no-store"});
    show(await response.json());
  } catch (e) {
    $("state").textContent = "disconnected";
  }
  setTimeout(poll, 500);
}
$("video").addEventListener("error", () => {
  setTimeout(() => { $("video").src = "/stream.mjpg?" + Date.now(); }, 1000);
});
poll();
</script>
</body></html>
"""
