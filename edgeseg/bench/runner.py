"""The benchmark loop: every artifact at every frame size, precision and thread count, one JSON
row each.

``benchmark(["enet.tflite", "enet.onnx"])`` times, for each camera frame size and thread count,
the runtime's whole path (``Segmenter``: resize and normalise, the model, argmax and resize back)
on a deterministic synthetic frame: a few warm-up frames, then timed frames until both ``runs``
frames and ``min_seconds`` have passed. Each (artifact, size, precision, threads) runs in its
own fresh Python process (:mod:`edgeseg.bench.worker`), so that its load time, first frame and
peak memory are its own: a .tflite row after a .keras row carries no TensorFlow. This process
never imports TensorFlow or a model runtime. A model that fails to load or run, or a process
that crashes or is killed, gives a row with ``error`` set, never an exception (Ultralytics'
``yolo benchmark`` does the same), so one broken export does not lose the others' numbers.

Precisions: a .keras model runs on the active Keras backend (compiled, on the first GPU that
backend sees) at each precision asked: "fp32", or "bf16" / "fp16" compute through Keras' mixed
dtype policy (:data:`edgeseg.runtime.predictor.PRECISIONS`). A .tflite, .onnx or .engine file
runs at the precision it was exported at: it gives its rows for "fp32" only, and a sweep that
asks it for another precision gives no row for that one (one warning per file says so).

Sizes: ``size`` is the camera frame and ``model_input`` the size the network ran at. With
``model_size="artifact"`` (the default) the frame is resized to the model's own input, as an
application does. With ``model_size="frame"`` the network runs at the frame's size, as in the
ENet paper's table: a fully convolutional .keras model is rebuilt at that size with the same
weights (by its registry name and the options in its run.json), a .tflite is resized
(``resize_tensor_input``) where its graph allows, an .onnx with dynamic input dimensions takes
the frame as it is. Where that cannot be, the row runs at the artifact's size and says so in
``note``. To compare resolutions of exported models, export one per size and name them with
it: an artifact ``"enet_{size}.tflite"`` (a pattern) or a directory holding
``enet_480x320.tflite``, ``enet_640x360.tflite``... picks the file made for each size.

Row schema (one JSON object per line of the results file):

- ``model``: metadata ``model`` or the file's stem; ``artifact``: path; ``format``: keras /
  tflite / onnx; ``quant``: metadata ``quant`` (None if unknown)
- ``size``: frame "WxH"; ``model_input``: the network's input "WxH" as it ran;
  ``model_size``: "artifact" or "frame" (what was asked); ``note``: None, or why the network
  did not run at the size asked; ``resize``: resize / letterbox; ``threads``: an int, or None
  for the runtime's default
- ``batch``: images per inference call, 1 (frames are segmented one at a time); rows of
  ``benchmarks/gpu/bench_jax.py`` may have more
- ``precision``: for .keras rows what the model computed in, as the predictor states it:
  "fp32 (matmul precision: default)", "fp32 (matmul precision: default, TF32 on this GPU)",
  "bf16 (mixed_bfloat16)"; None for other formats (their ``quant`` says it);
  ``compute_dtype``: for .keras rows the compute dtype(s) of the layers that hold weights, read
  from the model that ran ("bfloat16"; "bfloat16, float32" where some layers keep float32)
- ``backend``: for .keras rows the Keras backend ("jax", "tensorflow"), else None;
  ``compute_device``: for .keras rows where that backend ran the model
  (:func:`edgeseg.runtime.predictor.keras_device`: ``platform``, ``name`` and for a GPU
  ``memory_mib``, ``driver``, ``compute_capability``), else None
- ``device``: the machine, :func:`~edgeseg.bench.fingerprint.device_fingerprint`
- ``latency_ms``: ``{preprocess, inference, postprocess, total}``, each
  :func:`~edgeseg.bench.stats.latency_stats` (median, mean, p90, p99, std, min)
- ``fps``: 1000 / median total; ``runs``: timed frames; ``warmup``
- ``load_ms``: loading the model in a fresh process (a .keras file's includes importing
  TensorFlow); ``first_ms``: the first (cold) frame
- ``peak_rss_mb``: the peak resident memory of the row's own process (Linux: ``VmHWM``, which
  unlike ``ru_maxrss`` does not inherit the parent's peak across ``exec``);
  ``tensorflow_loaded``: whether TensorFlow was imported in that process
- ``runtime``: what ran the model, with its version: "ai-edge-litert 2.3.0" or
  "tflite-runtime 2.14.0" (a .tflite's interpreter, as pip names it), "onnxruntime 1.22.0
  (CPUExecutionProvider)", "keras 3.10.0 (jax 0.6.2 backend, gpu NVIDIA H200)"
- ``graph_nodes``, ``xnnpack_partitions``, ``ops_outside_delegate``: for .tflite, how LiteRT
  runs the graph (:func:`edgeseg.runtime_tflite.delegation`): the model's operators, the
  delegate's partitions (1 is one XNNPACK subgraph for the whole model), and
  ``{operator: count}`` left to LiteRT's reference kernels (``{}`` when XNNPACK runs all of
  it); None for other formats
- ``xnnpack``: for .tflite, whether XNNPACK ran the graph's convolutions (at least one
  partition and no convolution outside it; :func:`edgeseg.runtime_tflite.xnnpack_ran_graph`);
  None for other formats
- ``warnings``: what the runtime warned of the model (an int8 model whose convolutions run
  outside XNNPACK); given again, once per artifact, in the process that runs the benchmark
- ``model_bytes``: file size; ``error``: None, or what went wrong (then the statistics are
  None); ``timestamp``: UTC ISO 8601; ``edgeseg_version``
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

import edgeseg
from edgeseg.bench.fingerprint import device_fingerprint
from edgeseg.io import parse_size

# The ENet paper's resolutions (TX1: 480x320, 640x360, 1280x720; Titan X up to 1920x1080).
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((480, 320), (640, 360), (1280, 720), (1920, 1080))
STAGES = ("preprocess", "inference", "postprocess", "total")
SIZE_PATTERN = re.compile(r"(?<![0-9])(\d+)x(\d+)(?![0-9])")
MODEL_SIZES = ("artifact", "frame")
FIXED_INPUT_NOTE = "the graph has a fixed input; ran at {size}"
DEFAULT_PRECISION = "fp32"


class PrecisionSkippedWarning(UserWarning):
    """A sweep asked a file that runs as exported (.tflite, .onnx) for a precision other than
    fp32: that row is not measured."""


# --- sizes, threads and artifacts ---------------------------------------------------------------


def parse_sizes(texts: str | Iterable[str]) -> list[tuple[int, int]]:
    """``"480x320,640x360"`` or ``["480x320", "640x360"]`` -> a list of (W, H)."""
    if isinstance(texts, str):
        texts = texts.split(",")
    return [parse_size(t) for t in texts if str(t).strip()]


def parse_threads(threads: int | str | Iterable[int] | None) -> list[int | None]:
    """``4``, ``"1,2,4"`` or ``[1, 2, 4]`` -> the thread counts to sweep; None -> ``[None]``
    (the runtime's default)."""
    if threads is None:
        return [None]
    if isinstance(threads, str):
        texts = [t.strip() for t in threads.split(",") if t.strip()]
        if not texts or not all(t.isdigit() for t in texts):
            raise ValueError(f"threads must be a number or a comma list such as 1,2,4; got "
                             f"{threads!r}")
        threads = [int(t) for t in texts]
    elif isinstance(threads, int):
        threads = [threads]
    counts = list(threads)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(f"thread counts must be positive integers; got {threads!r}")
    return counts


def parse_precisions(precisions: str | Iterable[str] | None) -> list[str]:
    """``"fp32,bf16"`` or ``["fp32", "bf16"]`` -> the precisions to sweep, each one of
    :data:`edgeseg.runtime.predictor.PRECISIONS`; None -> ``["fp32"]``."""
    from edgeseg.runtime.predictor import PRECISIONS

    if precisions is None:
        return [DEFAULT_PRECISION]
    texts = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    names = [str(t).strip() for t in texts if str(t).strip()]
    unknown = [name for name in names if name not in PRECISIONS]
    if not names or unknown:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)} (or a comma list of them, such as "
            f"fp32,bf16); got {', '.join(map(repr, unknown)) if unknown else repr(precisions)}"
        )
    return list(dict.fromkeys(names))  # each once, in the order given


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
    from edgeseg.artifacts import FORMATS_BY_SUFFIX

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
        for model in models:
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


def artifact_bytes(path: Path) -> int | None:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


# --- rows ---------------------------------------------------------------------------------------


def new_row(path: Path, job: dict) -> dict:
    """A row of the schema with what is known before the model is loaded; the rest None."""
    from edgeseg.artifacts import FORMATS_BY_SUFFIX

    fmt = FORMATS_BY_SUFFIX.get(path.suffix)
    return {
        "model": path.stem,
        "artifact": str(path),
        "format": fmt,
        "quant": None,
        "size": size_label(job["size"]),
        "model_input": None,
        "model_size": job["model_size"],
        "note": None,
        "resize": job["resize"],
        "threads": job["threads"],
        "batch": 1,
        # What was asked ("bf16"), until the worker's predictor says what ran.
        "precision": job.get("precision", DEFAULT_PRECISION) if fmt == "keras" else None,
        "compute_dtype": None,
        "backend": None,
        "compute_device": None,
        "device": job["device"],
        "latency_ms": None,
        "fps": None,
        "runs": 0,
        "warmup": job["warmup"],
        "load_ms": None,
        "first_ms": None,
        "peak_rss_mb": None,
        "tensorflow_loaded": None,
        "runtime": None,
        "graph_nodes": None,
        "xnnpack_partitions": None,
        "ops_outside_delegate": None,
        "xnnpack": None,
        "warnings": [],
        "model_bytes": artifact_bytes(path) if path.exists() else None,
        "error": None,
        "timestamp": None,
        "edgeseg_version": edgeseg.__version__,
    }


def finish_row(row: dict, error: str | None) -> dict:
    row["error"] = error
    row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return row


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --- the loop -----------------------------------------------------------------------------------


def benchmark(
    artifacts: Iterable[str | os.PathLike],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    threads: int | str | Iterable[int] | None = None,
    precisions: str | Iterable[str] | None = None,
    warmup: int = 3,
    runs: int = 20,
    min_seconds: float = 2.0,
    resize: str = "resize",
    fingerprint: dict | None = None,
    model_size: str = "artifact",
    timeout: float | None = None,
) -> Iterator[dict]:
    """Benchmarks each artifact at each frame size, precision and thread count, each in a fresh
    process; yields one row per combination as it finishes.

    Args:
        artifacts: model files, ``{size}`` patterns or directories (see :func:`resolve_artifacts`).
        sizes: camera frame sizes (W, H).
        threads: CPU threads for LiteRT / onnxruntime: one count, or several to sweep
            (``[1, 2, 4]`` or ``"1,2,4"``); None: the runtime's default.
        precisions: what a .keras model computes in: "fp32", "bf16", "fp16", or several to
            sweep (``"fp32,bf16"``); None: fp32. Other formats run at the precision they were
            exported at: only their fp32 rows run, and a warning names each file skipped for
            another precision.
        warmup: untimed frames before timing (the first frame is reported as ``first_ms``).
        runs, min_seconds: timing goes on until both are reached.
        resize: the Segmenter's "resize" or "letterbox".
        fingerprint: the device description; measured once when None.
        model_size: "artifact" (the network runs at the model's own input; the frame is resized
            to it) or "frame" (the network runs at the frame's size where the model allows; see
            the module docstring).
        timeout: seconds one row's process may run before it is stopped (its row then says
            so); None: no limit.
    """
    if runs < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, min_seconds >= 0; got runs={runs}, warmup={warmup}, "
            f"min_seconds={min_seconds}"
        )
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {', '.join(MODEL_SIZES)}; got "
                         f"{model_size!r}")
    counts = parse_threads(threads)
    names = parse_precisions(precisions)
    sizes = [tuple(int(v) for v in size) for size in sizes]
    device = fingerprint if fingerprint is not None else device_fingerprint()
    skipped: set[tuple[str, str]] = set()
    for path, size in resolve_artifacts(artifacts, sizes):
        for precision in names:
            if not precision_applies(path, precision):
                if (str(path), precision) not in skipped:
                    skipped.add((str(path), precision))
                    warnings.warn(f"{path}: precision {precision} applies to .keras models; a "
                                  f"{path.suffix} file runs at the precision it was exported "
                                  f"at, so it has no {precision} rows",
                                  PrecisionSkippedWarning, stacklevel=2)
                continue
            for count in counts:
                job = {"artifact": str(path), "size": list(size), "threads": count,
                       "precision": precision, "warmup": warmup, "runs": runs,
                       "min_seconds": min_seconds, "resize": resize, "model_size": model_size,
                       "device": device}
                yield run_isolated(job, timeout)


def precision_applies(path: Path, precision: str) -> bool:
    """Whether a row at ``precision`` is measured for ``path``: every precision for a .keras
    file, fp32 only for the other model formats (they run as exported). A path whose suffix is
    no model format's (a directory without a file for the size, a typo) runs at every
    precision asked, so that its error row is there for each."""
    from edgeseg.artifacts import FORMATS_BY_SUFFIX

    fmt = FORMATS_BY_SUFFIX.get(path.suffix)
    return precision == DEFAULT_PRECISION or fmt in (None, "keras")


def worker_command() -> list[str]:
    """The command that measures one job in a fresh interpreter (job JSON and result path
    follow)."""
    return [sys.executable, "-m", "edgeseg.bench.worker"]


def run_isolated(job: dict, timeout: float | None = None) -> dict:
    """One job's row, measured by :mod:`edgeseg.bench.worker` in a fresh process.

    A file that cannot be a model (missing, unknown suffix, not what its suffix says) is
    reported without starting one; a process that fails, is killed or runs past ``timeout``
    gives an error row naming its exit status.
    """
    from edgeseg.artifacts import check_model_file

    path = Path(job["artifact"])
    row = new_row(path, job)
    try:
        if path.is_dir():
            raise FileNotFoundError(f"{path}: no model file for this size in the directory")
        check_model_file(path)
    except Exception as error:  # a broken artifact is a result, not a crash
        return finish_row(row, describe_error(error))
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as folder:
        result = Path(folder) / "row.json"
        try:
            done = subprocess.run(
                [*worker_command(), json.dumps(job), str(result)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                timeout=timeout, env=_worker_environment(),
            )
        except subprocess.TimeoutExpired:
            return finish_row(row, f"TimeoutError: the benchmark process ran past {timeout:g} s "
                                   "and was stopped")
        if done.returncode == 0 and result.is_file():
            row = json.loads(result.read_text(encoding="utf-8"))
            _warn_again(row)
            return row
        return finish_row(row, _exit_error(done.returncode, done.stderr))


def _warn_again(row: dict) -> None:
    """The runtime's warnings of the row's model, here, once per artifact (a sweep of sizes and
    threads loads it many times, each in its own process)."""
    from edgeseg.runtime_tflite import warn_once

    for message in row.get("warnings") or ():
        warn_once(message, row["artifact"], stacklevel=3)


def _worker_environment() -> dict[str, str]:
    """This environment, with the folder edgeseg was imported from first on the path (so that
    the worker runs this edgeseg even where it is not installed)."""
    env = dict(os.environ)
    root = str(Path(edgeseg.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _exit_error(returncode: int, stderr: bytes) -> str:
    from edgeseg.quiet import is_noise

    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        status = f"was killed by signal {-returncode} ({name})"
    elif returncode == 0:
        status = "exited with status 0 without writing its row"
    else:
        status = f"exited with status {returncode}"
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip() and not is_noise(line)]
    said = f": {' | '.join(lines[-3:])[-600:]}" if lines else ""
    return f"ProcessError: the benchmark process {status}{said}"


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


def graph_summary(row: dict) -> str | None:
    """How LiteRT ran a .tflite row's graph, in a few words ("1 XNNPACK partition, outside:
    PRELU x1"); None for other rows."""
    from edgeseg.runtime_tflite import delegation_summary

    partitions = row.get("xnnpack_partitions")
    if partitions is None:
        return None
    return delegation_summary(partitions, row.get("ops_outside_delegate") or {})


def format_row(row: dict) -> str:
    """One line for the console: model, format and runtime, size, precision, threads, median
    total, fps, the graph's delegation, or the error."""
    threads = f", {row['threads']} threads" if row.get("threads") else ""
    precision = f", {row['precision']}" if row.get("precision") else ""
    runtime = f", {row['runtime']}" if row.get("runtime") else ""
    head = (f"{row.get('model')} [{row.get('format')}{runtime}] {row.get('size')}{precision}"
            f"{threads}")
    if row.get("error"):
        return f"{head}: FAILED {row['error']}"
    latency = row["latency_ms"]
    graph = graph_summary(row)
    return (
        f"{head} (input {row.get('model_input')}): {latency['total']['median']:.2f} ms median "
        f"({row['fps']:.1f} fps), inference {latency['inference']['median']:.2f} ms, "
        f"p90 {latency['total']['p90']:.2f} ms, {row['runs']} runs"
        + (f"; {graph}" if graph else "")
    )
