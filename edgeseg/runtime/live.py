"""The bookkeeping of a live segmentation loop: stage times, keys, how it ended, the summary.

A demo loop stays a loop (``demos/segment_live.py``); :class:`LiveRun` is what it measures and
what the keys change::

    run = LiveRun(view="overlay")
    with (
        open_source("0") as frames,
        open_sink("display") as sink,
        Prefetcher(frames, segmenter.preprocess, infer=infer) as prefetched,  # worker threads
        run,
    ):
        while not run.finished and (item := prefetched.get()) is not None:
            run.begin_frame(item)  # its capture, preprocess and inference times
            with run.stage("postprocess"):
                result = segmenter.postprocess(item.output, item.prepared[1])
            ...
            run.end_frame(result)
            run.handle_keys(sink, drawer, canvas)
    print(format_summary(run.summary(model, "0", "display", segmenter, prefetched, sink)))

A loop that runs the model itself times it with ``run.stage("inference")`` instead.

As a context manager, a :class:`LiveRun` ends the loop cleanly on Ctrl-C, on a source failing
(``SourceError``) and on any other error, which :meth:`LiveRun.raise_error` raises again once
the summary is out.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.draw import VIEWS, FrameDrawer
from edgeseg.runtime.instances import InstanceSegmenter, is_instance_model
from edgeseg.runtime.predictor import load_predictor
from edgeseg.runtime.segmenter import RESIZE_MODES, Segmenter
from edgeseg.runtime_tflite import delegation_summary
from edgeseg.video import PrefetchedFrame, SourceError, write_image

__all__ = ["KEYS", "STAGES", "LiveRun", "StageTimes", "describe", "format_summary",
           "open_segmenter"]

STAGES = ("capture", "preprocess", "inference", "postprocess", "draw", "output", "total")
"""Per-frame stages, in ms. capture: waiting for the source's frame; draw: composing the view,
legend and heads-up line; output: the sink's write; total: capture start to output done (the
frame's latency through the pipeline, including time queued between its threads)."""
KEYS = {"q": "quit", "\x1b": "quit", " ": "pause", "m": "view", "s": "snapshot"}
HUD_WINDOW = 30  # frames the heads-up line's figures are taken over
AGE_TAIL = 0.1  # the share of frames at each end of a run whose frame ages the summary compares


def open_segmenter(model: Any, threads: int | None = None,
                   resize: str = "resize") -> Segmenter | InstanceSegmenter:
    """The segmenter for a model file, a predictor, or a segmenter (returned as it is).

    The model's task decides (``is_instance_model``: the artifact's outputs, never a name): an
    instance model runs through an :class:`InstanceSegmenter`, which pads to its square input
    whatever ``resize`` says; any other through a :class:`Segmenter`.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")
    if isinstance(model, Segmenter | InstanceSegmenter):
        return model
    if isinstance(model, str | os.PathLike):
        model = load_predictor(model, threads=threads)
    if is_instance_model(model):
        return InstanceSegmenter(model)
    return Segmenter(model, resize=resize)


def describe(thing: Any) -> str:
    """A spec, a path, or what an object is, for a summary."""
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


class StageTimes:
    """Per-frame stage times (ms), with the rolling figures the heads-up line shows."""

    def __init__(self):
        self.ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self._done: deque[float] = deque(maxlen=HUD_WINDOW)

    def add(self, times: dict[str, float], done: float) -> None:
        for stage in STAGES:
            self.ms[stage].append(times[stage])
        self._done.append(done)

    def __len__(self) -> int:
        return len(self.ms["total"])

    def recent_ms(self) -> dict[str, float]:
        """Each stage's median time over the last ``HUD_WINDOW`` frames (stages with times)."""
        # statistics.median: on 30 numbers, a tenth of np.median's cost (every frame, 7 times).
        return {s: statistics.median(v[-HUD_WINDOW:]) for s, v in self.ms.items() if v}

    def hud(self) -> str:
        """fps and median stage times over the last ``HUD_WINDOW`` frames."""
        if len(self._done) < 2:
            return "measuring..."
        fps = (len(self._done) - 1) / max(self._done[-1] - self._done[0], 1e-9)
        recent = self.recent_ms()
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


def age_percentiles(ages_ms: list[float]) -> dict[str, float] | None:
    """p50, p90 and max of frame ages in ms (None without any)."""
    if not ages_ms:
        return None
    return {"p50": float(np.percentile(ages_ms, 50)), "p90": float(np.percentile(ages_ms, 90)),
            "max": float(np.max(ages_ms))}


def frame_age_summary(ages_ms: list[float]) -> dict | None:
    """Frame ages (ms from the source reading a frame to inference starting on it): their
    percentiles over the run and over its first and last ``AGE_TAIL`` of frames, which show
    whether frames grow older as the run goes on (a queue filling up) or stay fresh."""
    if not ages_ms:
        return None
    tail = max(1, math.ceil(AGE_TAIL * len(ages_ms)))
    return {**age_percentiles(ages_ms), "first_10pct": age_percentiles(ages_ms[:tail]),
            "last_10pct": age_percentiles(ages_ms[-tail:])}


class LiveRun:
    """Stage times, the view and what the keys did, and how the loop ended.

    Args:
        view: the first view ("overlay", "mask" or "side"); the m key cycles them.
        max_frames: :attr:`finished` once this many frames are done (default: never).
        snapshot_dir: where the s key saves what is shown.
        record_frames: add every frame's stage times and age to the summary (``per_frame_ms``,
            ``per_frame_age_ms``).
    """

    def __init__(self, view: str = "overlay", max_frames: int | None = None,
                 snapshot_dir: str | os.PathLike = ".", record_frames: bool = False):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be 0 or more, got {max_frames}")
        self.view = view
        self.max_frames = max_frames
        self.snapshot_dir = Path(snapshot_dir)
        self.record_frames = record_frames
        self.times = StageTimes()
        self.snapshots: list[str] = []
        self.paused_seconds = 0.0
        self.ended_by: str | None = "max frames" if max_frames == 0 else None
        self.error: str | None = None
        self._unexpected: Exception | None = None
        self._created = time.perf_counter()
        self._loop_start = self._loop_end = self._last_done = None
        self._frame: PrefetchedFrame | None = None
        self._result: Any = None
        self._stage_ms: dict[str, float] = {}
        self.frame_size: list[int] | None = None
        self.instance_counts: list[int] = []
        self.frame_ages_ms: list[float] = []  # per frame: from its read to its inference
        self._age_ms: float | None = None

    # --- the loop -------------------------------------------------------------------------------

    def __enter__(self) -> LiveRun:
        self._loop_start = time.perf_counter()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        """Ends the run on Ctrl-C, a failing source or an error (kept for :meth:`raise_error`)."""
        self._loop_end = self._last_done or time.perf_counter()
        if error is None:
            self.ended_by = self.ended_by or "end of stream"
        elif isinstance(error, KeyboardInterrupt):
            self.ended_by = "interrupted (Ctrl-C)"
        elif isinstance(error, SourceError):
            self.ended_by, self.error = "source failed", str(error)
        elif isinstance(error, Exception):  # reported in the summary, then raised again
            self.ended_by, self.error = "error", f"{type(error).__name__}: {error}"
            self._unexpected = error
        else:
            return False
        return True

    @property
    def frames(self) -> int:
        """Frames done."""
        return len(self.times)

    @property
    def finished(self) -> bool:
        """True once the quit key was pressed or ``max_frames`` frames are done."""
        return self.ended_by is not None

    def begin_frame(self, item: PrefetchedFrame) -> None:
        """Starts timing a frame from the prefetcher (its capture and preparation times, and
        its inference time where the prefetcher ran the model)."""
        self._frame = item
        self._stage_ms = {"capture": item.capture_ms, "preprocess": item.prepare_ms}
        self._age_ms = item.age_ms
        if item.inference_ms is not None:
            self._stage_ms["inference"] = item.inference_ms

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the block as the current frame's stage ``name`` (the frame's age at inference
        too, for a loop that runs the model itself in ``stage("inference")``)."""
        start = time.perf_counter()
        if name == "inference" and self._age_ms is None and self._frame.read_at is not None:
            self._age_ms = 1e3 * (start - self._frame.read_at)
        yield
        self._last_done = time.perf_counter()
        self._stage_ms[name] = 1e3 * (self._last_done - start)

    def end_frame(self, result: Any) -> None:
        """Records the current frame's times, size and (for detections) instance count."""
        done = self._last_done
        self._stage_ms["total"] = 1e3 * (done - self._frame.started)
        self.times.add(self._stage_ms, done=done)
        if self._age_ms is not None:
            self.frame_ages_ms.append(self._age_ms)
        frame = self._frame.frame
        self.frame_size = [frame.shape[1], frame.shape[0]]
        if isinstance(result, dict) and "scores" in result:
            self.instance_counts.append(len(result["scores"]))
        self._result = result
        if self.frames == self.max_frames:
            self.ended_by = "max frames"

    def status(self) -> str:
        """The heads-up line: fps and recent stage times."""
        return self.times.hud()

    # --- keys -----------------------------------------------------------------------------------

    def handle_keys(self, sink, drawer: FrameDrawer, canvas: np.ndarray) -> None:
        """Acts on the key pressed since the last frame (``KEYS``): q or Esc quit (then
        :attr:`finished`), space pauses on the current frame, m shows the next view, s saves
        ``canvas``."""
        action = KEYS.get(sink.poll_key())
        if action == "pause":
            action = self._pause(sink, drawer, canvas)
        if action == "view":
            self._next_view()
        elif action == "snapshot":
            self._snapshot(canvas)
        elif action == "quit":
            self.ended_by = "quit key"

    def _pause(self, sink, drawer: FrameDrawer, canvas: np.ndarray) -> str | None:
        """Shows the frame until space or quit; "quit" or None (resume)."""
        started = time.perf_counter()
        while (action := KEYS.get(sink.poll_key())) not in ("quit", "pause"):
            if action == "view":
                self._next_view()
                canvas = drawer.draw(self._frame.frame, self._result, self.view, "paused")
                sink.write(canvas)
            elif action == "snapshot":
                self._snapshot(canvas)
            else:
                time.sleep(0.03)
        self.paused_seconds += time.perf_counter() - started
        return "quit" if action == "quit" else None

    def _next_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]

    def _snapshot(self, canvas: np.ndarray) -> None:
        name = f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-{self.frames:06d}.png"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        write_image(self.snapshot_dir / name, canvas)
        self.snapshots.append(str(self.snapshot_dir / name))

    # --- the end --------------------------------------------------------------------------------

    def summary(self, model: Any, source: Any, output: Any, segmenter, prefetcher=None,
                sink=None) -> dict:
        """The run in numbers, once the loop's ``with`` block is over (the sink closed).

        Args:
            model, source, output: as given to the loop (specs, paths or objects), described.
            segmenter: the segmenter that ran (its input size; instances for detections).
            prefetcher: gives the source's dropped, skipped and reopened counts, and its
                outages.
            sink: gives the frames written.

        Returns:
            source, model, output, view, frames, dropped, skipped, reopened, fps (end to end,
            pauses excluded), inference_fps (1000 / median inference ms), fps_ratio (fps /
            inference_fps: 1 when the loop runs at the model's pace), stages_ms ({stage:
            {median, p90}}), wall_seconds, paused_seconds, startup_seconds, frame_size,
            model_input, frames_written, snapshots, ended_by, error, runtime (what ran the
            model: "ai-edge-litert 2.3.0"), xnnpack (for a .tflite, whether XNNPACK ran its
            convolutions; else None), graph (for a .tflite, its delegation in a few words),
            frame_age_ms (ms from the source reading a frame to inference starting on it:
            {p50, p90, max, first_10pct, last_10pct}, the last two over the first and last
            tenth of the frames; None without ages), outage (for a live source: outages,
            reopened, seconds_without_frames, longest_gap_seconds, reconnect_seconds, as
            ``LiveSource.outage_stats``; else None); for an instance model also instances
            (the mean number per frame); with ``record_frames`` per_frame_ms and
            per_frame_age_ms.
        """
        loop_start = self._loop_start or self._created
        wall = (self._loop_end or time.perf_counter()) - loop_start
        active = max(wall - self.paused_seconds, 1e-9)
        stages = self.times.summary()
        counts = prefetcher.stats() if prefetcher is not None else {}
        fps = self.frames / active if self.frames else 0.0
        inference_ms = stages["inference"]["median"] if self.frames else 0.0
        inference_fps = 1e3 / inference_ms if inference_ms > 0 else None
        summary = {
            "source": describe(source),
            "model": describe(model),
            "output": describe(output),
            "view": self.view,
            "frames": self.frames,
            "dropped": counts.get("dropped", 0),
            "skipped": counts.get("skipped", 0),
            "reopened": counts.get("reopened", 0),
            "fps": fps,
            "inference_fps": inference_fps,
            "fps_ratio": fps / inference_fps if inference_fps else None,
            "stages_ms": stages,
            "wall_seconds": wall,
            "paused_seconds": self.paused_seconds,
            "startup_seconds": loop_start - self._created,
            "frame_size": self.frame_size,
            "model_input": list(segmenter.input_size),
            "frames_written": int(getattr(sink, "frames", 0)),
            "snapshots": self.snapshots,
            "ended_by": self.ended_by or "end of stream",
            "error": self.error,
            **runtime_summary(getattr(segmenter, "predictor", None)),
            "frame_age_ms": frame_age_summary(self.frame_ages_ms),
            "outage": getattr(prefetcher, "outage_stats", lambda: None)(),
        }
        if isinstance(segmenter, InstanceSegmenter):
            counts = self.instance_counts
            summary["instances"] = float(np.mean(counts)) if counts else 0.0
        if self.record_frames:
            summary["per_frame_ms"] = self.times.ms
            summary["per_frame_age_ms"] = self.frame_ages_ms
        return summary

    def raise_error(self) -> None:
        """Raises the unexpected error that ended the loop, if one did."""
        if self._unexpected is not None:
            error, self._unexpected = self._unexpected, None
            raise error


def runtime_summary(predictor: Any) -> dict:
    """What ran the model: ``{"runtime": "tflite-runtime 2.14.0", "xnnpack": whether XNNPACK
    ran a .tflite's convolutions, "graph": "1 XNNPACK partition, outside: ..."}``; None where
    the predictor does not say (other formats have no XNNPACK or graph)."""
    graph = getattr(predictor, "graph", None)
    xnnpack = getattr(predictor, "xnnpack", None)
    return {
        "runtime": getattr(predictor, "runtime", None),
        "xnnpack": xnnpack["ran_graph"] if xnnpack else None,
        "graph": delegation_summary(graph["partitions"], graph["outside"]) if graph else None,
    }


def format_summary(summary: dict, summary_path: str | os.PathLike | None = None) -> str:
    """The summary as a few lines of text."""
    inference_fps = summary["inference_fps"]
    lines = [
        f"{summary['frames']} frames in {summary['wall_seconds']:.1f} s: "
        f"{summary['fps']:.1f} fps end to end"
        + (f", {inference_fps:.1f} fps inference only (ratio {summary['fps'] / inference_fps:.2f})"
           if inference_fps else ""),
        f"dropped {summary['dropped']}, skipped {summary['skipped']}, "
        f"reopened {summary['reopened']}; ended by {summary['ended_by']}",
    ]
    if summary.get("runtime"):
        ran = {True: "; XNNPACK ran the convolutions", False: "; XNNPACK did not run the "
               "convolutions", None: ""}[summary.get("xnnpack")]
        graph = f" ({summary['graph']})" if summary.get("graph") else ""
        lines.append(f"runtime: {summary['runtime']}{ran}{graph}")
    outage = summary.get("outage")
    if outage and outage["outages"]:
        reconnects = [f"{s:.2f}" for s in outage["reconnect_seconds"] if s is not None]
        lines.append(
            f"outages {outage['outages']}: {outage['seconds_without_frames']:.2f} s without "
            f"frames (longest gap {outage['longest_gap_seconds']:.2f} s), reconnected after "
            + (", ".join(reconnects) + " s" if reconnects else "never")
        )
    age = summary.get("frame_age_ms")
    if age:
        lines.append(
            f"frame age at inference (ms): p50 {age['p50']:.1f}, p90 {age['p90']:.1f}, max "
            f"{age['max']:.1f}; p90 first 10% {age['first_10pct']['p90']:.1f}, last 10% "
            f"{age['last_10pct']['p90']:.1f}"
        )
    if summary["error"]:
        lines.append(f"error: {summary['error']}")
    if summary["frames"]:
        lines.append(f"{'stage (ms)':12s} {'median':>8s} {'p90':>8s}")
        for stage, stats in summary["stages_ms"].items():
            lines.append(f"{stage:12s} {stats['median']:8.2f} {stats['p90']:8.2f}")
    if summary_path is not None:
        lines.append(f"summary written to {summary_path}")
    return "\n".join(lines)
