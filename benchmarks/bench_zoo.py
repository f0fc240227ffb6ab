"""Forward-pass latency of each zoo model: Keras fp32, TFLite fp32 and TFLite int8, batch 1.

Usage:
    python benchmarks/bench_zoo.py --models enet,segnet,unet,fcn8s \
        --sizes 480x320,640x360,1280x720 --out benchmarks/results/zoo_latency_cpu.json

Each (model, size) is built with random weights (latency does not depend on them), converted
for each TFLite mode (int8 calibrated on random images), warmed up, then timed until both
``--runs`` runs and ``--min-seconds`` have passed. Results are appended as they come, so a
killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed_runs(fn, warmup: int, runs: int, min_seconds: float, max_seconds: float) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        if (len(times) >= runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            return times


def summarise(times: list[float]) -> dict:
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "runs": len(times),
        "fps": 1e3 / statistics.median(times),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="enet,segnet,unet,fcn8s")
    parser.add_argument("--sizes", default="480x320,640x360,1280x720")
    parser.add_argument("--modes", default="keras,tflite_fp32,tflite_int8")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--out", default="benchmarks/results/zoo_latency_cpu.json")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build
    from edgeseg.runtime_tflite import load_interpreter

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                   "tensorflow": tf.__version__, "keras": keras.__version__},
        "command": "python benchmarks/bench_zoo.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "rows": [],
    }
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            model = build(name, args.num_classes, (height, width, 3))
            x = rng.random((1, height, width, 3), dtype=np.float32)
            for mode in args.modes.split(","):
                row = {"model": name, "size": size, "mode": mode, "params": model.count_params()}
                try:
                    if mode == "keras":
                        infer = tf.function(lambda t, m=model: m(t, training=False))
                        tensor = tf.constant(x)
                        times = timed_runs(lambda f=infer, t=tensor: f(t).numpy(), args.warmup, args.runs,
                                           args.min_seconds, args.max_seconds)
                    else:
                        quant = "int8" if mode.endswith("int8") else "none"
                        calibration = rng.random((4, height, width, 3), dtype=np.float32)
                        blob = convert_keras_to_tflite(
                            model, quant, (lambda c=calibration: iter(c)) if quant == "int8" else None,
                            io_type="uint8" if quant == "int8" else "float32")
                        row["tflite_bytes"] = len(blob)
                        interpreter = load_interpreter(model_content=blob, num_threads=args.threads)
                        detail = interpreter.get_input_details()[0]
                        feed = (x * 255).astype(detail["dtype"]) if quant == "int8" else x
                        interpreter.set_tensor(detail["index"], feed)
                        times = timed_runs(interpreter.invoke, args.warmup, args.runs,
                                           args.min_seconds, args.max_seconds)
                    row.update(summarise(times))
                except Exception as error:  # a failed mode is a row, not a crash
                    row["error"] = f"{type(error).__name__}: {error}"[:500]
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(report, indent=1))
                os.replace(tmp, out)
            keras.backend.clear_session()
    out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    """Model x size rows, one ms (fps) column per mode."""
    modes = list(dict.fromkeys(r["mode"] for r in report["rows"]))
    device = report["device"]
    lines = [
        f"# Zoo forward-pass latency, batch 1: {device['cpu']}, {device['threads']} threads\n",
        f"`{report['command']}`; random weights, 12 classes; median ms (fps).\n",
        "| model | params | size | " + " | ".join(modes) + " |",
        "|---" * (3 + len(modes)) + "|",
    ]
    cells: dict = {}
    for r in report["rows"]:
        text = f"failed: {r['error'][:60]}" if "error" in r else f"{r['median_ms']:.1f} ({r['fps']:.1f})"
        cells.setdefault((r["model"], r["size"], r["params"]), {})[r["mode"]] = text
    for (model, size, params), by_mode in cells.items():
        lines.append(f"| {model} | {params / 1e6:.2f}M | {size} | "
                     + " | ".join(by_mode.get(m, "") for m in modes) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
