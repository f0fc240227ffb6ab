"""Real network streams on 127.0.0.1, read through open_source and the demo: ffmpeg's MJPEG over
HTTP and GStreamer's RTSP server (``stream_servers.py``), killed mid-run and started again.

Every test is bounded in time: the servers' starts have timeouts, the runs ``max_frames``, and a
source gives up after ``retries`` reopen attempts of at most ``retry_max_delay`` seconds each.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edgeseg.demos.segment_live import run_demo
from edgeseg.video import open_source
from tests.demos.test_segment_live import tflite_model  # noqa: F401 (a fixture)
from tests.side_envs import unavailable
from tests.video.fakes import FakePredictor
from tests.video.stream_servers import (
    MjpegHttpServer,
    RtspServer,
    ffmpeg_missing,
    rtsp_missing,
)

SIZE = (320, 240)
# Short back-off so that a reconnect follows the server's return within about a second; ten
# attempts of at most 0.5 s end a run whose server never comes back within some 5 s.
RECONNECT = {"retries": 10, "retry_delay": 0.1, "retry_max_delay": 0.5, "timeout": 5.0}
SERVERS = {"http": (MjpegHttpServer, ffmpeg_missing), "rtsp": (RtspServer, rtsp_missing)}


@pytest.fixture(params=sorted(SERVERS))
def server(request):
    """A running stream server of each kind, killed at the end of the test."""
    server_class, missing = SERVERS[request.param]
    reason = missing()
    if reason:
        unavailable(reason)
    with server_class(size=SIZE, fps=30) as running:
        yield running


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_source_reads_the_served_frames(server):
    with open_source(server.url, **RECONNECT) as source:
        frames = [next(source) for _ in range(15)]
        assert source.live and source.reopened == 0 and source.outage_stats()["outages"] == 0
        read_at = source.read_at
    assert all(f.shape == (SIZE[1], SIZE[0], 3) and f.dtype == np.uint8 for f in frames)
    # A moving pattern: the frames are the stream's, not one frame repeated.
    assert any(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:], strict=True))
    assert read_at is not None and read_at <= time.perf_counter()


def test_edgeseg_demo_segments_a_real_stream(server, tflite_model, tmp_path):  # noqa: F811
    from edgeseg.cli import main as edgeseg_main

    summary_path = tmp_path / "run.json"
    argv = ["demo", "--model", str(tflite_model), "--source", server.url, "--max-frames", "20",
            "--output", str(tmp_path / "frames") + "/", "--summary", str(summary_path)]
    assert edgeseg_main(argv) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 20 and summary["ended_by"] == "max frames"
    assert summary["frame_size"] == list(SIZE) and summary["source"] == server.url
    assert len(list((tmp_path / "frames").iterdir())) == 20
    assert summary["outage"]["outages"] == 0 and summary["reopened"] == 0
    assert summary["frame_age_ms"]["max"] >= summary["frame_age_ms"]["p50"] > 0


@pytest.mark.slow
def test_server_killed_mid_run_is_reconnected_and_the_outage_counted(server):
    """The server dies after 20 frames and is back 2 s later on the same port: the demo goes
    on, and its summary counts one outage about as long as the server was gone."""
    outage_seconds = 2.0
    source = open_source(server.url, **RECONNECT)
    times = {}

    def kill_and_restart():
        if not _wait_for(lambda: source.frames >= 20, timeout=30):
            return
        times["killed"] = time.perf_counter()  # before: kill() waits for the exit
        server.kill()
        time.sleep(outage_seconds)
        server.start()
        times["back"] = time.perf_counter()

    chaos = threading.Thread(target=kill_and_restart, daemon=True)
    chaos.start()
    # 20 frames before the kill, at most 20 more could be on their way: the last 30 of these
    # 70 frames are read after the restart.
    summary = run_demo(FakePredictor(), source, max_frames=70, print_summary=False)
    chaos.join(timeout=30)

    assert summary["frames"] == 70 and summary["ended_by"] == "max frames", summary["error"]
    assert "back" in times
    outage = summary["outage"]
    assert summary["reopened"] >= 1 and outage["outages"] == 1
    gone = times["back"] - times["killed"]
    # Without frames: at least as long as the server was gone, at most that plus the last
    # back-off wait (0.5 s), an open (RTSP: about 1 s) and slack for a loaded machine.
    assert gone - 0.05 <= outage["seconds_without_frames"] <= gone + 4.0
    assert outage["longest_gap_seconds"] == pytest.approx(outage["seconds_without_frames"])
    (record,) = source.outages
    assert record.failed >= times["killed"] - 0.05  # noticed after the kill, not before
    assert times["back"] <= record.recovered  # frames again only once it was back
    assert outage["reconnect_seconds"] == [pytest.approx(record.recovered - record.failed)]
    assert record.last_frame <= times["killed"]


@pytest.mark.slow
def test_a_source_faster_than_the_model_hands_over_fresh_frames():
    """30 fps into a 10 fps model: frames are dropped, and the age of the frame the model gets
    stays flat from the first tenth of the run to the last instead of growing as a queue
    would."""
    reason = rtsp_missing()
    if reason:
        unavailable(reason)
    with RtspServer(size=SIZE, fps=30) as server:
        summary = run_demo(FakePredictor(delay=0.1), open_source(server.url, **RECONNECT),
                           max_frames=40, record_frames=True, print_summary=False)
    assert summary["frames"] == 40 and summary["dropped"] > 0
    ages = summary["per_frame_age_ms"]
    assert len(ages) == 40
    age = summary["frame_age_ms"]
    assert age["p90"] == pytest.approx(np.percentile(ages, 90))
    assert age["last_10pct"]["p90"] == pytest.approx(np.percentile(ages[-4:], 90))
    # A frame waits at most for the inference in progress (0.1 s) plus a frame period: a
    # queue of every frame would make the last ones seconds old.
    assert age["last_10pct"]["p90"] <= age["first_10pct"]["p90"] + 60
    assert age["max"] < 400
