"""Live segmentation: frames from a source, a model, class colours and stage timings on screen.

    edgeseg demo --model enet_int8.tflite --source 0
    edgeseg demo --model unet.tflite --source clip.mp4 --output out.mp4 --summary run.json
    edgeseg demo --model enet_int8.tflite --source 0 --output http://0.0.0.0:8080  # a web page
    python -m edgeseg.demos.segment_live --model unet.tflite --source synthetic --view side

Worker threads (``edgeseg.video.Prefetcher``) capture, preprocess and run the model on the next
frame while this loop postprocesses, draws and writes the current one; a live source's newest
frame is taken when the model is free for it, a file's frames all, in order. Keys in a window:
q or Esc quit, space pause, m cycles the views (overlay, mask, side by side), s saves a
snapshot. Ctrl-C and the end of the stream end the run cleanly. An instance model (Mask R-CNN)
runs through an ``InstanceSegmenter``: each instance's mask, box and "class score".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from edgeseg.io import write_json_atomic
from edgeseg.runtime import LiveRun, frame_drawer, open_segmenter
from edgeseg.runtime.draw import VIEWS
from edgeseg.runtime.live import describe, format_summary, runtime_summary
from edgeseg.runtime.segmenter import RESIZE_MODES
from edgeseg.video import Prefetcher, SourceError, as_sink, as_source

__all__ = ["StatsPublisher", "add_arguments", "main", "run_demo", "run_from_args"]

PUBLISH_EVERY_S = 0.25  # how often a sink with ``publish`` (the browser view) gets statistics


def run_demo(model: Any, source: Any, output: Any = "none", alpha: float = 0.5,
             view: str = "overlay", max_frames: int | None = None,
             summary_path: str | os.PathLike | None = None, threads: int | None = None,
             resize: str = "resize", show_hud: bool = True, record_frames: bool = False,
             snapshot_dir: str | os.PathLike = ".", queue_size: int = 1,
             print_summary: bool = True) -> dict:
    """Segments ``source`` into ``output`` until the stream ends, q, Ctrl-C or ``max_frames``.

    ``model`` is a model file, a predictor or a segmenter; ``source`` a spec, an open source or
    any iterable of RGB frames; ``output`` a sink spec or an open sink. Returns the summary
    (``LiveRun.summary``), also written atomically to ``summary_path`` as JSON. An unexpected
    error is raised again once the summary is out.
    """
    run = LiveRun(view, max_frames, snapshot_dir, record_frames)
    segmenter = open_segmenter(model, threads=threads, resize=resize)
    drawer = frame_drawer(segmenter, alpha=alpha, show_hud=show_hud)

    def infer(prepared):
        return segmenter.infer(prepared[0])

    with (
        as_source(source) as frames,
        as_sink(output) as sink,
        Prefetcher(frames, segmenter.preprocess, depth=queue_size, infer=infer) as prefetched,
        run,  # ends the loop cleanly on Ctrl-C or an error; the sink and source close after
    ):
        stats = StatsPublisher(sink, run, prefetched, model, segmenter, drawer)
        while not run.finished:
            item = prefetched.get()  # captured, preprocessed and inferred in the workers
            if item is None:
                break  # the end of the stream
            run.begin_frame(item)
            with run.stage("postprocess"):
                result = segmenter.postprocess(item.output, item.prepared[1])
            with run.stage("draw"):
                canvas = drawer.draw(item.frame, result, run.view, run.status())
            with run.stage("output"):
                sink.write(canvas)
            run.end_frame(result)
            stats.update()
            run.handle_keys(sink, drawer, canvas)
    summary = run.summary(model, source, output, segmenter, prefetched, sink)
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    if print_summary:
        print(format_summary(summary, summary_path))
    run.raise_error()
    return summary


class StatsPublisher:
    """Hands a sink that has ``publish(stats)`` (the browser view) the run's figures every
    ``PUBLISH_EVERY_S``: frames, dropped, fps, median stage ms over the last ``HUD_WINDOW`` frames, the
    model, its runtime and its classes with their colours. Does nothing for other sinks."""

    def __init__(self, sink, run: LiveRun, prefetched: Prefetcher, model: Any, segmenter,
                 drawer):
        self.publish = getattr(sink, "publish", None)
        self.run, self.prefetched = run, prefetched
        self.static = {
            "model": os.path.basename(describe(model)),
            "runtime": runtime_summary(getattr(segmenter, "predictor", None))["runtime"],
            "classes": [{"id": i, "name": str(name), "colour": drawer.lookup[i].tolist()}
                        for i, name in enumerate((drawer.names or [])[:256])],
        }
        self._last = (time.perf_counter(), 0)
        if self.publish is not None:  # the page shows the model and classes from the start
            self.publish({**self.static, "frames": 0, "dropped": 0, "fps": 0.0, "stages_ms": {}})

    def update(self) -> None:
        now, frames = time.perf_counter(), self.run.frames
        then, frames_then = self._last
        if self.publish is None or now - then < PUBLISH_EVERY_S:
            return
        self._last = (now, frames)
        self.publish({
            **self.static,
            "frames": frames,
            "dropped": self.prefetched.stats()["dropped"],
            "fps": (frames - frames_then) / (now - then),
            "stages_ms": self.run.times.recent_ms(),
            "view": self.run.view,
        })


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``edgeseg demo`` options, on an existing parser (the CLI's sub-command)."""
    parser.add_argument("--model", required=True, help="model file: .tflite, .onnx or .keras")
    parser.add_argument("--source", required=True,
                        help="0 or /dev/video0 (camera), rtsp://... (stream), clip.mp4, frames/, "
                        "or synthetic[?size=640x360&fps=30&frames=300&live=0]")
    parser.add_argument("--output", default="display",
                        help="display (default; without a display: a message, then none), "
                        "out.mp4, out.avi, frames/, http://0.0.0.0:8080 (a web page with the "
                        "video and statistics, for a board without a screen), or none")
    parser.add_argument("--alpha", type=float, default=0.5, help="class colour weight, 0 to 1")
    parser.add_argument("--view", choices=VIEWS, default="overlay")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N")
    parser.add_argument("--summary", default=None, metavar="FILE.json",
                        help="write the run's summary here as JSON")
    parser.add_argument("--threads", type=int, default=None, help="runtime CPU threads")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="resize")
    parser.add_argument("--no-hud", action="store_true", help="no legend or heads-up line")
    parser.add_argument("--snapshot-dir", default=".", help="where the s key saves snapshots")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the demo; the exit status (0 ok, 1 the source failed, 2 bad arguments or files)."""
    try:
        summary = run_demo(args.model, args.source, output=args.output, alpha=args.alpha,
                           view=args.view, max_frames=args.max_frames, summary_path=args.summary,
                           threads=args.threads, resize=args.resize, show_hud=not args.no_hud,
                           snapshot_dir=args.snapshot_dir)
    except (FileNotFoundError, ValueError, SourceError, ImportError) as problem:
        print(f"edgeseg demo: error: {problem}", file=sys.stderr)
        return 2
    return 1 if summary["error"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgeseg demo", description="Live segmentation of a camera, stream, video or folder."
    )
    return run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
