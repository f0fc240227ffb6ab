"""Results from any number of devices, merged into one table, a CSV and a plot.

``write_report(merge_results(["orin.jsonl", "h100.jsonl"]), "report/")`` writes ``report.md``
(a table per model and network input size: device x format x frame, with the ENet paper's
published timings beside the measured rows of the same network input only), ``report.csv``
(the same columns, plus errors) and ``latency_vs_resolution.png`` (median end-to-end latency
against the network's input size, log scale).

The network's input (``model_input``), not the camera frame (``size``), is what the paper's
resolutions are: a model exported at 240x180 and fed 480x320 frames runs the network at 240x180,
and is not comparable with the paper's 480x320 row. ``edgeseg bench --model-size frame`` runs
the network at the frame's size where the model allows.

Each table row names its precision (a .keras row's own label, "bf16 (mixed_bfloat16)"; else
the row's ``quant``; rows without either are fp32) and its batch (1 unless the row says
otherwise: ``benchmarks/gpu/bench_jax.py`` writes batch-8 throughput rows, whose latency is per
batch and fps images / s), so that GPU rows at fp32 and bf16, batch 1 and 8 sit beside the
paper's batch-1 rows. A .keras row's device is where its backend ran it
(``compute_device``): the GPU and its driver, or the machine's CPU where the backend saw no GPU.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from edgeseg.bench.runner import graph_summary

PAPER_SOURCE = "Paszke et al. 2016, ENet (arXiv 1606.02147), inference time, batch 1"
PAPER_DEVICES = {"TX1": "Jetson TX1 (ENet paper)", "Titan X": "NVIDIA Titan X (ENet paper)",
                 "K40c": "Tesla K40c (Mobile_Mask_RCNN, seed document)"}
MASK_RCNN_SOURCE = ("the seed document on GustavZ/Mobile_Mask_RCNN (mobile_mask_rcnn_coco.h5, "
                    "145 ms, 203 ms on average)")


def _paper_row(model: str, device: str, size: str, ms: float, fps: float,
               source: str = PAPER_SOURCE) -> dict:
    return {
        "model": model,
        "artifact": None,
        "format": "paper",
        "quant": None,
        "size": size,
        "model_input": size,
        "threads": None,
        "batch": 1,
        "device": {"label": PAPER_DEVICES[device]},
        "latency_ms": {"total": {"median": ms}},
        "fps": fps,
        "runs": None,
        "error": None,
        "reference": True,
        "source": source,
    }


# The paper's table as ANCHORS.md reproduces it (ms and fps as published; the fps are not
# exactly 1000 / ms). SegNet at 1280x720 on the TX1 has no entry. These time the network alone
# in the authors' Torch7 / cuDNN setup, not an end-to-end runtime like the measured rows.
PAPER_ROWS: tuple[dict, ...] = tuple(
    _paper_row(model, device, size, ms, fps)
    for model, device, size, ms, fps in (
        ("SegNet", "TX1", "480x320", 757, 1.3),
        ("SegNet", "TX1", "640x360", 1251, 0.8),
        ("SegNet", "Titan X", "640x360", 69, 14.6),
        ("SegNet", "Titan X", "1280x720", 289, 3.5),
        ("SegNet", "Titan X", "1920x1080", 637, 1.6),
        ("ENet", "TX1", "480x320", 47, 21.1),
        ("ENet", "TX1", "640x360", 69, 14.6),
        ("ENet", "TX1", "1280x720", 262, 3.8),
        ("ENet", "Titan X", "640x360", 7, 135.4),
        ("ENet", "Titan X", "1280x720", 21, 46.8),
        ("ENet", "Titan X", "1920x1080", 46, 21.6),
    )
) + (_paper_row("mobile_mask_rcnn", "K40c", "512x512", 145, 6.9, MASK_RCNN_SOURCE),)

COLUMNS = (
    "model",
    "size",
    "device",
    "format",
    "runtime",
    "quant",
    "precision",
    "batch",
    "threads",
    "model_input",
    "total_ms",
    "fps",
    "inference_ms",
    "total_p90_ms",
    "runs",
    "peak_rss_mb",
    "model_mb",
    "graph",
    "xnnpack",
    "xnnpack_partitions",
    "ops_outside_delegate",
    "note",
    "reference",
    "error",
)
# The Markdown table leaves out what its headings and the graph column already say.
MARKDOWN_COLUMNS = tuple(c for c in COLUMNS if c not in (
    "model", "model_input", "error", "xnnpack", "xnnpack_partitions", "ops_outside_delegate"))
HEADERS = {
    "model": "model",
    "size": "frame",
    "device": "device",
    "format": "format",
    "runtime": "runtime",
    "quant": "quant",
    "precision": "precision",
    "batch": "batch",
    "threads": "threads",
    "model_input": "model input",
    "total_ms": "total ms (median)",
    "fps": "fps",
    "inference_ms": "inference ms (median)",
    "total_p90_ms": "total ms (p90)",
    "runs": "runs",
    "peak_rss_mb": "peak RSS MB",
    "model_mb": "model MB",
    "graph": "LiteRT graph",
    "xnnpack": "XNNPACK ran the convolutions",
    "xnnpack_partitions": "XNNPACK partitions",
    "ops_outside_delegate": "ops outside the delegate",
    "note": "note",
    "reference": "reference",
    "error": "error",
}


# --- reading ------------------------------------------------------------------------------------


def merge_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The rows of any number of JSON-lines results files, in order.

    Blank lines are skipped. A line that is not a JSON object raises a ValueError naming the
    file and line, except a last line without its newline: that is a row cut off by a killed
    run, skipped with a warning.
    """
    rows = []
    for path in paths:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                if number == len(lines) and not text.endswith("\n"):
                    warnings.warn(
                        f"{path}:{number}: skipped a truncated last line (was the run killed?)",
                        stacklevel=2,
                    )
                    continue
                raise ValueError(f"{path}:{number}: not valid JSON: {error.msg}") from None
            if not isinstance(row, dict) or "model" not in row or "size" not in row:
                raise ValueError(
                    f"{path}:{number}: not a benchmark row (a JSON object with 'model' and "
                    f"'size'): {line[:80]!r}"
                )
            rows.append(row)
    return rows


def deduplicate(rows: Iterable[dict]) -> list[dict]:
    """One row per model file, format, runtime, frame size, device and threads: the most recent
    one.

    Results files are appended to, so re-running a benchmark leaves the older rows in them.
    """
    latest: dict[tuple, dict] = {}
    for row in rows:
        key = (
            str(row.get("model")).lower(),
            Path(row["artifact"]).name if row.get("artifact") else None,
            row.get("format"),
            row.get("runtime"),
            row.get("quant"),
            row.get("size"),
            row.get("model_input"),
            row.get("resize"),
            row.get("threads"),
            row_precision(row),
            row_batch(row),
            row_device_label(row),
        )
        previous = latest.get(key)
        if previous is None or str(row.get("timestamp") or "") >= str(
            previous.get("timestamp") or ""
        ):
            latest[key] = row
    return list(latest.values())


# --- labels -------------------------------------------------------------------------------------


def _clean_cpu(name: str) -> str:
    name = re.sub(r"\((R|TM|tm|r)\)", "", name)
    name = re.sub(r"@\s*[\d.]+\s*[GM]Hz", "", name)
    name = re.sub(r"\b(CPU|Processor)\b", "", name)
    return re.sub(r"\s+", " ", name).strip()


def device_label(fingerprint: dict | None) -> str:
    """A short name for a device: "Jetson Orin Nano (15W)", "NVIDIA H100 80GB HBM3 /
    550.54.15" (GPU and driver), "Intel Xeon Platinum 8481C x8" (CPU and cores)."""
    if not fingerprint:
        return "unknown device"
    if fingerprint.get("label"):
        return str(fingerprint["label"])
    jetson = fingerprint.get("jetson_model")
    if jetson:
        name = re.sub(r"^NVIDIA\s+", "", jetson)
        name = re.sub(r"\s*(Engineering Reference\s+)?Developer Kit.*$", "", name).strip()
        settings = [fingerprint.get("power_mode"),
                    "jetson_clocks" if fingerprint.get("jetson_clocks") == "on" else None]
        settings = ", ".join(filter(None, settings))
        return f"{name} ({settings})" if settings else name
    gpu = fingerprint.get("gpu_name")
    if gpu:
        driver = fingerprint.get("gpu_driver")
        return f"{gpu} / {driver}" if driver else gpu
    cpu = _clean_cpu(fingerprint.get("cpu_model") or "unknown CPU")
    cores = fingerprint.get("cpu_cores")
    cpu = f"{cpu} x{cores}" if cores else cpu
    board = fingerprint.get("board")
    return f"{board} ({cpu})" if board else cpu


def row_device_label(row: dict) -> str:
    """The device a row ran on: for a .keras row with a ``compute_device`` the GPU its backend
    used ("NVIDIA H200 / 570.86.15", as :func:`device_label` names a machine's GPU) or, where
    the backend ran on the CPU, the machine without its GPU; else the machine's label."""
    compute = row.get("compute_device")
    machine = row.get("device")
    if not isinstance(compute, dict) or (machine or {}).get("label"):
        return device_label(machine)
    if compute.get("platform") == "gpu":
        return device_label({"gpu_name": compute.get("name") or "GPU",
                             "gpu_driver": compute.get("driver")})
    if compute.get("platform") == "cpu" and machine:
        return device_label({**machine, "gpu_name": None, "gpu_driver": None})
    return device_label(machine)


def row_precision(row: dict) -> str | None:
    """What the row computed in: its ``precision`` (a .keras row's label); else its ``quant``
    ("int8", "fp16"; a GPU script's "bf16" with its Keras policy), fp32 where that is None or
    "none"; None for published rows that do not say."""
    if row.get("precision"):
        return str(row["precision"])
    if row.get("reference"):
        return None
    quant, policy = row.get("quant"), row.get("precision_policy")
    if quant in (None, "none", "fp32", "float32"):
        return "fp32"
    return f"{quant} ({policy})" if policy and policy != "float32" else str(quant)


def row_batch(row: dict) -> int:
    """Images per inference call: the row's ``batch``, 1 for rows without one."""
    batch = row.get("batch")
    return int(batch) if batch else 1


def _pixels(size: str | None) -> int:
    match = re.fullmatch(r"(\d+)x(\d+)", size or "")
    return int(match.group(1)) * int(match.group(2)) if match else 0


def network_input(row: dict) -> str | None:
    """The size the network ran at: ``model_input``, else (rows without it) the frame size."""
    return row.get("model_input") or row.get("size")


def _median(row: dict, stage: str) -> float | None:
    stats = (row.get("latency_ms") or {}).get(stage) or {}
    return stats.get("median")


def table_rows(rows: Iterable[dict]) -> list[dict]:
    """The report's columns for each row, sorted by model, network input size, measured before
    published, device, format, runtime, quantisation, threads and frame size."""
    records = []
    for row in rows:
        total = row.get("latency_ms") or {}
        model_bytes = row.get("model_bytes")
        outside = row.get("ops_outside_delegate")
        records.append(
            {
                "model": row.get("model"),
                "size": row.get("size"),
                "device": row_device_label(row),
                "format": row.get("format"),
                "runtime": row.get("runtime"),
                "quant": row.get("quant"),
                "precision": row_precision(row),
                "batch": row_batch(row),
                "threads": row.get("threads"),
                "model_input": network_input(row),
                "total_ms": _median(row, "total"),
                "fps": row.get("fps"),
                "inference_ms": _median(row, "inference"),
                "total_p90_ms": (total.get("total") or {}).get("p90"),
                "runs": row.get("runs"),
                "peak_rss_mb": row.get("peak_rss_mb"),
                "model_mb": None if model_bytes is None else model_bytes / 1e6,
                "graph": graph_summary(row),
                "xnnpack": row.get("xnnpack"),
                "xnnpack_partitions": row.get("xnnpack_partitions"),
                "ops_outside_delegate": None if outside is None else json.dumps(outside),
                "note": row.get("note"),
                "reference": row.get("source") if row.get("reference") else None,
                "error": row.get("error"),
            }
        )
    records.sort(
        key=lambda r: (
            str(r["model"]).lower(),
            _pixels(r["model_input"]),
            str(r["model_input"]),
            r["reference"] is not None,
            r["device"],
            str(r["format"]),
            str(r["runtime"] or ""),
            str(r["quant"]),
            str(r["precision"] or ""),
            r["batch"],
            r["threads"] or 0,
            _pixels(r["size"]),
            str(r["size"]),
        )
    )
    return records


def _cell(value, column: str) -> str:
    if value is None:
        return ""
    if column == "reference":
        return "paper"
    if isinstance(value, float):
        if column == "fps":
            return f"{value:.1f}"
        if column == "model_mb":
            return f"{value:.2f}"
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# --- writing ------------------------------------------------------------------------------------


def write_report(
    rows: Iterable[dict],
    out_dir: str | os.PathLike,
    include_paper: bool = True,
    plot: bool = True,
) -> dict[str, Path]:
    """Writes report.md, report.csv and latency_vs_resolution.png into ``out_dir``.

    Repeated measurements keep the most recent (:func:`deduplicate`). ``include_paper`` adds
    :data:`PAPER_ROWS`. The plot needs matplotlib (``pip install "edgeseg[plot]"``): without it
    the Markdown and CSV are written, then ImportError is raised.

    Returns:
        the paths written, by kind: "markdown", "csv", "plot".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = deduplicate(rows)
    if include_paper:
        rows += [dict(row) for row in PAPER_ROWS]
    records = table_rows(rows)
    written = {"markdown": out / "report.md", "csv": out / "report.csv"}
    written["markdown"].write_text(_markdown(records), encoding="utf-8")
    with open(written["csv"], "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})
    if plot:
        written["plot"] = out / "latency_vs_resolution.png"
        plot_latency_vs_resolution(records, written["plot"])
    return written


def comparison_groups(records: Iterable[dict]) -> dict[tuple[str, str | None], list[dict]]:
    """The report's tables: (model, network input) -> its records without errors, in order.

    Published rows share a table only with measured rows of the same model and the same network
    input size; a paper size that nothing was measured at has a table of its own.
    """
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for record in records:
        if not record["error"]:
            key = (str(record["model"]).lower(), record["model_input"])
            groups.setdefault(key, []).append(record)
    return groups


def _markdown(records: list[dict]) -> str:
    failed = [r for r in records if r["error"]]
    devices = sorted({r["device"] for r in records if not r["error"] and not r["reference"]})
    lines = [
        "# Benchmark report",
        "",
        "Median end-to-end latency per frame (resize and normalise, the model, argmax and resize "
        "back) on a synthetic frame of the given size, batch 1; fps = 1000 / median. Rows of a "
        "larger batch (GPU throughput) give the latency per batch and fps in images / s. The "
        "precision column says what the model computed in (fp32 with its matmul precision, or "
        "bf16 / fp16 compute through a Keras mixed dtype policy). One table "
        "per model and network input size: the size the network ran at, which is the frame's "
        "only where the model was exported at it or benchmarked with `--model-size frame`. Rows "
        f"marked *paper* are published figures ({PAPER_SOURCE}; for mobile_mask_rcnn "
        f"{MASK_RCNN_SOURCE}) that time the network alone on the authors' setup: a reference "
        "point beside the measured rows of the same network input, not a like-for-like "
        "comparison. Instance models (mobile_mask_rcnn) are timed from the frame to the "
        "detections pasted back into it.",
        "",
        f"Devices: {', '.join(devices) if devices else 'none'}.",
    ]
    columns = list(MARKDOWN_COLUMNS)
    for (_, model_input), group in comparison_groups(records).items():
        names = [r["model"] for r in group if not r["reference"]] or [group[0]["model"]]
        lines += ["", f"## {names[0]}, network input {model_input or 'unknown'}", ""]
        lines.append("| " + " | ".join(HEADERS[c] for c in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for record in group:
            lines.append("| " + " | ".join(_cell(record[c], c) for c in columns) + " |")
    if failed:
        lines += ["", "## Errors", ""]
        for record in failed:
            lines.append(
                f"- {record['model']} [{record['format']}] {record['size']} on "
                f"{record['device']}: {_cell(record['error'], 'error')}"
            )
    return "\n".join(lines) + "\n"


def latency_series(records: list[dict]) -> dict[tuple[str, bool], list[tuple[int, float]]]:
    """The plot's lines: ``(label, published)`` -> [(network input pixels, median total ms)],
    one per device, format, runtime, model, quantisation, precision, batch and thread count. A
    row whose frame was resized to another network input is a point of its own, labelled with
    its frame."""
    series: dict[tuple, list[tuple[int, float]]] = {}
    for record in records:
        pixels = _pixels(record["model_input"])
        if record["error"] or record["total_ms"] is None or not pixels:
            continue
        resized = record["size"] != record["model_input"] and not record["reference"]
        precision = record.get("precision")
        batch = record.get("batch") or 1
        label = " ".join(
            str(part)
            for part in (
                record["model"],
                record["format"] if not record["reference"] else None,
                f"({record['runtime']})" if record["runtime"] else None,
                record["quant"] if record["quant"] not in (None, "none") else None,
                precision if precision and not precision.startswith(("fp32", str(record["quant"])))
                else None,
                f"batch {batch}" if batch != 1
                and f"batch {batch}" not in str(record["runtime"]) else None,
                f"{record['threads']} threads" if record["threads"] else None,
                f"(frame {record['size']})" if resized else None,
            )
            if part
        )
        key = (f"{record['device']}: {label}", bool(record["reference"]))
        series.setdefault(key, []).append((pixels, record["total_ms"]))
    for points in series.values():
        points.sort()
    return series


def plot_latency_vs_resolution(records: list[dict], path: str | os.PathLike) -> Path:
    """Median total latency against the network's input size: one line per (device, format,
    model), log y; published rows dashed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            'the latency plot needs matplotlib: pip install "edgeseg[plot]"'
        ) from None

    lines = latency_series(records)
    sizes = sorted(
        {(r["model_input"], _pixels(r["model_input"])) for r in records
         if _pixels(r["model_input"]) and not r["error"]},
        key=lambda size: size[1],
    )

    # Figure + Agg canvas directly: no pyplot, so no global backend is chosen or changed.
    figure = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (label, reference), points in sorted(lines.items()):
        axes.plot(
            [p for p, _ in points],
            [ms for _, ms in points],
            linestyle="--" if reference else "-",
            marker="s" if reference else "o",
            label=label + (" (published)" if reference else ""),
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    if sizes:
        axes.set_xticks([p for _, p in sizes], [s for s, _ in sizes], rotation=45)
        axes.minorticks_off()
    axes.set_xlabel("network input size (log pixels)")
    axes.set_ylabel("median latency per frame (ms, log)")
    axes.set_title("Latency against resolution")
    axes.grid(True, which="major", alpha=0.3)
    if lines:
        figure.legend(fontsize="small", loc="outside lower center", ncols=2)
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
