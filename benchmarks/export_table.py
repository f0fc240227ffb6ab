"""Every export mode of the briefly trained zoo models, validated against Keras (issue 4's table).

Usage:
    python benchmarks/export_table.py --out benchmarks/results/export_table_cpu

For each trained run (``MODEL=RUN_DIR``; a missing run is trained first for ``--train-minutes`` on
the synthetic data) it exports TFLite fp32 / fp16 / dynamic / int8 (uint8 I/O) / QAT (ENet and
U-Net) and ONNX with ``edgeseg.converters.export``, which validates each artifact on the synthetic
validation split, and writes one row per (model, mode): file size, pixel agreement with Keras,
the mIoU of both and the drop. Rows are written as they come (JSON lines), then the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODES = [  # (label, format, quant, io)
    ("tflite fp32", "tflite", "none", "float32"),
    ("tflite fp16", "tflite", "fp16", "float32"),
    ("tflite dynamic", "tflite", "dynamic", "float32"),
    ("tflite int8", "tflite", "int8", "uint8"),
    ("tflite qat", "tflite", "qat", "uint8"),
    ("onnx fp32", "onnx", "none", "float32"),
]
QAT_MODELS = ("enet", "unet")  # the QAT scope; tfmot twins exist for these
# Measured and not worth repeating on this machine: the row carries the reason.
NOT_ON_THIS_MACHINE = {
    ("fcn8s", "onnx fp32"): "tf2onnx on the 134M-parameter graph was killed by the OOM killer "
                            "at 24 GiB resident, twice (2-core, 24 GiB machine)",
}


def train_if_missing(model: str, run: Path, minutes: float, size: tuple[int, int]) -> None:
    if (run / "best.keras").is_file():
        return
    from edgeseg.train.trainer import TrainConfig, train

    print(f"== training {model} for {minutes} min into {run}", flush=True)
    lr = 1e-4 if model == "fcn8s" else 1e-3  # FCN's unnormalised heads want the smaller step
    train(TrainConfig(model=model, data="synthetic", out=str(run), size=size, epochs=50,
                      steps_per_epoch=25, batch=4, optimizer="adam", lr=lr, max_minutes=minutes,
                      resume="auto", verbose=0))


def export_row(model: str, run: Path, mode: tuple, work: Path, num_val: int, qat_epochs: int):
    from edgeseg.converters.export import ExportRequest, export

    label, fmt, quant, io = mode
    suffix = ".onnx" if fmt == "onnx" else ".tflite"
    out = work / model / f"{quant}_{io}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    row = {"model": model, "mode": label, "format": fmt, "quant": quant, "io": io,
           "run": str(run), "artifact": str(out), "error": None}
    started = time.time()
    try:
        report = export(ExportRequest(model=str(run / "best.keras"), format=fmt, quant=quant,
                                      io=io, out=str(out), num_val=num_val, num_calib=100,
                                      qat_epochs=qat_epochs))
        validation = report["validation"]
        row.update(bytes=report["artifact_bytes"], **{k: validation[k] for k in (
            "num_images", "pixel_agreement", "miou_keras", "miou_export", "miou_drop_points")})
    except Exception as error:  # a failed mode is a row with its error, not a lost table
        row["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    row["seconds"] = round(time.time() - started, 1)
    return row


def qat_recovery(rows: list[dict]) -> dict[str, float | None]:
    """For each model, the share of PTQ int8's mIoU drop that QAT won back (1 = all of it)."""
    out = {}
    for model in {r["model"] for r in rows}:
        by_mode = {r["mode"]: r for r in rows if r["model"] == model and not r["error"]}
        if "tflite int8" in by_mode and "tflite qat" in by_mode:
            ptq = by_mode["tflite int8"]["miou_drop_points"]
            qat = by_mode["tflite qat"]["miou_drop_points"]
            out[model] = None if ptq <= 0 else (ptq - qat) / ptq
    return out


def markdown(rows: list[dict], recovery: dict) -> str:
    lines = [
        "| model | mode | size (KiB) | pixel agreement (%) | mIoU Keras | mIoU export | drop (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['model']} | {r['mode']} | failed: {r['error'][:120]} | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['bytes'] / 1024:,.0f} | "
            f"{100 * r['pixel_agreement']:.2f} | {100 * r['miou_keras']:.1f} | "
            f"{100 * r['miou_export']:.1f} | {r['miou_drop_points']:+.2f} |"
        )
    lines.append("")
    for model, share in sorted(recovery.items()):
        text = "PTQ int8 lost nothing" if share is None else f"{100 * share:.0f}% of the PTQ loss"
        lines.append(f"- {model}: QAT recovers {text}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="enet=runs/bench_enet,unet=runs/bench_unet,"
                        "segnet=runs/table_segnet,fcn8s=runs/table_fcn8s",
                        help="MODEL=RUN_DIR pairs; a run without best.keras is trained first")
    parser.add_argument("--train-minutes", type=float, default=6.0)
    parser.add_argument("--train-size", default="192x128")
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--work", default="runs/export_table")
    parser.add_argument("--out", default="benchmarks/results/export_table_cpu")
    args = parser.parse_args()

    width, height = (int(v) for v in args.train_size.split("x"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    done = {(r["model"], r["mode"]): r for r in map(json.loads, jsonl.read_text().splitlines())
            } if jsonl.exists() else {}
    rows = []
    for pair in args.runs.split(","):
        model, run = pair.split("=")
        train_if_missing(model, Path(run), args.train_minutes, (width, height))
        for mode in MODES:
            if mode[2] == "qat" and model not in QAT_MODELS:
                continue
            if (model, mode[0]) in done and not done[(model, mode[0])]["error"]:
                rows.append(done[(model, mode[0])])  # resumed: measured by an earlier run
                continue
            print(f"== {model} {mode[0]}", flush=True)
            if (model, mode[0]) in NOT_ON_THIS_MACHINE:
                rows.append({"model": model, "mode": mode[0], "format": mode[1],
                             "quant": mode[2], "io": mode[3], "run": run, "artifact": None,
                             "error": "skipped: " + NOT_ON_THIS_MACHINE[(model, mode[0])]})
                continue
            row = export_row(model, Path(run), mode, Path(args.work), args.num_val, args.qat_epochs)
            rows.append(row)
            with jsonl.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    recovery = qat_recovery(rows)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "qat_recovery": recovery},
                                                   indent=2))
    out.with_suffix(".md").write_text(
        "# Exports of the zoo models trained briefly on the synthetic data (CPU)\n\n"
        f"`python benchmarks/export_table.py`; validation on {args.num_val} synthetic validation "
        "images at each model's training size. Drop = mIoU(Keras) - mIoU(export), in points.\n\n"
        + markdown(rows, recovery))
    print(markdown(rows, recovery))


if __name__ == "__main__":
    main()
