"""The README's picture of the browser view, taken with headless Chromium (issue 16).

Usage:
    python benchmarks/screenshot_browser_view.py MODEL.tflite --out docs/browser_view.jpg

Runs ``edgeseg demo --model MODEL --source SOURCE --output http://127.0.0.1:0`` (a free port),
waits until the page has statistics, takes a screenshot of the page with
``chromium --headless=new --screenshot`` (as the browser view test does) and ends the demo with
Ctrl-C. The picture is scaled to ``--width`` and written as JPEG (quality 85: a camera's frames
make PNGs of several hundred kB) or PNG, by the suffix; its size is printed.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2


def start_demo(model: str, source: str, view: str) -> tuple[subprocess.Popen, str]:
    """The demo's process and its page's address (read from what it prints)."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "demo", "--model", model, "--source", source,
         "--output", "http://127.0.0.1:0", "--view", view],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stderr], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and demo.poll() is None:
        try:
            found = re.search(r"browser view at (http://\S+/)", lines.get(timeout=1))
        except queue.Empty:
            continue
        if found:
            return demo, found.group(1)
    demo.kill()
    raise SystemExit(f"the demo did not start its browser view (exit status {demo.poll()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .tflite (or .onnx, .keras) segmentation model")
    parser.add_argument("--out", default="docs/browser_view.jpg")
    parser.add_argument("--source", default="synthetic?size=480x360&fps=30")
    parser.add_argument("--view", default="overlay", choices=("overlay", "mask", "side"))
    parser.add_argument("--window", default="960x560", help="browser window WIDTHxHEIGHT")
    parser.add_argument("--width", type=int, default=800, help="width of the saved picture")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)

    demo, url = start_demo(args.model, args.source, args.view)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + "stats.json", timeout=10) as response:
                if json.loads(response.read())["frames"] >= 30:
                    break
            time.sleep(0.2)
        with tempfile.TemporaryDirectory() as scratch:
            shot = Path(scratch) / "page.png"
            subprocess.run(
                [args.browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--no-first-run", "--hide-scrollbars", f"--user-data-dir={scratch}/profile",
                 f"--window-size={args.window.replace('x', ',')}", "--virtual-time-budget=2000",
                 f"--screenshot={shot}", url],
                capture_output=True, timeout=60, check=True,
            )
            image = cv2.imread(str(shot))
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
    if image.shape[1] > args.width:
        height = round(image.shape[0] * args.width / image.shape[1])
        image = cv2.resize(image, (args.width, height), interpolation=cv2.INTER_AREA)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg = out.suffix.lower() in (".jpg", ".jpeg")
    cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, 85] if jpeg
                else [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{out}: {image.shape[1]}x{image.shape[0]}, {out.stat().st_size / 1024:.0f} KiB "
          f"(page {url} of: edgeseg demo --model {args.model} --source '{args.source}' "
          f"--view {args.view})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
