"""``edgeseg demo --output http://...`` seen through a real browser (headless Chromium)."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from edgeseg.demos.segment_live import run_demo
from edgeseg.runtime import Segmenter
from edgeseg.runtime.draw import VIEWS, FrameDrawer
from edgeseg.runtime.live import STAGES
from edgeseg.video import HttpViewSink
from tests.side_envs import unavailable
from tests.video.fakes import FakePredictor, scene_frames

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1000, 600)  # the page's video is 640x240 (the side view of 320x240), at its top left


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    """A tiny U-Net as .tflite with the synthetic classes and palette in its sidecar."""
    pytest.importorskip("tensorflow")
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build

    path = tmp_path_factory.mktemp("model") / "tiny_unet.tflite"
    path.write_bytes(convert_keras_to_tflite(build("unet", 7, (48, 64, 3), filters=4, depth=2)))
    path.with_name(path.name + ".json").write_text(json.dumps({
        "model": "unet",
        "classes": list(SYNTHETIC_CLASSES),
        "palette": [list(c) for c in SYNTHETIC_PALETTE],
        "normalisation": {"scale": 1 / 255, "offset": 0.0},
    }))
    return path


@pytest.mark.parametrize("view", VIEWS)
def test_the_page_shows_the_view_and_legend_a_window_would(view):
    """What the browser view serves is the drawer's picture for the same view and alpha, and
    its statistics name the model's classes in the palette's colours."""
    frames = scene_frames(6, size=(96, 64))
    sink = HttpViewSink("http://127.0.0.1:0", host="127.0.0.1", port=0, announce=False)
    summary = run_demo(FakePredictor(), frames, output=sink, view=view, alpha=0.3,
                       show_hud=False, print_summary=False)
    assert summary["frames_written"] == 6 and sink.closed
    served = cv2.cvtColor(cv2.imdecode(np.frombuffer(sink.latest_jpeg()[1], np.uint8),
                                       cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    segmenter = Segmenter(FakePredictor())
    expected = FrameDrawer(segmenter, alpha=0.3, show_hud=False).draw(
        frames[-1], segmenter(frames[-1]), view)
    # The same picture through OpenCV's JPEG at the sink's quality: what the page would show.
    _, data = cv2.imencode(".jpg", cv2.cvtColor(expected, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, sink.quality])
    expected = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert served.shape == expected.shape
    assert np.abs(served.astype(int) - expected).mean() < 0.5
    stats = sink.stats()
    assert stats["model"] == "fake.tflite"
    assert [c["name"] for c in stats["classes"]] == FakePredictor.CLASSES
    assert [c["colour"] for c in stats["classes"]] == segmenter.palette[:7].tolist()


def chromium() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    unavailable(f"no headless browser for the browser view test: none of {', '.join(BROWSERS)} "
                "is on PATH (Debian: apt-get install chromium)")


def browse(browser: str, url: str, profile: Path, *what: str) -> subprocess.CompletedProcess:
    """Chromium, headless, on ``url`` for 2 s of page time, then ``what`` (a screenshot or the
    DOM); bounded at 60 s."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=2000", *what, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


def page_figures(dom: str) -> dict[str, str]:
    """The text of the page's figures (frames, dropped, fps, model) after its script ran."""
    return {key: match.group(1) for key in ("frames", "dropped", "fps", "model")
            if (match := re.search(rf'id="{key}"[^>]*>([^<]*)<', dom))}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_browser_shows_the_live_video_and_statistics(tflite_model, tmp_path):
    browser = chromium()
    summary_path = tmp_path / "run.json"
    demo = subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "demo", "--model", str(tflite_model),
         "--source", "synthetic?size=320x240&fps=20", "--output", "http://127.0.0.1:0",
         "--view", "side", "--threads", "1", "--summary", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stderr], daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline and demo.poll() is None:
            try:
                found = re.search(r"browser view at (http://\S+/)", lines.get(timeout=1))
            except queue.Empty:
                continue
            url = found and found.group(1)
        assert url, f"the demo did not say where its page is (exit status {demo.poll()})"
        deadline = time.monotonic() + 30
        while get_json(url + "stats.json")["frames"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)

        # What other programs poll: the statistics, and the frame as the page shows it.
        stats = get_json(url + "stats.json")
        assert stats["model"] == "tiny_unet.tflite" and stats["frames"] >= 3
        assert stats["fps"] > 0 and isinstance(stats["dropped"], int)
        assert set(stats["stages_ms"]) == set(STAGES)
        assert [c["name"] for c in stats["classes"]] == list(SYNTHETIC_CLASSES)
        assert [c["colour"] for c in stats["classes"]] == [list(c) for c in SYNTHETIC_PALETTE]
        with urllib.request.urlopen(url + "frame.jpg", timeout=10) as response:
            frame = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (240, 640, 3)  # the side view: the frame and its mask

        # The page, twice: the video moves and the figures its script fetched move on.
        shots, doms = [], []
        for k in range(2):
            shot = tmp_path / f"page{k}.png"
            browse(browser, url, tmp_path / "profile", f"--screenshot={shot}")
            shots.append(cv2.imread(str(shot)))
            doms.append(browse(browser, url, tmp_path / "profile", "--dump-dom").stdout)
            time.sleep(0.5)
        video = [shot[60:230, 30:620].astype(np.int16) for shot in shots]  # inside the <img>
        assert all(region.std() > 10 for region in video), "no picture where the video goes"
        assert np.abs(video[1] - video[0]).mean() > 1, "the video did not change"
        first, second = (page_figures(dom) for dom in doms)
        assert first["model"] == "tiny_unet.tflite"
        assert int(second["frames"]) > int(first["frames"]) >= 3, (first, second)
        assert float(first["fps"]) > 0 and first["dropped"].isdigit()
        for dom in doms:
            assert all(name in dom for name in SYNTHETIC_CLASSES)  # the legend
            assert all(f">{stage}<" in dom for stage in STAGES)  # the stage times
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo ends cleanly and writes its summary
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0
    summary = json.loads(summary_path.read_text())
    assert summary["ended_by"] == "interrupted (Ctrl-C)" and summary["frames_written"] >= 3
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConnectionRefusedError):  # the server went with the demo
        socket.create_connection(("127.0.0.1", port), timeout=2)
