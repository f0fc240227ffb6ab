"""Latency of one model in every format on this machine, through ``edgeseg bench``.

For each model and size, builds the model (random weights: latency does not depend on them),
saves it as .keras and exports TFLite fp32, TFLite int8 (uint8 I/O, calibrated on synthetic
scenes) and ONNX at that size, then benchmarks every artifact with the runtime (per-stage
timings, frames of the same size, so nothing is resized) and writes the merged report.

Usage:
    python benchmarks/bench_formats.py --models enet,segnet,unet --sizes 480x320,640x360 \
        --work runs/bench_formats --out benchmarks/results/cpu_formats
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL_OPTIONS = {"enet": {}, "segnet": {}, "unet": {}, "fcn8s": {}}


def export_all(name: str, size: tuple[int, int], work: Path, num_classes: int) -> list[Path]:
    from edgeseg.artifacts import DEFAULT_NORMALISATION, write_sidecar
    from edgeseg.converters.calibration import normalise
    from edgeseg.converters.onnx_export import convert_keras_to_onnx
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.data import SYNTHETIC_CLASSES, SceneSequence
    from edgeseg.io import write_bytes_atomic
    from edgeseg.models import build

    width, height = size
    tag = f"{name}_{width}x{height}"
    work.mkdir(parents=True, exist_ok=True)
    model = build(name, num_classes, (height, width, 3), **MODEL_OPTIONS[name])
    classes = list(SYNTHETIC_CLASSES)[:num_classes]
    sidecar = {"model": name, "classes": classes, "size": [width, height],
               "normalisation": DEFAULT_NORMALISATION}
    sequence = SceneSequence(seed=1, size=size)
    calibration = [normalise(sequence.frame(t)[0]) for t in range(0, 64, 8)]
    artifacts = {
        f"{tag}.keras": lambda p: model.save(p),
        f"{tag}_fp32.tflite": lambda p: p.write_bytes(convert_keras_to_tflite(model)),
        f"{tag}_int8.tflite": lambda p: p.write_bytes(convert_keras_to_tflite(
            model, "int8", lambda: iter(calibration), io_type="uint8")),
        f"{tag}.onnx": lambda p: write_bytes_atomic(p, convert_keras_to_onnx(model).SerializeToString()),
    }
    written = []
    for filename, write in artifacts.items():
        path = work / filename
        if not path.exists():
            write(path)
        quant = "int8" if "int8" in filename else ("none" if "tflite" in filename else None)
        meta = {**sidecar, "quant": quant}
        if filename.endswith(".keras"):
            path.with_name("run.json").write_text(json.dumps(meta))  # overwritten per model
        write_sidecar(path, meta)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="enet,segnet,unet")
    parser.add_argument("--sizes", default="480x320,640x360")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--work", default="runs/bench_formats")
    parser.add_argument("--out", default="benchmarks/results/cpu_formats")
    args = parser.parse_args()

    from edgeseg.bench.report import merge_results, write_report
    from edgeseg.bench.runner import benchmark, format_row, parse_size, write_jsonl

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    models = args.models.split(",")
    # Rows of other models stay: measuring one model again replaces only its rows.
    kept = [line for line in (results.read_text().splitlines() if results.exists() else [])
            if json.loads(line)["model"] not in models]
    results.write_text("".join(line + "\n" for line in kept))
    for name in models:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            artifacts = export_all(name, size, work / f"{name}_{size_text}", args.num_classes)
            for row in benchmark([str(a) for a in artifacts], [size], threads=args.threads,
                                 warmup=3, runs=args.runs, min_seconds=args.min_seconds):
                write_jsonl([row], results)
                print(format_row(row), flush=True)
    print(write_report(merge_results([results]), out))


if __name__ == "__main__":
    main()
