"""Soak: 10,000 frames of a live source through the demo with the browser view open (issue 16).

Usage:
    python benchmarks/soak.py enet_int8_480x320.tflite --frames 10000 \
        --out benchmarks/results/soak_cpu

Runs ``run_demo`` (the ``edgeseg demo`` loop) on a live synthetic source paced like a camera
(``--source-fps``) into the browser view (``http://127.0.0.1:0``), with one viewer reading the
MJPEG stream in a thread and another polling ``/stats.json`` every 0.5 s, as the page does. It
records the process's resident memory (VmRSS from /proc/self/status) every 100 frames written
and every frame's stage times and age (``record_frames``), then compares the first ``--window``
frames with the last: RSS (median of the samples in each window), the latency through the
pipeline (``total``: capture start to the frame written), the frame age (the source reading a
frame to inference starting on it, where the run records it) and each stage, at the median,
p90 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgeseg.demos.segment_live import run_demo
from edgeseg.io import write_json_atomic
from edgeseg.video import HttpViewSink

RSS_EVERY = 100  # frames between two resident memory samples


def rss_mib() -> float:
    """This process's resident memory, MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class SoakView(HttpViewSink):
    """The browser view, sampling the process's RSS every ``RSS_EVERY`` frames written."""

    def __init__(self):
        super().__init__("http://127.0.0.1:0", host="127.0.0.1", port=0, announce=False)
        self.rss: list[tuple[int, float]] = []

    def _write(self, frame: np.ndarray) -> None:
        super()._write(frame)
        written = self.frames + 1  # counted once this returns
        if written % RSS_EVERY == 0:
            self.rss.append((written, rss_mib()))


def mjpeg_viewer(port: int, stop: threading.Event, counts: dict) -> None:
    """Reads the MJPEG stream to the end, counting the JPEGs and bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: soak\r\n\r\n")
        stream = sock.makefile("rb")
        while stream.readline() not in (b"\r\n", b""):
            pass
        while not stop.is_set():
            length = None
            while (line := stream.readline()) != b"\r\n":
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            counts["jpegs"] += 1
            counts["bytes"] += len(stream.read(length))
            stream.readline()


def stats_poller(url: str, stop: threading.Event, counts: dict) -> None:
    while not stop.wait(0.5):
        try:
            with urllib.request.urlopen(url + "stats.json", timeout=10) as response:
                json.loads(response.read())
            counts["polls"] += 1
        except OSError:
            counts["poll_errors"] += 1


def percentiles(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--size", default="480x320")
    parser.add_argument("--source-fps", type=float, default=30.0)
    parser.add_argument("--window", type=int, default=1000, help="frames compared at each end")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/soak_cpu")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    source = f"synthetic?size={args.size}&fps={args.source_fps:g}"
    view = SoakView()
    counts = {"jpegs": 0, "bytes": 0, "polls": 0, "poll_errors": 0}
    stop = threading.Event()
    workers = [threading.Thread(target=mjpeg_viewer, args=(view.port, stop, counts), daemon=True),
               threading.Thread(target=stats_poller, args=(view.url, stop, counts), daemon=True)]
    for worker in workers:
        worker.start()
    rss_before = rss_mib()
    started = time.perf_counter()
    summary = run_demo(args.model, source, output=view, max_frames=args.frames,
                       threads=args.threads, record_frames=True, print_summary=False)
    wall = time.perf_counter() - started
    stop.set()
    for worker in workers:
        worker.join(timeout=5)

    per_frame = dict(summary.pop("per_frame_ms"))
    ages = summary.pop("per_frame_age_ms", None)  # where the run records frame ages
    if ages:
        per_frame["frame age"] = ages
    window = args.window
    frames = summary["frames"]
    rss = np.asarray(view.rss)
    rss_start = float(np.median(rss[rss[:, 0] <= window, 1]))
    rss_end = float(np.median(rss[rss[:, 0] > frames - window, 1]))
    compared = {name: {"start": percentiles(values[:window]), "end": percentiles(values[-window:])}
                for name, values in per_frame.items() if len(values) >= 2 * window}
    result = {
        "command": f"python benchmarks/soak.py {args.model} --frames {args.frames} --size "
                   f"{args.size} --source-fps {args.source_fps:g} --window {window} "
                   f"--threads {args.threads}",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "source": source,
        "model": os.path.basename(args.model),
        "frames": frames,
        "wall_seconds": wall,
        "window": window,
        "rss_mib": {"before_run": rss_before, "start": rss_start, "end": rss_end,
                    "growth_percent": 100 * (rss_end - rss_start) / rss_start,
                    "samples": [[int(f), round(float(m), 2)] for f, m in rss]},
        "per_frame_ms": compared,
        "frame_age_recorded": bool(ages),
        "viewer": counts,
        "summary": {k: v for k, v in summary.items() if k != "snapshots"},
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rss = result["rss_mib"]
    summary = result["summary"]
    lines = [
        "# Soak: a live source through the int8 ENet with the browser view open",
        "",
        f"Device: {result['cpu']}, {result['cores']} cores; runtime {summary.get('runtime')}.",
        f"Command: `{result['command']}`.",
        "",
        f"{result['frames']} frames from `{result['source']}` through {result['model']} into "
        f"the browser view in {result['wall_seconds']:.0f} s ({summary['fps']:.1f} fps end to "
        f"end; dropped {summary['dropped']} of the source's frames: the model, not the camera, "
        f"set the pace), one viewer reading the MJPEG stream ({result['viewer']['jpegs']} "
        f"JPEGs, {result['viewer']['bytes'] / 2**20:.0f} MiB) and one polling /stats.json "
        f"every 0.5 s ({result['viewer']['polls']} polls, {result['viewer']['poll_errors']} "
        "errors).",
        "",
        f"Resident memory (VmRSS, median of the samples every {RSS_EVERY} frames): "
        f"{rss['start']:.1f} MiB over the first {result['window']} frames, {rss['end']:.1f} MiB "
        f"over the last {result['window']}: **{rss['growth_percent']:+.2f}%** "
        f"({rss['before_run']:.1f} MiB before the model was loaded).",
        "",
        f"| per frame (ms) | first {result['window']}: median | p90 | p99 | "
        f"last {result['window']}: median | p90 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, both in result["per_frame_ms"].items():
        start, end = both["start"], both["end"]
        lines.append(f"| {name} | {start['median']:.1f} | {start['p90']:.1f} | "
                     f"{start['p99']:.1f} | {end['median']:.1f} | {end['p90']:.1f} | "
                     f"{end['p99']:.1f} |")
    lines.append("")
    if result["frame_age_recorded"]:
        lines.append("frame age: from the source reading a frame to inference starting on it "
                     "(the summary's per_frame_age_ms); total: from the capture to the frame "
                     "written, the latency through the pipeline.")
    else:
        lines.append("Frame age: this run's summary has no per-frame frame age; `total` (capture "
                     "start to the frame written) is the latency through the pipeline.")
    if result["note"]:
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
