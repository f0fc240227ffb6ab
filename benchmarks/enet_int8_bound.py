"""What bounds ENet's int8 speed-up on a CPU: per-stage fp32 / int8 times and single convolutions.

Usage:
    python benchmarks/enet_int8_bound.py --size 480x320 --threads 1,2 \
        --out benchmarks/results/enet_int8_bound_cpu

Two measurements, LiteRT with XNNPACK, random weights, batch 1:

1. ENet's stages: the model cut after each stage (initial block, bottleneck stages 1 to 5, the
   final transposed convolution), each prefix exported fp32 and full int8 (int8 input and
   output, so no uint8 requantisation is timed) and timed; a stage's time is its prefix's time
   minus the previous prefix's. Where int8 does not pay shows stage by stage.
2. Single convolutions at the sizes ENet runs them (1x1 and 3x3, few to many channels, at the
   resolutions of stages 1 and 2): fp32 against int8. XNNPACK's int8 convolution has a cost per
   output pixel that does not shrink with the channel count, so with ENet's narrow layers
   (16 to 64 channels at 1/2 to 1/8 of the input) int8 gains little where fp32 is already
   memory-bound, and much only where channels are many.

Writes ``OUT.json`` and ``OUT.md`` naming the CPU and its VNNI support.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_zoo import (  # noqa: E402
    cpu_description,
    sgemm_peak_gflops,
    timed_runs,
    vnni_text,
    write_results,
)

STAGES = (
    ("initial", "initial_prelu"),
    ("stage 1 (1/4, 64 ch)", "b1_4_out_act"),
    ("stage 2 (1/8, 128 ch)", "b2_8_out_act"),
    ("stage 3 (1/8, 128 ch)", "b3_8_out_act"),
    ("stage 4 (1/4, 64 ch, unpool)", "b4_2_out_act"),
    ("stage 5 (1/2, 16 ch, unpool)", "b5_1_out_act"),
    ("full conv (1/1)", "crop_output"),
)
CONVS = (  # (kernel, in, out, stride of the input size)
    (1, 16, 4, 2), (3, 4, 4, 2), (1, 4, 16, 2), (1, 64, 16, 4), (3, 16, 16, 4), (1, 16, 64, 4),
    (1, 128, 32, 8), (3, 32, 32, 8), (1, 32, 128, 8),
)


def time_blob(blob: bytes, threads: int, args) -> float:
    import numpy as np

    from edgeseg.runtime_tflite import load_interpreter

    interpreter = load_interpreter(model_content=blob, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    shape = tuple(int(v) for v in detail["shape"])
    rng = np.random.default_rng(0)
    if np.issubdtype(detail["dtype"], np.integer):
        feed = rng.integers(-128, 128, shape).astype(detail["dtype"])
    else:
        feed = rng.random(shape, dtype=np.float32)
    interpreter.set_tensor(detail["index"], feed)
    return statistics.median(timed_runs(interpreter.invoke, args.warmup, args.runs,
                                        args.min_seconds, args.max_seconds))


def convert_pair(model, shape) -> dict[str, bytes]:
    import numpy as np

    from edgeseg.converters.tflite import convert_keras_to_tflite

    calibration = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    return {
        "fp32": convert_keras_to_tflite(model),
        "int8": convert_keras_to_tflite(model, "int8", lambda: iter(calibration),
                                        io_type="int8"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="480x320")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/enet_int8_bound_cpu")
    args = parser.parse_args()

    import keras
    import numpy as np

    from edgeseg.models import build
    from edgeseg.models.analysis import profile_model

    width, height = (int(v) for v in args.size.split("x"))
    threads = [int(t) for t in args.threads.split(",")]
    report = {"device": cpu_description(), "command": "python benchmarks/enet_int8_bound.py "
              + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "sgemm_gflops": {str(t): sgemm_peak_gflops(t) for t in threads},
              "stages": [], "convs": []}
    enet = build("enet", 12, (height, width, 3))
    rng = np.random.default_rng(0)
    for weight in enet.weights:
        if "alpha" in weight.path:  # trained-like PReLU slopes (see bench_zoo.export_pair)
            weight.assign(rng.uniform(0.05, 0.5, weight.shape).astype(np.float32))
    previous = {(t, q): 0.0 for t in threads for q in ("fp32", "int8")}
    previous_macs = 0
    for label, layer in STAGES:
        prefix = keras.Model(enet.input, enet.get_layer(layer).output)
        blobs = convert_pair(prefix, (height, width, 3))
        macs = profile_model(prefix).macs
        for t in threads:
            row = {"stage": label, "cut_after": layer, "threads": t,
                   "macs": macs - previous_macs}
            for quant, blob in blobs.items():
                total = time_blob(blob, t, args)
                row[f"{quant}_prefix_ms"] = total
                row[f"{quant}_ms"] = total - previous[(t, quant)]
                previous[(t, quant)] = total
            report["stages"].append(row)
            print(json.dumps(row), flush=True)
        previous_macs = macs
    keras.backend.clear_session()

    for kernel, cin, cout, stride in CONVS:
        h, w = height // stride, width // stride
        inputs = keras.Input((h, w, cin))
        model = keras.Model(inputs, keras.layers.Conv2D(cout, kernel, padding="same")(inputs))
        blobs = convert_pair(model, (h, w, cin))
        for t in threads:
            row = {"conv": f"{kernel}x{kernel} {cin}->{cout}", "at": f"{w}x{h}", "threads": t,
                   "macs": kernel * kernel * cin * cout * h * w}
            for quant, blob in blobs.items():
                row[f"{quant}_ms"] = time_blob(blob, t, args)
            report["convs"].append(row)
            print(json.dumps(row), flush=True)
        keras.backend.clear_session()

    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    device = report["device"]
    vnni = vnni_text(device)
    peaks = ", ".join(f"{t} threads {g:.0f}" for t, g in report["sgemm_gflops"].items())
    lines = [
        f"# ENet int8 against fp32, stage by stage and per convolution: {device['cpu']}\n",
        f"{device['cores']} cores, {vnni}; numpy sgemm peak (GFLOP/s): {peaks}.\n",
        f"`{report['command']}`\n",
        "## Stages (prefix time differences; int8 with int8 input and output)\n",
        "| stage | threads | MMACs | fp32 ms | int8 ms | int8 speed-up | fp32 GMAC/s | "
        "int8 GMAC/s |",
        "|---" * 8 + "|",
    ]
    for r in report["stages"]:
        lines.append(
            f"| {r['stage']} | {r['threads']} | {r['macs'] / 1e6:.0f} | {r['fp32_ms']:.2f} | "
            f"{r['int8_ms']:.2f} | {r['fp32_ms'] / max(r['int8_ms'], 1e-3):.2f}x | "
            f"{r['macs'] / max(r['fp32_ms'], 1e-3) / 1e6:.0f} | "
            f"{r['macs'] / max(r['int8_ms'], 1e-3) / 1e6:.0f} |")
    total = {}
    for r in report["stages"]:
        total.setdefault(r["threads"], [0.0, 0.0])
        total[r["threads"]][0] += r["fp32_ms"]
        total[r["threads"]][1] += r["int8_ms"]
    for t, (f, i) in total.items():
        lines.append(f"| **whole network** | {t} | | {f:.2f} | {i:.2f} | {f / i:.2f}x | | |")
    lines += ["", "## Single convolutions (same padding)\n",
              "| conv | at | threads | MMACs | fp32 ms | int8 ms | int8 speed-up |",
              "|---" * 7 + "|"]
    for r in report["convs"]:
        lines.append(
            f"| {r['conv']} | {r['at']} | {r['threads']} | {r['macs'] / 1e6:.1f} | "
            f"{r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | {r['fp32_ms'] / r['int8_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
