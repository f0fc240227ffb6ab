"""A real stream through the demo with its server killed and restarted: time without frames
against the outage's length, and time to reconnect once the server is back (issue 16).

Usage:
    python benchmarks/outage.py /tmp/outage_models/enet_fp32_320x240.tflite \
        --kind rtsp --outages 1,3,6 --out benchmarks/results/outage_cpu

For each outage length, a stream server on 127.0.0.1 (``tests/video/stream_servers.py``:
GStreamer's RTSP server under the system Python, or ffmpeg's MJPEG over HTTP) serves a test
pattern; ``edgeseg``'s demo loop segments it with the model. After ``--warmup`` seconds the
server is killed (SIGKILL), started again on the same port ``outage`` seconds later, and the run
goes on for ``--after`` seconds more. The source keeps its reopen options' defaults unless
given (``--retry-delay``, ``--retry-max-delay``), so the reconnect time includes the wait of
the back-off step that is running when the server comes back.

``--ffmpeg-options`` (repeatable) runs the outages again with ``OPENCV_FFMPEG_CAPTURE_OPTIONS``
set to each value, e.g. ``"analyzeduration;0|probesize;32"``: OpenCV's FFmpeg otherwise
spends some 0.7 s probing an RTSP stream on every open, reconnects included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.video.stream_servers


class StopAt:
    """A sink that keeps nothing and presses q once ``stop`` is set (the demo's quit key)."""

    spec = "none"

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.frames = 0

    def write(self, frame) -> None:
        self.frames += 1

    def poll_key(self) -> str | None:
        return "q" if self.stop.is_set() else None

    def close(self) -> None:
        pass


def run_outage(model, server, outage: float, warmup: float, after: float,
               source_options: dict) -> dict:
    """One run with one outage of ``outage`` seconds; its figures as a row."""
    from edgeseg.demos.segment_live import run_demo
    from edgeseg.video import open_source

    server.start()
    source = open_source(server.url, **source_options)
    stop, times = threading.Event(), {}

    def kill_and_restart():
        time.sleep(warmup)
        times["killed"] = time.perf_counter()  # before: kill() waits for the exit
        server.kill()
        time.sleep(outage)
        server.start()
        times["back"] = time.perf_counter()
        time.sleep(after)
        stop.set()

    chaos = threading.Thread(target=kill_and_restart, daemon=True)
    chaos.start()
    summary = run_demo(model, source, output=StopAt(stop), print_summary=False)
    chaos.join()
    server.kill()
    stats = summary["outage"]
    row = {"outage_s": outage, "server_gone_s": times["back"] - times["killed"],
           "frames": summary["frames"], "dropped": summary["dropped"], "fps": summary["fps"],
           "reopened": stats["reopened"], "outages": stats["outages"],
           "without_frames_s": stats["seconds_without_frames"],
           "longest_gap_s": stats["longest_gap_seconds"], "ended_by": summary["ended_by"],
           "error": summary["error"], "frame_age_ms": summary["frame_age_ms"]}
    first = source.outages[0] if source.outages else None
    if first is not None:
        row["noticed_after_kill_s"] = first.failed - times["killed"]
        row["last_frame_before_kill_s"] = times["killed"] - (first.last_frame or first.failed)
        if first.recovered is not None:
            row["failure_to_frames_s"] = first.recovered - first.failed
            row["reconnect_after_back_s"] = first.recovered - times["back"]
    return row


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the table (without --out)."""
    extra = "".join(f" --{name.replace('_', '-')} {value:g}" for name, value in
                    (("retry_delay", args.retry_delay), ("retry_max_delay", args.retry_max_delay))
                    if value is not None)
    extra += "".join(f" --ffmpeg-options '{value}'" for value in args.ffmpeg_options or [])
    return (f"python benchmarks/outage.py {args.model} --kind {args.kind} --outages "
            f"{args.outages} --warmup {args.warmup:g} --after {args.after:g} --size {args.size} "
            f"--fps {args.fps}{extra}")


def main() -> None:
    from edgeseg.bench.fingerprint import device_fingerprint
    from edgeseg.io import parse_size
    from edgeseg.runtime import open_segmenter
    from edgeseg.video.sources import SOURCE_OPTIONS
    from tests.video.stream_servers import (
        MjpegHttpServer,
        RtspServer,
        ffmpeg_missing,
        rtsp_missing,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a semantic segmentation model file (.tflite, ...)")
    parser.add_argument("--kind", choices=("rtsp", "http"), default="rtsp")
    parser.add_argument("--outages", default="1,3,6", help="outage lengths in seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the kill")
    parser.add_argument("--after", type=float, default=3.0, help="seconds after the restart")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--retry-delay", type=float, default=None)
    parser.add_argument("--retry-max-delay", type=float, default=None)
    parser.add_argument("--ffmpeg-options", action="append", default=None,
                        metavar="'KEY;VALUE|...'", help="OPENCV_FFMPEG_CAPTURE_OPTIONS for a "
                        "further set of runs (repeatable; '' for none)")
    parser.add_argument("--note", default="", help="a paragraph for the .md (what it shows)")
    parser.add_argument("--out", default="benchmarks/results/outage_cpu")
    args = parser.parse_args()

    server_class, missing = {"rtsp": (RtspServer, rtsp_missing),
                             "http": (MjpegHttpServer, ffmpeg_missing)}[args.kind]
    if reason := missing():
        raise SystemExit(f"cannot run the {args.kind} server: {reason}")
    options = {name: value for name, value in (("retry_delay", args.retry_delay),
                                               ("retry_max_delay", args.retry_max_delay))
               if value is not None}
    defaults = {name: SOURCE_OPTIONS["stream"][name][0]
                for name in ("retries", "retry_delay", "retry_max_delay", "timeout")}
    segmenter = open_segmenter(args.model, threads=args.threads)
    server = server_class(size=parse_size(args.size), fps=args.fps)
    rows = []
    for ffmpeg_options in args.ffmpeg_options or [""]:
        # OpenCV reads it at each open of a capture.
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options
        for outage in (float(v) for v in args.outages.split(",")):
            row = run_outage(segmenter, server, outage, args.warmup, args.after, options)
            rows.append({"ffmpeg_options": ffmpeg_options, **row})
            print(json.dumps(rows[-1]), flush=True)

    device = device_fingerprint()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source_options = {**defaults, **options}
    out.with_suffix(".json").write_text(json.dumps(
        {"device": device, "command": command_line(args), "kind": args.kind,
         "source_options": source_options, "rows": rows}, indent=2))
    scheme = {"rtsp": "RTSP (GStreamer's RTSP server, videotestsrc ! jpegenc ! rtpjpegpay; "
                      "OpenCV's FFmpeg picks the transport)",
              "http": "MJPEG over HTTP (ffmpeg -f mpjpeg -listen 1)"}[args.kind]
    lines = [
        "# Stream outages: time without frames against the outage, time to reconnect\n",
        f"Device: {device.get('cpu_model') or 'unknown CPU'}, {os.cpu_count()} cores. "
        f"Stream: {scheme} at {args.size}, {args.fps} fps, on 127.0.0.1. Model: "
        f"{Path(args.model).name} through the demo loop (`run_demo`), output none. Source "
        "options: " + ", ".join(f"{k}={v:g}" for k, v in source_options.items()) + ".\n",
        f"Command: `{command_line(args)}`\n",
        "Each run: the server is killed (SIGKILL) after the warm-up and started again on the "
        "same port after the outage. *gone*: kill to the restarted server's \"ready\"; "
        "*without frames*: last frame before the kill to the first after (the summary's "
        "`outage.seconds_without_frames`); *noticed*: kill to the failed read; *reconnect "
        "after back*: server ready to the first frame again (back-off wait still running, "
        "plus the stream's open); *failure to frames*: the failed read to the first frame "
        "again (the summary's `reconnect_seconds`). *FFmpeg options*: "
        "`OPENCV_FFMPEG_CAPTURE_OPTIONS` for the run.\n",
        *([args.note + "\n"] if args.note else []),
        "| FFmpeg options | outage s | gone s | without frames s | longest gap s | noticed s | "
        "reconnect after back s | failure to frames s | reopened | frames | dropped | fps | "
        "age p90 ms first / last 10% |",
        "|---" * 13 + "|",
    ]
    for r in rows:
        age = r["frame_age_ms"] or {}
        ages = (f"{age['first_10pct']['p90']:.1f} / {age['last_10pct']['p90']:.1f}"
                if age else "-")
        options_cell = r["ffmpeg_options"].replace("|", "\\|") or "none"  # | splits cells
        lines.append(
            f"| {options_cell} | {r['outage_s']:g} | {r['server_gone_s']:.2f} | "
            f"{r['without_frames_s']:.2f} | "
            f"{r['longest_gap_s']:.2f} | {r.get('noticed_after_kill_s', float('nan')):.3f} | "
            f"{r.get('reconnect_after_back_s', float('nan')):.2f} | "
            f"{r.get('failure_to_frames_s', float('nan')):.2f} | {r['reopened']} | "
            f"{r['frames']} | {r['dropped']} | {r['fps']:.1f} | {ages} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
