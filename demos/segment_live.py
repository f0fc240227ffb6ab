"""Live segmentation: frames from a source, a model, class colours and stage timings on screen.

    edgeseg demo --model enet_int8.tflite --source 0
    edgeseg demo --model unet.tflite --source clip.mp4 --output out.mp4 --summary run.json
    python -m edgeseg.demos.segment_live --model unet.tflite --source synthetic --view side

A worker thread captures and preprocesses the next frame while the main thread runs inference,
postprocessing and drawing on the current one, so on a live source the end-to-end frame rate
stays close to the inference-only rate. From a file every frame is segmented (the worker runs
at most ``queue_size`` frames ahead); from a live source the worker prepares each new frame and
keeps only the newest, so inference starts on a frame about one preprocessing old.

Keys (in a window): q or Esc quit, space pause, m cycles the views (overlay, mask, side by
side), s saves a snapshot of what is shown. Ctrl-C and the end of the stream end the run
cleanly: the source and the sink are closed and a summary is printed and, with
``summary_path``, written as JSON.

An instance model (a mobile Mask R-CNN: ``is_instance_model``) runs through an
:class:`InstanceSegmenter` instead: the overlay shows each instance's mask, box and "class
score", the mask view the instance masks on black, and the summary the mean instances per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime import InstanceSegmenter, Segmenter, is_instance_model, load_predictor
from edgeseg.runtime.segmenter import RESIZE_MODES
from edgeseg.video import SourceError, open_sink, open_source, write_image

VIEWS = ("overlay", "mask", "side")
STAGES = ("capture", "preprocess", "inference", "postprocess", "draw", "output", "total")
"""Per-frame stages, in ms. capture: waiting for the source's frame; draw: composing the view,
legend and heads-up line; output: the sink's write; total: capture start to output done (the
frame's latency through the pipeline, including time queued between the two threads)."""
KEYS = {"q": "quit", "\x1b": "quit", " ": "pause", "m": "view", "s": "snapshot"}
_HUD_WINDOW = 30  # frames the heads-up line's figures are taken over


# ----------------------------------------------------------------------------------- pipeline


@dataclass
class _Prepared:
    """A captured, preprocessed frame waiting for inference."""

    frame: np.ndarray
    batch: np.ndarray
    geometry: Any
    capture_ms: float
    preprocess_ms: float
    started: float  # perf_counter() when its capture began


class _Prefetcher:
    """Captures and preprocesses frames in a worker thread while the main thread runs the model.

    From files and folders every frame is kept: the worker waits while ``depth`` prepared frames
    are queued. From a live source the worker prepares each new frame as it arrives and keeps
    only the newest, so inference always starts on the freshest frame (about one preprocessing
    old, not one inference old); the frames it replaces count in ``discarded``.
    """

    def __init__(self, source, segmenter: Segmenter, depth: int = 1):
        if depth < 1:
            raise ValueError(f"queue_size must be at least 1, got {depth}")
        self._frames = iter(source)
        self._segmenter = segmenter
        self._live = bool(getattr(source, "live", False))
        self._depth = depth
        self._items: deque[_Prepared] = deque()
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._error: BaseException | None = None
        self.discarded = 0
        self._thread = threading.Thread(target=self._run, name="edgeseg-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._live:
                    with self._condition:
                        while len(self._items) >= self._depth and not self._stop.is_set():
                            self._condition.wait(0.1)
                    if self._stop.is_set():
                        break
                t0 = time.perf_counter()
                try:
                    frame = next(self._frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                batch, geometry = self._segmenter.preprocess(frame)
                t2 = time.perf_counter()
                item = _Prepared(frame, batch, geometry, 1e3 * (t1 - t0), 1e3 * (t2 - t1), t0)
                with self._condition:
                    while self._live and len(self._items) >= self._depth:
                        self._items.popleft()
                        self.discarded += 1
                    self._items.append(item)
                    self._condition.notify_all()
        except BaseException as error:  # handed to the main thread, which reports it
            self._error = error
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    def get(self) -> _Prepared | None:
        """The next prepared frame, or None at the end of the stream."""
        with self._condition:
            while not self._items and not self._ended:
                self._condition.wait(0.1)  # a timeout keeps Ctrl-C prompt
            if self._items:
                item = self._items.popleft()
                self._condition.notify_all()
                return item
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return None

    def stop(self, source) -> None:
        """Stops the worker. A live source is closed first, which wakes a worker waiting on it."""
        self._stop.set()
        if self._live and hasattr(source, "close"):
            source.close()
        self._thread.join(10)


# ----------------------------------------------------------------------------------- drawing


class FrameDrawer:
    """Composes a view of a frame and its label map, with a legend and a heads-up line."""

    max_legend_classes = 16  # more classes than this: the legend shows those in the frame

    def __init__(self, segmenter: Segmenter, alpha: float = 0.5, show_hud: bool = True):
        self.segmenter = segmenter
        self.alpha = alpha
        self.show_hud = show_hud
        classes = segmenter.classes
        self.names = list(classes) if classes else None
        self._legends: dict[tuple, np.ndarray] = {}
        # Segmenter.colourise's colours as an OpenCV lookup table: cv2.LUT is several times
        # faster than NumPy's fancy indexing at camera resolutions.
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(segmenter.palette)] = segmenter.palette[:256]
        self._lut = palette.reshape(256, 1, 3)

    def colourise(self, labels: np.ndarray) -> np.ndarray:
        """The same colours as :meth:`Segmenter.colourise`."""
        return cv2.LUT(cv2.merge([labels, labels, labels]), self._lut)

    def compose(self, frame: np.ndarray, labels: np.ndarray, view: str) -> np.ndarray:
        """The view alone: the overlay, the colour mask, or the frame and the mask side by side."""
        mask = self.colourise(labels)
        if view == "overlay":  # as Segmenter.overlay
            return cv2.addWeighted(frame, 1 - self.alpha, mask, self.alpha, 0)
        if view == "mask":
            return mask
        if view == "side":
            return np.hstack([frame, mask])
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")

    def draw(self, frame: np.ndarray, labels: np.ndarray, view: str, hud: str = "") -> np.ndarray:
        canvas = self.compose(frame, labels, view)
        if self.show_hud:
            scale = float(np.clip(canvas.shape[0] / 960, 0.3, 0.8))
            self._paste_legend(canvas, labels, scale)
            if hud:
                self._draw_hud(canvas, hud, scale)
        return canvas

    def _legend_ids(self, labels: np.ndarray) -> tuple[int, ...]:
        known = len(self.names) if self.names else 0
        if 0 < known <= self.max_legend_classes:
            return tuple(range(known))
        counts = np.bincount(labels.ravel(), minlength=256)
        present = np.flatnonzero(counts)
        present = present[np.argsort(-counts[present], kind="stable")][: self.max_legend_classes]
        return tuple(int(i) for i in sorted(present))

    def _name(self, class_id: int) -> str:
        if self.names and class_id < len(self.names):
            return str(self.names[class_id])
        return f"class {class_id}"

    def legend(self, class_ids: tuple[int, ...], scale: float) -> np.ndarray:
        """The legend (swatches and names on black), cached per set of classes and scale."""
        key = (class_ids, round(scale, 2))
        if key in self._legends:
            return self._legends[key]
        font = cv2.FONT_HERSHEY_SIMPLEX
        (_, text_h), _ = cv2.getTextSize("Ag", font, scale, 1)
        row, pad, swatch = text_h + 8, 6, text_h + 2
        widths = [cv2.getTextSize(self._name(i), font, scale, 1)[0][0] for i in class_ids]
        width = pad * 3 + swatch + max(widths, default=0)
        height = pad * 2 + row * len(class_ids)
        image = np.zeros((height, width, 3), np.uint8)
        palette = self._lut[list(class_ids), 0]
        for k, class_id in enumerate(class_ids):
            y = pad + k * row
            colour = tuple(int(c) for c in palette[k])
            cv2.rectangle(image, (pad, y + 2), (pad + swatch, y + 2 + swatch), colour, -1)
            cv2.rectangle(image, (pad, y + 2), (pad + swatch, y + 2 + swatch), (255, 255, 255), 1)
            cv2.putText(image, self._name(class_id), (2 * pad + swatch, y + 2 + text_h), font,
                        scale, (255, 255, 255), 1, cv2.LINE_AA)
        self._legends[key] = image
        return image

    def _paste_legend(self, canvas: np.ndarray, labels: np.ndarray, scale: float) -> None:
        class_ids = self._legend_ids(labels)
        if not class_ids:
            return
        image = self.legend(class_ids, scale)
        h, w = min(image.shape[0], canvas.shape[0]), min(image.shape[1], canvas.shape[1])
        region = canvas[canvas.shape[0] - h :, canvas.shape[1] - w :]
        # A dark, see-through box: the scene stays visible behind the legend.
        region[:] = cv2.addWeighted(region, 0.35, image[:h, :w], 1.0, 0)

    def _draw_hud(self, canvas: np.ndarray, text: str, scale: float) -> None:
        font = cv2.FONT_HERSHEY_SIMPLEX
        (_, text_h), baseline = cv2.getTextSize(text, font, scale, 1)
        band = min(canvas.shape[0], text_h + baseline + 8)
        canvas[:band] = canvas[:band] // 3
        cv2.putText(canvas, text, (6, 4 + text_h), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


class InstanceFrameDrawer(FrameDrawer):
    """A :class:`FrameDrawer` for an :class:`InstanceSegmenter`'s detections (not label maps)."""

    def compose(self, frame: np.ndarray, detections: dict, view: str) -> np.ndarray:
        """As :meth:`InstanceSegmenter.overlay`, the instance masks on black, or side by side."""
        if view == "overlay":
            return self.segmenter.overlay(frame, detections, self.alpha)
        if view == "mask":
            return self.segmenter.colourise(detections, frame.shape[:2])
        if view == "side":
            return np.hstack([frame, self.segmenter.colourise(detections, frame.shape[:2])])
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")

    def _legend_ids(self, detections: dict) -> tuple[int, ...]:
        known = len(self.names) if self.names else 0
        if 1 < known <= self.max_legend_classes + 1:  # every class but the background
            return tuple(range(1, known))
        present = sorted({int(c) for c in detections["classes"]})
        return tuple(present[: self.max_legend_classes])


# ----------------------------------------------------------------------------------- timings


class StageTimes:
    """Per-frame stage times (ms), with the rolling figures the heads-up line shows."""

    def __init__(self):
        self.ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self._done: deque[float] = deque(maxlen=_HUD_WINDOW)

    def add(self, times: dict[str, float], done: float) -> None:
        for stage in STAGES:
            self.ms[stage].append(times[stage])
        self._done.append(done)

    def __len__(self) -> int:
        return len(self.ms["total"])

    def hud(self) -> str:
        if len(self._done) < 2:
            return "measuring..."
        fps = (len(self._done) - 1) / max(self._done[-1] - self._done[0], 1e-9)
        recent = {s: float(np.median(v[-_HUD_WINDOW:])) for s, v in self.ms.items()}
        return (
            f"{fps:.1f} fps | cap {recent['capture']:.1f} pre {recent['preprocess']:.1f} "
            f"inf {recent['inference']:.1f} post {recent['postprocess']:.1f} "
            f"draw {recent['draw']:.1f} ms"
        )

    def summary(self) -> dict[str, dict[str, float] | None]:
        """median and p90 of each stage over all frames (None with no frames)."""
        return {
            stage: (
                {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
                if values
                else None
            )
            for stage, values in self.ms.items()
        }


# ----------------------------------------------------------------------------------- the loop


class _Keys:
    """What the keys do (quit, pause, next view, snapshot), and what they changed."""

    def __init__(self, view: str, snapshot_dir: str | os.PathLike):
        self.view = view
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshots: list[str] = []
        self.paused_seconds = 0.0

    def handle(self, sink, drawer: FrameDrawer, canvas: np.ndarray, frame: np.ndarray,
               labels: np.ndarray, index: int) -> bool:
        """Acts on the key pressed since the last frame; True to quit."""
        action = KEYS.get(sink.poll_key())
        if action == "pause":
            action = self._pause(sink, drawer, canvas, frame, labels, index)
        if action == "view":
            self._next_view()
        elif action == "snapshot":
            self._snapshot(canvas, index)
        return action == "quit"

    def _pause(self, sink, drawer, canvas, frame, labels, index) -> str | None:
        """Shows the frame until space or quit; "quit" or None (resume)."""
        started = time.perf_counter()
        while (action := KEYS.get(sink.poll_key())) not in ("quit", "pause"):
            if action == "view":
                self._next_view()
                canvas = drawer.draw(frame, labels, self.view, "paused")
                sink.write(canvas)
            elif action == "snapshot":
                self._snapshot(canvas, index)
            else:
                time.sleep(0.03)
        self.paused_seconds += time.perf_counter() - started
        return "quit" if action == "quit" else None

    def _next_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]

    def _snapshot(self, canvas: np.ndarray, index: int) -> None:
        name = f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-{index:06d}.png"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        write_image(self.snapshot_dir / name, canvas)
        self.snapshots.append(str(self.snapshot_dir / name))


def _segmenter(model: Any, threads: int | None, resize: str) -> Segmenter | InstanceSegmenter:
    if isinstance(model, Segmenter | InstanceSegmenter):
        return model
    if isinstance(model, str | os.PathLike):
        model = load_predictor(model, threads=threads)
    if is_instance_model(model):  # Mask R-CNN: its own square padding, whatever ``resize`` says
        return InstanceSegmenter(model)
    return Segmenter(model, resize=resize)  # a predictor object


def _describe(thing: Any) -> str:
    """A spec, a path, or what an object is, for the summary."""
    if thing is None:
        return "none"
    if isinstance(thing, int):
        return str(thing)
    if isinstance(thing, str | os.PathLike):
        return os.fspath(thing)
    if isinstance(thing, Segmenter | InstanceSegmenter):
        thing = thing.predictor
    return str(getattr(thing, "spec", None) or getattr(thing, "path", None)
               or type(thing).__name__)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Writes JSON to a temporary file beside ``path`` and renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temp, path)


def run_demo(
    model: Any,
    source: Any,
    output: Any = "none",
    alpha: float = 0.5,
    view: str = "overlay",
    max_frames: int | None = None,
    summary_path: str | os.PathLike | None = None,
    threads: int | None = None,
    resize: str = "resize",
    show_hud: bool = True,
    record_frames: bool = False,
    snapshot_dir: str | os.PathLike = ".",
    queue_size: int = 1,
    print_summary: bool = True,
) -> dict:
    """Segments a source's frames into a sink until the stream ends, q, Ctrl-C or ``max_frames``.

    Args:
        model: a model file (.tflite, .onnx, .keras), a predictor, a :class:`Segmenter` or an
            :class:`InstanceSegmenter` (chosen for an instance model's file or predictor).
        source: a source spec (see :func:`edgeseg.video.open_source`), an open source, or any
            iterable of uint8 RGB frames.
        output: a sink spec (see :func:`edgeseg.video.open_sink`) or an open sink.
        alpha: the class colours' weight in the overlay, 0 to 1.
        view: "overlay", "mask" or "side" (the frame and the colour mask side by side).
        max_frames: stop after this many frames (default: the whole stream).
        summary_path: where to write the summary as JSON (atomically).
        threads: CPU threads for the model's runtime.
        resize: "resize" or "letterbox" (see :class:`Segmenter`; instance models always scale
            and pad to their square input).
        show_hud: draw the legend and the heads-up line of fps and stage times.
        record_frames: add every frame's stage times to the summary (``per_frame_ms``).
        snapshot_dir: where the s key saves snapshots.
        queue_size: frames captured and preprocessed ahead of inference (files and folders).
        print_summary: print the summary at the end.

    Returns:
        The summary: frames, dropped, skipped, reopened, fps (end to end), inference_fps (1000 /
        median inference ms), stages_ms ({stage: {median, p90}}), source, model, output,
        wall_seconds, and how the run ended (ended_by, error); for an instance model also
        instances (the mean number per frame).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be 0 or more, got {max_frames}")

    t_start = time.perf_counter()
    times = StageTimes()
    keys = _Keys(view, snapshot_dir)
    ended_by, error, unexpected = "end of stream", None, None
    loop_start = loop_end = None
    frame_size = None
    instance_counts: list[int] = []

    with ExitStack() as stack:
        segmenter = _segmenter(model, threads, resize)
        if isinstance(source, str | int | os.PathLike):
            src = open_source(source if isinstance(source, int) else os.fspath(source))
        else:
            src = source
        stack.callback(getattr(src, "close", lambda: None))
        if output is None or isinstance(output, str | os.PathLike):
            sink = open_sink(None if output is None else os.fspath(output))
        else:
            sink = output
        stack.callback(sink.close)
        instance_model = isinstance(segmenter, InstanceSegmenter)
        drawer_class = InstanceFrameDrawer if instance_model else FrameDrawer
        drawer = drawer_class(segmenter, alpha=alpha, show_hud=show_hud)
        startup_seconds = time.perf_counter() - t_start

        loop_start = time.perf_counter()
        prefetcher = _Prefetcher(src, segmenter, depth=queue_size)
        stack.callback(prefetcher.stop, src)  # runs before the source's close
        try:
            while max_frames is None or len(times) < max_frames:
                item = prefetcher.get()
                if item is None:
                    break
                t2 = time.perf_counter()
                output_batch = segmenter.infer(item.batch)
                t3 = time.perf_counter()
                labels = segmenter.postprocess(output_batch, item.geometry)
                t4 = time.perf_counter()
                canvas = drawer.draw(item.frame, labels, keys.view, times.hud())
                t5 = time.perf_counter()
                sink.write(canvas)
                t6 = time.perf_counter()
                times.add(
                    {
                        "capture": item.capture_ms,
                        "preprocess": item.preprocess_ms,
                        "inference": 1e3 * (t3 - t2),
                        "postprocess": 1e3 * (t4 - t3),
                        "draw": 1e3 * (t5 - t4),
                        "output": 1e3 * (t6 - t5),
                        "total": 1e3 * (t6 - item.started),
                    },
                    done=t6,
                )
                frame_size = [item.frame.shape[1], item.frame.shape[0]]
                if instance_model:
                    instance_counts.append(len(labels["scores"]))
                loop_end = t6

                if keys.handle(sink, drawer, canvas, item.frame, labels, len(times)):
                    ended_by = "quit key"
                    break
            else:
                ended_by = "max frames"
        except KeyboardInterrupt:
            ended_by = "interrupted (Ctrl-C)"
        except SourceError as failure:
            ended_by, error = "source failed", str(failure)
        except Exception as failure:  # reported in the summary, then raised again
            ended_by, error, unexpected = "error", f"{type(failure).__name__}: {failure}", failure
        loop_end = loop_end or time.perf_counter()
    # The source and the sink are closed here: the video file is in place, the counts final.

    wall = loop_end - loop_start
    active = max(wall - keys.paused_seconds, 1e-9)
    stages = times.summary()
    inference = stages["inference"]
    summary = {
        "source": _describe(source),
        "model": _describe(model),
        "output": _describe(output),
        "view": keys.view,
        "frames": len(times),
        "dropped": int(getattr(src, "dropped", 0)) + prefetcher.discarded,
        "skipped": int(getattr(src, "skipped", 0)),
        "reopened": int(getattr(src, "reopened", 0)),
        "fps": len(times) / active if len(times) else 0.0,
        "inference_fps": 1e3 / inference["median"] if inference else None,
        "stages_ms": stages,
        "wall_seconds": wall,
        "paused_seconds": keys.paused_seconds,
        "startup_seconds": startup_seconds,
        "frame_size": frame_size,
        "model_input": list(segmenter.input_size),
        "frames_written": int(getattr(sink, "frames", 0)),
        "snapshots": keys.snapshots,
        "ended_by": ended_by,
        "error": error,
    }
    if instance_model:
        summary["instances"] = float(np.mean(instance_counts)) if instance_counts else 0.0
    if record_frames:
        summary["per_frame_ms"] = times.ms
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    if print_summary:
        print(format_summary(summary, summary_path))
    if unexpected is not None:
        raise unexpected
    return summary


def format_summary(summary: dict, summary_path: str | os.PathLike | None = None) -> str:
    """The summary as a few lines of text."""
    inference_fps = summary["inference_fps"]
    lines = [
        f"{summary['frames']} frames in {summary['wall_seconds']:.1f} s: "
        f"{summary['fps']:.1f} fps end to end"
        + (f", {inference_fps:.1f} fps inference only" if inference_fps else ""),
        f"dropped {summary['dropped']}, skipped {summary['skipped']}, "
        f"reopened {summary['reopened']}; ended by {summary['ended_by']}",
    ]
    if summary["error"]:
        lines.append(f"error: {summary['error']}")
    if summary["frames"]:
        lines.append(f"{'stage (ms)':12s} {'median':>8s} {'p90':>8s}")
        for stage, stats in summary["stages_ms"].items():
            lines.append(f"{stage:12s} {stats['median']:8.2f} {stats['p90']:8.2f}")
    if summary_path is not None:
        lines.append(f"summary written to {summary_path}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``edgeseg demo`` options, on an existing parser (the CLI's sub-command)."""
    parser.add_argument("--model", required=True, help="model file: .tflite, .onnx or .keras")
    parser.add_argument(
        "--source", required=True,
        help="0 or /dev/video0 (camera), rtsp://... (stream), clip.mp4, frames/, or "
        "synthetic[?size=640x360&fps=30&frames=300&live=0]",
    )
    parser.add_argument(
        "--output", default="display",
        help="display (default; without a display: a message, then none), out.mp4, out.avi, "
        "frames/, or none",
    )
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
    """Runs the demo for parsed arguments; the exit status (0 ok, 1 the source failed, 2 bad
    arguments or files)."""
    try:
        summary = run_demo(
            args.model,
            args.source,
            output=args.output,
            alpha=args.alpha,
            view=args.view,
            max_frames=args.max_frames,
            summary_path=args.summary,
            threads=args.threads,
            resize=args.resize,
            show_hud=not args.no_hud,
            snapshot_dir=args.snapshot_dir,
        )
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
