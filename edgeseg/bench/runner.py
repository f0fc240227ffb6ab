"""The benchmark loop: every artifact at every frame size, one JSON row each.

``benchmark(["enet.tflite", "enet.onnx"])`` loads each model once and, for each camera frame
size, times the runtime's whole path (``Segmenter``: resize and normalise, the model, argmax and
resize back) on a deterministic synthetic frame: a few warm-up frames, then timed frames until
both ``runs`` frames and ``min_seconds`` have passed. A model that fails to load or run gives a
row with ``error`` set, never an exception (Ultralytics' ``yolo benchmark`` does the same), so one
broken export does not lose the others' numbers.

Exported models have a fixed input size, so "size" is the size of the camera frame, which the
runtime resizes to the model input; rows record both (``size`` and ``model_input``). To compare
resolutions of the network itself (as the ENet paper's table does), export one model per size
and name them with the size: an artifact ``"enet_{size}.tflite"`` (a pattern) or a directory
holding ``enet_480x320.tflite``, ``enet_640x360.tflite``... picks the file made for each size.

Row schema (one JSON object per line of the results file):

- ``model``: metadata ``model`` or the file's stem; ``artifact``: path; ``format``: keras /
  tflite / onnx; ``quant``: metadata ``quant`` (None if unknown)
- ``size``: frame "WxH"; ``model_input``: "WxH"; ``resize``: resize / letterbox; ``threads``
- ``device``: :func:`~edgeseg.bench.fingerprint.device_fingerprint`
- ``latency_ms``: ``{preprocess, inference, postprocess, total}``, each
  :func:`~edgeseg.bench.stats.latency_stats` (median, mean, p90, p99, std, min)
- ``fps``: 1000 / median total; ``runs``: timed frames; ``warmup``
- ``load_ms``: loading the model; ``first_ms``: the first (cold) frame
- ``peak_rss_mb``: the process's peak resident memory so far (``ru_maxrss``). It never goes
  down, so a row also carries the peaks of the rows before it: run one artifact per process
  for a per-model figure.
- ``model_bytes``: file size; ``error``: None, or what went wrong (then the statistics are
  None); ``timestamp``: UTC ISO 8601; ``edgeseg_version``
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

import edgeseg
from edgeseg.bench.fingerprint import device_fingerprint
from edgeseg.bench.stats import fps, latency_stats
from edgeseg.io import parse_size

# The ENet paper's resolutions (TX1: 480x320, 640x360, 1280x720; Titan X up to 1920x1080).
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((480, 320), (640, 360), (1280, 720), (1920, 1080))
STAGES = ("preprocess", "inference", "postprocess", "total")
SIZE_PATTERN = re.compile(r"(?<![0-9])(\d+)x(\d+)(?![0-9])")


# --- sizes and artifacts ------------------------------------------------------------------------


def parse_sizes(texts: str | Iterable[str]) -> list[tuple[int, int]]:
    """``"480x320,640x360"`` or ``["480x320", "640x360"]`` -> a list of (W, H)."""
    if isinstance(texts, str):
        texts = texts.split(",")
    return [parse_size(t) for t in texts if str(t).strip()]


def size_label(size: Sequence[int] | None) -> str | None:
    return None if size is None else f"{int(size[0])}x{int(size[1])}"


def resolve_artifacts(
    artifacts: Iterable[str | os.PathLike], sizes: Sequence[tuple[int, int]]
) -> list[tuple[Path, tuple[int, int]]]:
    """The (artifact, frame size) pairs to run, in order.

    - a file: at every size;
    - a pattern with ``{size}`` (``"enet_{size}.tflite"``): at each size, the file named with it
      (``enet_640x360.tflite``); a missing one is still listed, and its row reports the error;
    - a directory: each model file in it (.keras / .tflite / .onnx) whose name holds a size
      (``..._640x360...``) at that size only, if it is among ``sizes``; a file without a size in
      its name at every size. A size that no file matches is listed with the directory itself
      so that its row says so.
    """
    from edgeseg.runtime import FORMATS_BY_SUFFIX

    sizes = [(int(size[0]), int(size[1])) for size in sizes]
    jobs: list[tuple[Path, tuple[int, int]]] = []
    for artifact in artifacts:
        text = os.fspath(artifact)
        if "{size}" in text:
            jobs += [(Path(text.format(size=size_label(size))), size) for size in sizes]
            continue
        path = Path(text).expanduser()
        if not path.is_dir():
            jobs += [(path, size) for size in sizes]
            continue
        models = sorted(
            p for p in path.iterdir() if p.suffix in FORMATS_BY_SUFFIX and p.is_file()
        )
        found = []
        for model in models:  # file by file, so that each model is loaded once
            tagged = SIZE_PATTERN.search(model.stem)
            tag = (int(tagged.group(1)), int(tagged.group(2))) if tagged else None
            found += [(model, size) for size in sizes if tag is None or tag == size]
        missing = [size for size in sizes if all(size != s for _, s in found)]
        jobs += found + [(path, size) for size in missing]
    return jobs


def synthetic_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 frame: smooth colour gradients with noise (camera-like
    statistics, so that no runtime takes a shortcut on a constant image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            255 * x / max(1, width - 1),
            255 * y / max(1, height - 1),
            128 + 96 * np.sin(x / 23 + y / 37),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# --- measuring ----------------------------------------------------------------------------------


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process, in MiB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def artifact_bytes(path: Path) -> int | None:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


def benchmark(
    artifacts: Iterable[str | os.PathLike],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    min_seconds: float = 2.0,
    resize: str = "resize",
    fingerprint: dict | None = None,
) -> Iterator[dict]:
    """Benchmarks each artifact at each frame size; yields one row per pair as it finishes.

    Args:
        artifacts: model files, ``{size}`` patterns or directories (see :func:`resolve_artifacts`).
        sizes: camera frame sizes (W, H).
        threads: CPU threads for LiteRT / onnxruntime (None: the runtime's default).
        warmup: untimed frames before timing (the first frame is reported as ``first_ms``).
        runs, min_seconds: timing goes on until both are reached.
        resize: the Segmenter's "resize" or "letterbox".
        fingerprint: the device description; measured once when None.
    """
    if runs < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, min_seconds >= 0; got runs={runs}, warmup={warmup}, "
            f"min_seconds={min_seconds}"
        )
    sizes = [tuple(int(v) for v in size) for size in sizes]
    device = fingerprint if fingerprint is not None else device_fingerprint()
    loaded: dict[Path, tuple[object, float] | Exception] = {}
    for path, size in resolve_artifacts(artifacts, sizes):
        if path not in loaded:
            # One model at a time in memory: the previous one is released before loading.
            loaded.clear()
            loaded[path] = _load(path, threads)
        yield _benchmark_one(
            path, size, loaded[path], threads, warmup, runs, min_seconds, resize, device
        )


def _load(path: Path, threads: int | None):
    from edgeseg.runtime import load_predictor

    started = time.perf_counter()
    try:
        if path.is_dir():
            raise FileNotFoundError(f"{path}: no model file for this size in the directory")
        predictor = load_predictor(path, threads=threads)
    except Exception as error:  # a broken artifact is a result, not a crash
        return error
    return predictor, 1e3 * (time.perf_counter() - started)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _benchmark_one(path, size, loaded, threads, warmup, runs, min_seconds, resize, device) -> dict:
    from edgeseg.runtime import FORMATS_BY_SUFFIX, InstanceSegmenter, Segmenter

    row = {
        "model": path.stem,
        "artifact": str(path),
        "format": FORMATS_BY_SUFFIX.get(path.suffix),
        "quant": None,
        "size": size_label(size),
        "model_input": None,
        "resize": resize,
        "threads": threads,
        "device": device,
        "latency_ms": None,
        "fps": None,
        "runs": 0,
        "warmup": warmup,
        "load_ms": None,
        "first_ms": None,
        "peak_rss_mb": None,
        "model_bytes": artifact_bytes(path) if path.exists() else None,
        "error": None,
        "timestamp": None,
        "edgeseg_version": edgeseg.__version__,
    }
    if isinstance(loaded, Exception):
        return _finish(row, _describe(loaded))
    try:
        predictor, load_ms = loaded
        row["model"] = predictor.artifact.family or row["model"]
        row["quant"] = predictor.artifact.quant
        row["load_ms"] = round(load_ms, 3)
        row["format"] = predictor.format
        row["model_input"] = size_label(predictor.input_size)
        if predictor.task == "instance":  # letterboxed to its square input, detections
            segmenter = InstanceSegmenter(predictor)
            row["resize"] = "letterbox"
        else:
            segmenter = Segmenter(predictor, resize=resize)
        frame = synthetic_frame(*size)
        times = _time_frames(segmenter, frame, warmup, runs, min_seconds)
        row["first_ms"] = round(times.pop("first"), 3)
        # Rounded to 0.1 us, far below the run-to-run spread.
        row["latency_ms"] = {
            stage: {name: round(value, 4) for name, value in latency_stats(times[stage]).items()}
            for stage in STAGES
        }
        row["fps"] = round(fps(row["latency_ms"]["total"]["median"]), 3)
        row["runs"] = len(times["total"])
    except Exception as error:  # a failure is a row, not a crash
        return _finish(row, _describe(error))
    return _finish(row, None)


def _finish(row: dict, error: str | None) -> dict:
    row["error"] = error
    peak = peak_rss_mb()
    row["peak_rss_mb"] = None if peak is None else round(peak, 1)
    row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return row


def _time_frames(segmenter, frame, warmup: int, runs: int, min_seconds: float) -> dict:
    started = time.perf_counter()
    segmenter(frame)
    first = 1e3 * (time.perf_counter() - started)
    for _ in range(max(0, warmup - 1)):
        segmenter(frame)
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    started = time.perf_counter()
    while len(times["total"]) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        segmenter(frame)
        times["total"].append(1e3 * (time.perf_counter() - t0))
        for stage, ms in segmenter.last_timings.items():
            times[stage].append(ms)
    return {"first": first, **times}


# --- results file -------------------------------------------------------------------------------


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> list[dict]:
    """Appends each row to a JSON-lines file as soon as it arrives, and returns the rows.

    Each row is one ``write`` of one line followed by flush and fsync, so a run that is killed
    (or a board that loses power) keeps every row finished before it.
    """
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        line = json.dumps(row, allow_nan=False) + "\n"
        with open(path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        written.append(row)
    return written


def format_row(row: dict) -> str:
    """One line for the console: model, format, size, median total, fps, or the error."""
    head = f"{row.get('model')} [{row.get('format')}] {row.get('size')}"
    if row.get("error"):
        return f"{head}: FAILED {row['error']}"
    latency = row["latency_ms"]
    return (
        f"{head} (input {row.get('model_input')}): {latency['total']['median']:.2f} ms median "
        f"({row['fps']:.1f} fps), inference {latency['inference']['median']:.2f} ms, "
        f"p90 {latency['total']['p90']:.2f} ms, {row['runs']} runs"
    )
