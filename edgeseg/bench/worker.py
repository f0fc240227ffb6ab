"""One benchmark row, measured in the process that runs this module.

``python -m edgeseg.bench.worker JOB_JSON ROW_PATH`` loads one artifact at the job's
``precision``, fits it to the frame size as the job's ``model_size`` asks, times it
(:func:`measure`) and writes the row to ``ROW_PATH``. :func:`edgeseg.bench.runner.benchmark`
starts one such process per (artifact, size, precision, threads), so that what a row reports
(load time, first frame, peak memory) belongs to that artifact alone. An error of the model is
written as the row's ``error``; the exit status is not zero only when this module itself fails.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from edgeseg.bench.runner import (
    DEFAULT_PRECISION,
    FIXED_INPUT_NOTE,
    STAGES,
    describe_error,
    finish_row,
    new_row,
    size_label,
    synthetic_frame,
)
from edgeseg.bench.stats import fps, latency_stats


def measure(job: dict) -> dict:
    """The row of one job (see :func:`edgeseg.bench.runner.benchmark` for its keys)."""
    from edgeseg.runtime import InstanceSegmenter, Segmenter, load_predictor

    path = Path(job["artifact"])
    size = (int(job["size"][0]), int(job["size"][1]))
    row = new_row(path, job)
    try:
        with runtime_warnings(row["warnings"]):
            started = time.perf_counter()
            predictor = load_predictor(path, threads=job["threads"],
                                       precision=job.get("precision", DEFAULT_PRECISION))
            row["load_ms"] = round(1e3 * (time.perf_counter() - started), 3)
            row["model"] = predictor.artifact.family or row["model"]
            row["quant"] = predictor.artifact.quant
            row["format"] = predictor.format
            row["runtime"] = predictor.runtime
            predictor, row["note"] = fit_input(predictor, size, job["model_size"],
                                               job["threads"])
        row["model_input"] = size_label(predictor.input_size)
        if predictor.format == "keras":
            row["backend"] = predictor.backend
            row["compute_device"] = predictor.device
            row["precision"] = predictor.precision
            row["compute_dtype"] = compute_dtypes(predictor.model)
        if predictor.format == "tflite":
            from edgeseg.runtime_tflite import delegation, xnnpack_ran_graph

            graph = delegation(predictor.interpreter)
            row["graph_nodes"] = graph["nodes"]
            row["xnnpack_partitions"] = graph["partitions"]
            row["ops_outside_delegate"] = graph["outside"]
            row["xnnpack"] = xnnpack_ran_graph(graph)
        if predictor.task == "instance":  # letterboxed to its square input, detections
            segmenter = InstanceSegmenter(predictor)
            row["resize"] = "letterbox"
        else:
            segmenter = Segmenter(predictor, resize=job["resize"])
        times = time_frames(segmenter, synthetic_frame(*size), job["warmup"], job["runs"],
                            job["min_seconds"])
        row["first_ms"] = round(times.pop("first"), 3)
        # Rounded to 0.1 us, far below the run-to-run spread.
        row["latency_ms"] = {
            stage: {name: round(value, 4) for name, value in latency_stats(times[stage]).items()}
            for stage in STAGES
        }
        row["fps"] = round(fps(row["latency_ms"]["total"]["median"]), 3)
        row["runs"] = len(times["total"])
        error = None
    except Exception as failure:  # a failure is a row, not a crash
        error = describe_error(failure)
    peak = peak_rss_mb()
    row["peak_rss_mb"] = None if peak is None else round(peak, 1)
    row["tensorflow_loaded"] = "tensorflow" in sys.modules
    return finish_row(row, error)


@contextlib.contextmanager
def runtime_warnings(said: list[str]) -> Iterator[None]:
    """Adds to ``said`` the runtime's warnings about the model given in the block
    (:class:`~edgeseg.runtime_tflite.Int8WithoutXNNPACKWarning`), which the row carries to the
    process that reads it; other warnings are shown as usual."""
    from edgeseg.runtime_tflite import Int8WithoutXNNPACKWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Int8WithoutXNNPACKWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, Int8WithoutXNNPACKWarning):
            said.append(str(warning.message))
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)


def compute_dtypes(model) -> str:
    """The compute dtype(s) of the model's layers that hold weights, read from the model
    itself: "float32", "bfloat16", or "bfloat16, float32" where some layers keep float32."""
    import keras

    def layers(layer):
        for child in getattr(layer, "layers", ()) or ():
            yield child
            yield from layers(child)

    dtypes = {keras.backend.standardize_dtype(layer.compute_dtype) for layer in layers(model)
              if layer.weights and not getattr(layer, "layers", None)}
    return ", ".join(sorted(dtypes)) or keras.backend.standardize_dtype(model.compute_dtype)


# --- the network's input size -------------------------------------------------------------------


def fit_input(predictor, size: tuple[int, int], model_size: str, threads: int | None):
    """The predictor to time and the row's note: at the frame's ``size`` where ``model_size`` is
    "frame" and the model can run there, else at its own input size, saying why."""
    own = predictor.input_size
    if own is None:  # dynamic input dimensions: the frame as it is
        predictor.input_size = size
        note = None if model_size == "frame" else (
            f"the model takes any input size; ran at the frame's {size_label(size)}")
        return predictor, note
    if model_size != "frame" or tuple(own) == tuple(size):
        return predictor, None
    if predictor.task == "semantic" and predictor.format == "keras":
        return _keras_at(predictor, size)
    if predictor.task == "semantic" and predictor.format == "tflite":
        return _tflite_at(predictor, size, threads)
    return predictor, FIXED_INPUT_NOTE.format(size=size_label(own))


def _keras_at(predictor, size: tuple[int, int]):
    """The same weights in the model's family rebuilt at ``size`` (fully convolutional models
    take any size), by its registry name and the options in the run.json beside it; built under
    the predictor's dtype policy, so that a bf16 predictor stays bf16."""
    import keras

    from edgeseg.models import build
    from edgeseg.runtime.predictor import dtype_policy_scope

    artifact = predictor.artifact
    source = predictor.model
    width, height = size
    options = ((artifact.run or {}).get("config") or {}).get("model_options") or {}
    output = ("mask" if len(source.outputs[0].shape) == 3
              else "probs" if isinstance(source.layers[-1], keras.layers.Softmax) else "logits")
    own = size_label(predictor.input_size)
    try:
        with dtype_policy_scope(predictor.dtype_policy):
            model = build(artifact.family, artifact.num_classes, (height, width, 3),
                          output=output, **options)
    except Exception as error:
        return predictor, (f"could not rebuild {artifact.family!r} at {size_label(size)} "
                           f"({describe_error(error)}); ran at {own}")
    weights = source.get_weights()
    if [tuple(w.shape) for w in model.weights] != [tuple(w.shape) for w in weights]:
        return predictor, (f"{artifact.family!r} rebuilt at {size_label(size)} with the options "
                           f"{options or '(defaults)'} has other weights than the file (is its "
                           f"run.json beside it?); ran at {own}")
    model.set_weights(weights)
    # The predictor runs whatever model it holds: its forward pass is compiled again for this
    # one (on JAX the compiled function holds the old model's variables, not just its trace).
    predictor.model = model
    predictor.input_size = (width, height)
    predictor._forward = predictor._compiled_forward()
    return predictor, None


def _tflite_at(predictor, size: tuple[int, int], threads: int | None):
    """The interpreter resized to ``size`` where the graph allows; where its shapes are
    constants (a reshape to a fixed shape fails to allocate, or keeps the old output size), a
    fresh interpreter at its own size (a failed allocation leaves the old one unusable)."""
    from edgeseg.runtime import load_predictor

    interpreter = predictor.interpreter
    width, height = size
    detail = interpreter.get_input_details()[0]
    try:
        interpreter.resize_tensor_input(detail["index"], [1, height, width, int(detail["shape"][3])],
                                        strict=False)
        interpreter.allocate_tensors()
        output = interpreter.get_output_details()[0]["shape"]
        resized = len(output) >= 3 and (int(output[1]), int(output[2])) == (height, width)
    except (RuntimeError, ValueError):  # LiteRT's kernels say why in these
        resized = False
    if resized:
        predictor.input_size = (width, height)
        return predictor, None
    note = FIXED_INPUT_NOTE.format(size=size_label(predictor.input_size))
    return load_predictor(predictor.path, threads=threads), note


# --- measuring ----------------------------------------------------------------------------------


def time_frames(segmenter, frame, warmup: int, runs: int, min_seconds: float) -> dict:
    """The first frame's time, then each stage's time of every timed frame (ms)."""
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


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process, in MiB; None where it cannot be read.

    Linux: ``VmHWM``, the high-water mark of this process's own memory. ``ru_maxrss`` is not
    used there: across ``exec`` it keeps the peak of the process that started this one (a
    benchmark run from a process holding TensorFlow would report TensorFlow's memory).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, other systems KiB.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m edgeseg.bench.worker JOB_JSON ROW_PATH", file=sys.stderr)
        return 2
    row = measure(json.loads(argv[0]))
    Path(argv[1]).write_text(json.dumps(row, allow_nan=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
