"""Summarises run directories (run.json) into a JSON and a Markdown table of the curves.

Usage: python benchmarks/summarise_training.py RUN_DIR... --out benchmarks/results/NAME
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True, help="output path without suffix")
    args = parser.parse_args()

    summary = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "runs": []}
    lines = []
    for run in args.runs:
        record = json.loads((Path(run) / "run.json").read_text())
        config = record["config"]
        epochs = record["epochs"]
        steady = [e["train_images_per_second"] for e in epochs[1:] if "train_images_per_second" in e]
        summary["runs"].append({
            "run": run, "model": record["model"], "config": config, "best": record["best"],
            "epochs": epochs, "wall_seconds": record.get("wall_seconds"),
            "train_images_per_second": sum(steady) / len(steady) if steady else None,
        })
        lines += [
            f"## {record['model']} ({run})",
            "",
            f"data `{config['data']}`, size {config['size'][0]}x{config['size'][1]}, batch "
            f"{config['batch']}, {config['optimizer']} lr {config['lr']}, class weighting "
            f"{config['class_weighting']}, weight map {config['weight_map']}, elastic "
            f"{config['elastic']}; wall time {record.get('wall_seconds', 0) / 60:.1f} min; "
            f"training throughput {summary['runs'][-1]['train_images_per_second'] or 0:.1f} images/s "
            "(epochs after the first)",
            "",
            "| epoch | loss | val mIoU | class avg acc | global acc | s |",
            "|---|---|---|---|---|---|",
        ]
        for e in epochs:
            lines.append(
                f"| {e['epoch']} | {e['loss']:.3f} | {100 * e['miou']:.1f} | "
                f"{100 * e['class_avg_acc']:.1f} | {100 * e['global_acc']:.1f} | {e['seconds']:.0f} |"
            )
        best = record["best"]
        per_class = epochs[best["epoch"] - 1]["per_class_iou"]
        lines += ["", "best epoch per-class IoU: " + ", ".join(
            f"{name} {100 * (iou if iou == iou else 0):.1f}"
            for name, iou in zip(record["classes"], per_class, strict=True)), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
