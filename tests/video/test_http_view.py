"""The browser view (``HttpViewSink``) against what HTTP clients read back from it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from edgeseg.video import HttpViewSink, SinkError, open_sink


def gradient_frame(shift: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A smooth RGB picture (JPEG keeps it within a few levels) that changes with ``shift``."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    frame = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                      np.full((height, width), (shift * 37) % 256, np.float32)], axis=-1)
    return frame.astype(np.uint8)


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes as RGB, decoded by OpenCV."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def assert_close(decoded: np.ndarray, frame: np.ndarray, tolerance: float = 4.0) -> None:
    assert decoded.shape == frame.shape
    difference = np.abs(decoded.astype(np.int16) - frame.astype(np.int16)).mean()
    assert difference < tolerance, f"mean difference {difference:.2f} levels"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class MjpegViewer:
    """Reads /stream.mjpg over a raw socket in a thread: the JPEG parts it received."""

    def __init__(self, sink: HttpViewSink, read: bool = True, receive_buffer: int | None = None):
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", sink.port))
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        self.parts: list[bytes] = []
        self.error: Exception | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        if read:
            self.thread.start()

    def _read(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            status = stream.readline()
            assert b" 200 " in status, status
            while stream.readline() not in (b"\r\n", b""):
                pass  # the response's headers
            while not self.stop.is_set():
                length = None
                while (line := stream.readline()) != b"\r\n":
                    if not line:
                        return  # the server closed the stream
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.parts.append(stream.read(length))
                stream.readline()  # the CRLF after the part
        except (OSError, ValueError) as error:
            if not self.stop.is_set():
                self.error = error

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread; close alone does not
        self.sock.close()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


@pytest.fixture
def view():
    sink = HttpViewSink("http://127.0.0.1:0", host="127.0.0.1", port=0, announce=False)
    yield sink
    sink.close()


def test_open_sink_parses_the_address_and_prints_where_to_look(capsys):
    with open_sink("http://127.0.0.1:0?quality=60&title=board") as sink:
        assert isinstance(sink, HttpViewSink)
        assert (sink.host, sink.quality, sink.title) == ("127.0.0.1", 60, "board")
        assert sink.port > 0 and sink.url == f"http://127.0.0.1:{sink.port}/"
        assert b"<title>board</title>" in get(sink.url)
    assert sink.url in capsys.readouterr().err
    for bad in ("http://127.0.0.1:0/page", "http://:8080", "http://127.0.0.1:99999"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            open_sink(bad)
    with pytest.raises(ValueError, match="unknown option"):
        open_sink("http://127.0.0.1:0?fps=3")


def test_frame_jpg_is_the_last_frame_written(view):
    with pytest.raises(urllib.error.HTTPError) as answer:
        get(view.url + "frame.jpg")
    assert answer.value.code == 503  # no frame yet
    for shift in range(5):
        view.write(gradient_frame(shift))
    assert_close(decode_jpeg(get(view.url + "frame.jpg")), gradient_frame(4))
    frame = gradient_frame(9)
    view.write(frame)
    frame[:] = 0  # the sink kept its own copy
    assert_close(decode_jpeg(get(view.url + "frame.jpg")), gradient_frame(9))


def test_page_stats_and_unknown_paths(view):
    page = get(view.url).decode()
    assert '<img id="video" src="/stream.mjpg"' in page and "/stats.json" in page
    assert "http://" not in page and "https://" not in page  # nothing external
    stats = json.loads(get(view.url + "stats.json"))
    assert (stats["frames"], stats["viewers"]) == (0, 0)
    for shift in range(3):
        view.write(gradient_frame(shift))
    published = {"frames": 3, "dropped": 2, "fps": 14.5, "stages_ms": {"inference": 7.25},
                 "model": "enet_int8.tflite", "classes": [{"id": 0, "name": "sky",
                                                          "colour": [128, 128, 128]}],
                 "count": np.int64(4)}
    view.publish(published)
    stats = json.loads(get(view.url + "stats.json"))
    assert stats["frames_written"] == 3
    assert {k: stats[k] for k in published} == {**published, "count": 4}
    with pytest.raises(urllib.error.HTTPError) as answer:
        get(view.url + "nothing.html")
    assert answer.value.code == 404


def test_several_viewers_get_the_latest_frames_and_one_may_leave(view):
    viewers = [MjpegViewer(view) for _ in range(3)]
    assert wait_until(lambda: view.viewers == 3)
    for shift in range(10):
        view.write(gradient_frame(shift))
        time.sleep(0.03)
    assert wait_until(lambda: all(len(v.parts) >= 3 for v in viewers))
    leaving = viewers.pop()
    leaving.close()  # mid-stream
    for shift in range(10, 20):
        view.write(gradient_frame(shift))  # the pipeline does not notice
        time.sleep(0.03)
    assert wait_until(lambda: view.viewers == 2)
    last = gradient_frame(19)
    for viewer in viewers:
        assert wait_until(lambda v=viewer: v.parts and np.abs(
            decode_jpeg(v.parts[-1]).astype(int) - last).mean() < 4)
        assert viewer.error is None
        viewer.close()
    assert wait_until(lambda: view.viewers == 0)


def test_a_viewer_that_never_reads_does_not_hold_up_write(view):
    stuck = MjpegViewer(view, read=False, receive_buffer=4096)
    assert wait_until(lambda: view.viewers == 1)
    reader = MjpegViewer(view)
    rng = np.random.default_rng(0)
    # Noise makes large JPEGs (~ 100 kB); each of the four has its own brightness.
    noise = [rng.integers(0, 64, (480, 640, 3), np.uint8) + 64 * k for k in range(4)]
    started = time.perf_counter()
    for i in range(60):  # far more than the stuck socket's buffers hold
        view.write(noise[i % 4])
        time.sleep(0.01)
    writing = time.perf_counter() - started
    # 60 frames at 10 ms each; a write blocked by the stuck viewer would stop the loop for good.
    assert writing < 10, f"60 writes took {writing:.1f} s"
    assert view.viewers == 2  # the stuck viewer's thread is still there, blocked on its send
    assert wait_until(lambda: len(reader.parts) > 0)
    last = noise[59 % 4].mean()
    assert wait_until(lambda: abs(decode_jpeg(reader.parts[-1]).mean() - last) < 8)
    reader.close()
    stuck.close()


def test_close_ends_streams_and_frees_the_port():
    sink = HttpViewSink("http://127.0.0.1:0", host="127.0.0.1", port=0, announce=False)
    port = sink.port
    sink.write(gradient_frame(0))
    viewer = MjpegViewer(sink)
    assert wait_until(lambda: len(viewer.parts) == 1)
    started = time.perf_counter()
    sink.close()
    assert time.perf_counter() - started < 5
    viewer.thread.join(timeout=5)
    assert not viewer.thread.is_alive()  # the server ended the stream
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(SinkError, match="closed"):
        sink.write(gradient_frame(1))
    again = HttpViewSink("http://127.0.0.1", host="127.0.0.1", port=port, announce=False)
    again.close()
    # Taken by someone else: a clear error, not a traceback from socketserver.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SinkError, match="cannot listen"):
            HttpViewSink("x", host="127.0.0.1", port=taken.getsockname()[1], announce=False)
    viewer.close()
