"""``edgeseg quickstart``: the whole path on the built-in synthetic data, in a few minutes.

1. writes the synthetic dataset;
2. trains ENet within a time budget on whatever device is there;
3. exports fp32 and full-int8 TFLite, each validated against the Keras model;
4. benchmarks, each row in its own process: the trained .keras model with the network rebuilt
   at the ENet paper's 480x320 and 640x360 (``--model-size frame``: ENet is fully
   convolutional), beside the paper's rows; the two .tflite exports at their own 240x180 input
   (re-exporting them at the paper's sizes would take longer than the quickstart should), in
   a table of their own; then writes the report;
5. runs the demo on a synthetic video and writes the annotated video;
6. writes ``summary.json`` and ``summary.md`` with what each step produced and took.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

TRAIN_SIZE = (240, 180)  # (W, H) the quickstart trains and exports at
PAPER_SIZES = [(480, 320), (640, 360)]  # the ENet paper's Jetson TX1 resolutions


def _label(size) -> str:
    return f"{size[0]}x{size[1]}"


def _step(summary: dict, name: str):
    class Step:
        def __enter__(self):
            self.started = time.time()
            print(f"\n== {name} ==", flush=True)
            summary["steps"][name] = {}
            return summary["steps"][name]

        def __exit__(self, kind, error, tb):
            entry = summary["steps"][name]
            entry["seconds"] = round(time.time() - self.started, 1)
            if error is not None:
                entry["error"] = f"{kind.__name__}: {error}"
            return False

    return Step()


def write_synthetic_video(path: Path, frames: int = 90, size=(480, 320), fps: int = 15) -> Path:
    """A video of moving synthetic scenes (MJPG .avi, readable by every OpenCV build)."""
    import cv2

    from edgeseg.data import SceneSequence

    sequence = SceneSequence(seed=7, size=size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    try:
        for t in range(frames):
            image, _, _ = sequence.frame(t)
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def quickstart(out: str = "runs/quickstart", train_minutes: float = 3.0, seed: int = 0) -> dict:
    """Runs every step; returns the summary (also written to OUT/summary.json)."""
    from edgeseg.converters.export import ExportRequest, export
    from edgeseg.data import write_synthetic
    from edgeseg.io import write_json_atomic
    from edgeseg.train.trainer import TrainConfig, train

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out_dir), "steps": {}}
    started = time.time()

    with _step(summary, "data") as step:
        data_root = out_dir / "data"
        if not (data_root / "train").is_dir():
            write_synthetic(data_root, n_train=200, n_val=40, size=(320, 240), seed=seed)
        step.update({"spec": f"synthetic:{data_root}", "train": 200, "val": 40, "size": "320x240"})
    spec = summary["steps"]["data"]["spec"]

    with _step(summary, "train") as step:
        run_dir = out_dir / "enet"
        record = train(TrainConfig(
            model="enet", data=spec, out=str(run_dir), size=TRAIN_SIZE, epochs=100, batch=8,
            lr=5e-3, steps_per_epoch=15, max_minutes=train_minutes, seed=seed,
            resume="auto", verbose=0,  # a second quickstart continues the first's run
        ))
        best = record["best"]
        step.update({
            "run": str(run_dir), "epochs": len(record["epochs"]),
            "best_epoch": best["epoch"], "best_val_miou": round(100 * best["miou"], 2),
            "curve_miou": [round(100 * e["miou"], 1) for e in record["epochs"]],
        })

    exports = {}
    for quant, io in (("none", "float32"), ("int8", "uint8")):
        with _step(summary, f"export_{quant}") as step:
            path = out_dir / f"enet_{'fp32' if quant == 'none' else quant}.tflite"
            report = export(ExportRequest(model=str(run_dir / "best.keras"), quant=quant, io=io,
                                          out=str(path), num_calib=50, num_val=20))
            exports[quant] = path
            check = report["validation"]
            step.update({
                "artifact": str(path), "bytes": report["artifact_bytes"],
                "pixel_agreement": round(100 * check["pixel_agreement"], 2),
                "miou_keras": round(100 * check["miou_keras"], 2),
                "miou_export": round(100 * check["miou_export"], 2),
                "miou_drop_points": round(check["miou_drop_points"], 2),
            })

    with _step(summary, "bench") as step:
        from edgeseg.bench.report import merge_results, write_report
        from edgeseg.bench.runner import benchmark, write_jsonl

        results = out_dir / "bench.jsonl"
        results.unlink(missing_ok=True)
        timing = {"warmup": 3, "runs": 20, "min_seconds": 2.0}
        # Like for like with the paper's table: the network itself at 480x320 and 640x360.
        rows = write_jsonl(benchmark([str(run_dir / "best.keras")], sizes=PAPER_SIZES,
                                     model_size="frame", **timing), results)
        # The exports have the 240x180 input they were trained at: timed there, and reported
        # in their own table, not beside the paper's rows.
        rows += write_jsonl(benchmark([str(p) for p in exports.values()], sizes=[TRAIN_SIZE],
                                      **timing), results)
        write_report(merge_results([results]), out_dir / "bench_report")
        step.update({
            "results": str(results), "report": str(out_dir / "bench_report" / "report.md"),
            "what": (f"best.keras with the network at {', '.join(_label(s) for s in PAPER_SIZES)} "
                     "(--model-size frame), beside the ENet paper's rows; the .tflite exports at "
                     f"their own {_label(TRAIN_SIZE)} input only (not re-exported at the "
                     "paper's sizes, to keep the quickstart short)"),
            "rows": [
                {"artifact": Path(r["artifact"]).name, "size": r["size"],
                 "model_input": r["model_input"], "error": r["error"],
                 "total_ms": r["latency_ms"]["total"]["median"] if not r["error"] else None,
                 "fps": r["fps"], **({"note": r["note"]} if r.get("note") else {})}
                for r in rows
            ],
        })

    with _step(summary, "demo") as step:
        from edgeseg.demos.segment_live import run_demo

        video = write_synthetic_video(out_dir / "synthetic_input.avi")
        demo = run_demo(str(exports["int8"]), str(video), output=str(out_dir / "demo.avi"),
                        summary_path=str(out_dir / "demo_summary.json"))
        step.update({"video": str(out_dir / "demo.avi"),
                     **{k: demo.get(k) for k in ("frames", "dropped", "skipped", "fps",
                                                 "inference_fps")}})

    summary["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    print("\n" + summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [f"# edgeseg quickstart ({summary.get('wall_seconds', 0) / 60:.1f} min)", ""]
    for name, step in summary["steps"].items():
        details = ", ".join(f"{k}: {json.dumps(v)}" for k, v in step.items() if k != "rows")
        lines.append(f"- **{name}** ({step.get('seconds', 0):.0f} s): {details}")
        for row in step.get("rows", []):
            lines.append(f"  - {row}")
    return "\n".join(lines) + "\n"
