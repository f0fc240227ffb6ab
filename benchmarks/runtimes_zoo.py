"""Each zoo model's fp32 and int8 latency on both TFLite runtimes, with XNNPACK's coverage.

Usage:
    python benchmarks/runtimes_zoo.py --out benchmarks/results/runtimes_cpu

The runtimes are Python interpreters (``--python``, repeatable) in whose environment
``ai_edge_litert`` or ``tflite_runtime`` imports: by default this one (ai-edge-litert) and
``.side-envs/tflite-runtime`` (tflite-runtime 2.14, whose XNNPACK build takes no int8 operator).

ENet, SegNet, U-Net and FCN-8s are built as the registry builds them, random weights with
trained-like PReLU slopes, and exported fp32 and full int8 with uint8 input and output
(``bench_zoo.export_pair``, what ``edgeseg export --quant int8`` writes); the mobile Mask R-CNN
(MobileNetV2) fp32 and int8 through ``convert_instance_tflite`` (int8 networks, float geometry),
calibrated on random images. Every export is written before the first timing, then each
(file, runtime, threads) is timed in a fresh process of that runtime (``bench_zoo.time_one``:
``invoke`` only, warm-up, then runs until ``--runs`` and ``--min-seconds`` have passed,
``--max-seconds`` caps it). The runtimes alternate file by file (ABBA), so that both see the
same machine state.

XNNPACK coverage, measured: the nodes the runtime left outside its delegate partitions
(``delegation()["outside_nodes"]``), their share of the graph's nodes and of its
multiply-accumulates (counted per operator from the file, ``edgeseg.tflite_file``). Predicted:
what ``edgeseg check`` says from the runtime's support table (``edgeseg.runtimes.check_graph``);
None where no table for that runtime exists.

Writes ``OUT.json`` (every row, the device, the runtimes, the command) and ``OUT.md``; rows are
saved as they come, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_zoo import cpu_description, export_pair, time_one, vnni_text  # noqa: E402

DEFAULT_PYTHONS = (sys.executable, str(ROOT / ".side-envs" / "tflite-runtime" / "bin" / "python"))
INSTANCE_MODELS = ("mobile_mask_rcnn",)


# --- the exports ---------------------------------------------------------------------------------


def export_instance_pair(name: str, size: tuple[int, int], num_classes: int, calibration_images: int,
                         folder: Path) -> dict:
    """fp32 and int8 .tflite of the mobile Mask R-CNN (MobileNetV2) at one size, through
    ``convert_instance_tflite``; calibrated on random images in [0, 1]."""
    import keras
    import numpy as np

    from edgeseg.converters.maskrcnn_export import convert_instance_tflite
    from edgeseg.models import build

    width, height = size
    model = build(name, num_classes, (height, width, 3), backbone="mobilenet_v2")
    calibration = np.random.default_rng(0).random((calibration_images, height, width, 3),
                                                  dtype=np.float32)
    files, modes = {}, {}
    for precision, quant in (("fp32", "none"), ("int8", "int8")):
        blob, mode = convert_instance_tflite(model, quant, calibration)
        path = folder / f"{name}_{width}x{height}_{precision}.tflite"
        path.write_bytes(blob)
        files[precision], modes[precision] = path, mode
    keras.backend.clear_session()
    return {"files": files, "modes": modes}


def export_all(models: list[str], sizes: list[tuple[int, int]], instance_size: tuple[int, int],
               args, folder: Path) -> list[dict]:
    """Every (model, size, precision) export, written to ``folder`` unless already there:
    ``[{"model", "size", "precision", "path", "quant_mode"}]``."""
    exports = []
    for name in models:
        instance = name in INSTANCE_MODELS
        for width, height in [instance_size] if instance else sizes:
            files = {p: folder / f"{name}_{width}x{height}_{p}.tflite" for p in ("fp32", "int8")}
            modes = {"fp32": "none", "int8": "int8, uint8 input and output"}
            if not all(path.is_file() for path in files.values()):
                print(f"exporting {name} {width}x{height}", flush=True)
                if instance:
                    pair = export_instance_pair(name, (width, height), args.instance_classes,
                                                args.calibration_images, folder)
                    modes = pair["modes"]
                else:
                    pair = export_pair(name, (width, height), args.num_classes, folder)
                files = pair["files"]
            for precision, path in files.items():
                exports.append({"model": name, "size": f"{width}x{height}",
                                "precision": precision, "path": str(path),
                                "quant_mode": modes[precision]})
    return exports


# --- the timing, in each runtime's own process ---------------------------------------------------


def time_on_runtime(path: str, threads: int, warmup: int, runs: int, min_seconds: float,
                    max_seconds: float) -> dict:
    """Run by the runtime's Python: ``bench_zoo.time_one``, the runtime's name and version, and
    the indices of the nodes it left outside its delegate."""
    from edgeseg.runtime_tflite import delegation, interpreter_identity, load_interpreter

    result = time_one(path, threads, warmup, runs, min_seconds, max_seconds)
    # time_one reports the delegation's counts; the nodes' indices come from a second load,
    # after the timing (the delegation is the same for the same file and thread count).
    result["outside_nodes"] = delegation(load_interpreter(path, num_threads=threads))[
        "outside_nodes"]
    result["runtime"] = interpreter_identity()
    return result


def runtime_identity(python: str) -> dict:
    """``{"name", "version"}`` of the runtime that ``python`` loads, or ``{"error"}``."""
    code = ("import json; from edgeseg.runtime_tflite import interpreter_identity; "
            "print(json.dumps(interpreter_identity()))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=worker_env())
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def measure(python: str, path: str, threads: int, args) -> dict:
    job = [python, str(Path(__file__).resolve()), "--time-one", path, "--threads", str(threads),
           "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--min-seconds", str(args.min_seconds), "--max-seconds", str(args.max_seconds)]
    done = subprocess.run(job, capture_output=True, text=True, env=worker_env())
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- coverage: measured and predicted ------------------------------------------------------------


def coverage(path: str, outside_nodes: list[int] | None, requirement: str | None) -> dict:
    """The graph's nodes and MACs, the share XNNPACK took (measured: all but ``outside_nodes``)
    and the share the support table of ``requirement`` predicts (None without a table)."""
    from edgeseg.runtimes import check_graph, runtime_support
    from edgeseg.tflite_file import read_tflite

    graph = read_tflite(path)
    row = {"nodes": len(graph.operators), "macs": graph.macs,
           "xnnpack_nodes": None, "xnnpack_macs": None}
    if outside_nodes is not None:
        row["xnnpack_nodes"] = len(graph.operators) - len(outside_nodes)
        row["xnnpack_macs"] = graph.macs - sum(graph.operators[i].macs for i in outside_nodes)
    predicted = None
    if requirement:
        try:
            support = runtime_support(requirement)
        except ValueError:  # no table for this runtime (yet)
            support = None
        if support is not None:
            report = check_graph(graph, support)
            predicted = {"loads": report.loads, "xnnpack_nodes": report.xnnpack_nodes,
                         "nodes": report.nodes, "xnnpack_macs": report.xnnpack_macs,
                         "macs": report.macs, "outside": report.outside,
                         "unknown": report.unknown, "missing": report.missing}
    row["predicted"] = predicted
    return row


def requirement_of(identity: dict) -> str | None:
    if "name" not in identity or not identity.get("version"):
        return None
    return f"{identity['name']}=={identity['version']}"


# --- the run -------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"size {text!r} is not WIDTHxHEIGHT, e.g. 480x320") from None
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="enet,segnet,unet,fcn8s,mobile_mask_rcnn")
    parser.add_argument("--sizes", default="480x320", help="the semantic models' sizes, WxH")
    parser.add_argument("--instance-size", default="512x512", help="the Mask R-CNN's size")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--instance-classes", type=int, default=81,
                        help="Mask R-CNN classes with the background (COCO: 81)")
    parser.add_argument("--calibration-images", type=int, default=4,
                        help="random images calibrating the Mask R-CNN's int8 export")
    parser.add_argument("--python", action="append",
                        help="a runtime's Python (repeatable); default: this one and "
                             ".side-envs/tflite-runtime/bin/python")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--exports", help="keep the exports in this folder (and reuse those "
                                          "there); default: a temporary folder")
    parser.add_argument("--out", default="benchmarks/results/runtimes_cpu")
    parser.add_argument("--time-one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.time_one:
        print(json.dumps(time_on_runtime(args.time_one, int(args.threads), args.warmup,
                                         args.runs, args.min_seconds, args.max_seconds)))
        return

    pythons = args.python or list(DEFAULT_PYTHONS)
    runtimes = [{"python": p, **runtime_identity(p)} for p in pythons]
    for runtime in runtimes:
        if "error" in runtime:
            raise SystemExit(f"{runtime['python']} cannot load a TFLite runtime: "
                             f"{runtime['error']}")
    models = args.models.split(",")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = {k: v for k, v in vars(args).items() if k not in ("time_one", "python", "exports")}
    command = "python benchmarks/runtimes_zoo.py " + " ".join(
        [f"--{k.replace('_', '-')} {v}" for k, v in shown.items()]
        + [f"--python {p}" for p in args.python or ()])
    report = {"device": cpu_description(), "command": command,
              "date": datetime.date.today().isoformat(),
              "runtimes": [{"name": r["name"], "version": r["version"],
                            "python": os.path.relpath(r["python"], ROOT)
                            if r["python"].startswith(str(ROOT)) else r["python"]}
                           for r in runtimes],
              "rows": []}

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(markdown(report))

    with tempfile.TemporaryDirectory(prefix="runtimes-zoo-") as scratch:
        folder = Path(args.exports or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        exports = export_all(models, sizes, parse_size(args.instance_size), args, folder)
        turn = 0
        for export in exports:
            for count in threads:
                # ABBA: the runtime that goes first alternates, file by file.
                order = runtimes if turn % 2 == 0 else runtimes[::-1]
                turn += 1
                for runtime in order:
                    measured = measure(runtime["python"], export["path"], count, args)
                    identity = measured.pop("runtime", None) or {
                        "name": runtime["name"], "version": runtime["version"]}
                    row = {"model": export["model"], "size": export["size"],
                           "precision": export["precision"], "quant_mode": export["quant_mode"],
                           "runtime": identity["name"], "runtime_version": identity["version"],
                           "threads": count, "tflite_bytes": Path(export["path"]).stat().st_size,
                           **measured,
                           **coverage(export["path"], measured.get("outside_nodes"),
                                      requirement_of(identity))}
                    report["rows"].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "outside_nodes"}),
                          flush=True)
                    save()
    save()
    print(markdown(report))


# --- the table -----------------------------------------------------------------------------------


def _share(part, whole) -> str:
    return f"{100 * part / whole:.0f}%" if part is not None and whole else "n/a"


def _coverage_cell(row: dict, what: str) -> str:
    """Measured share, and the prediction in brackets where it differs ("=" where it agrees)."""
    if "error" in row:
        return ""
    whole = row[what]
    measured = _share(row[f"xnnpack_{what}"], whole)
    if what == "nodes":
        measured = f"{row['xnnpack_nodes']}/{whole}"
    predicted = row.get("predicted")
    if predicted is None:
        return measured
    guess = (f"{predicted['xnnpack_nodes']}/{predicted['nodes']}" if what == "nodes"
             else _share(predicted["xnnpack_macs"], predicted["macs"]))
    return f"{measured} (=)" if guess == measured else f"{measured} (pred. {guess})"


def _ms(row: dict) -> str:
    if not row:
        return ""
    if "error" in row:
        return f"failed: {row['error'][:60]}"
    return f"{row['median_ms']:.1f}"


def _ops(counts: dict) -> str:
    return ", ".join(f"{op} x{n}" for op, n in counts.items()) or "none"


def findings(report: dict, cells: dict, names: list[str]) -> list[str]:
    """The table's main lines in words, from its numbers."""
    lines = []
    for name in names:
        ratios, int8_macs = [], []
        for (model, _, _), by_runtime in cells.items():
            pair = by_runtime.get(name, {})
            fp32, int8 = pair.get("fp32", {}), pair.get("int8", {})
            if "median_ms" in fp32 and "median_ms" in int8:
                ratios.append((int8["median_ms"] / fp32["median_ms"], model))
            if "median_ms" in int8 and int8.get("macs"):
                int8_macs.append(int8["xnnpack_macs"] / int8["macs"])
        if ratios:
            low, high = min(ratios), max(ratios)
            shares = sorted({f"{100 * share:.0f}%" for share in (min(int8_macs), max(int8_macs))},
                            key=lambda text: float(text[:-1]))
            span = (f"{low[0]:.2f}x ({low[1]})" if low == high
                    else f"{low[0]:.2f}x ({low[1]}) to {high[0]:.2f}x ({high[1]})")
            lines.append(
                f"On {name} the int8 exports take {span} the fp32 export's time, with XNNPACK "
                f"running {' to '.join(shares)} of their MACs.")
    rows = [r for r in report["rows"] if "median_ms" in r]
    predicted = [r for r in rows if r.get("predicted")]
    if predicted:
        agree = [r for r in predicted if r["predicted"]["xnnpack_nodes"] == r["xnnpack_nodes"]]
        macs = [r for r in predicted if r["predicted"]["xnnpack_macs"] == r["xnnpack_macs"]]
        lines.append(
            f"The support tables' prediction (`edgeseg check`) gives the measured XNNPACK node "
            f"count in {len(agree)} of {len(predicted)} rows"
            + ("" if len(agree) == len(predicted) else " (the others are listed below)")
            + f" and the measured XNNPACK MACs exactly in {len(macs)} of {len(predicted)}.")
    elif rows:
        lines.append("No support table was there for these runtimes: no prediction.")
    return lines


def markdown(report: dict) -> str:
    """Per model, size, precision (and thread count): the runtimes side by side."""
    device = report["device"]
    names = [r["name"] for r in report["runtimes"]]
    versions = "; ".join(f"{r['name']} {r['version']} (`{r['python']}`)"
                         for r in report["runtimes"])
    cells: dict = {}
    for row in report["rows"]:
        key = (row["model"], row["size"], row["threads"])
        cells.setdefault(key, {}).setdefault(row["runtime"], {})[row["precision"]] = row
    lines = [
        f"# Zoo latency on two TFLite runtimes, fp32 and int8, batch 1: {device['cpu']}\n",
        f"{device['cores']} cores, {vnni_text(device)}; {versions}; {report['date']}.\n",
        f"`{report['command']}`\n",
        "Random weights (trained-like PReLU slopes, which ENet's int8 export writes as "
        "LEAKY_RELU / MUL / SUB / ADD arithmetic: element-wise operators that a runtime without "
        "int8 XNNPACK runs on its own kernels); int8 has uint8 input and output for the "
        "semantic models; the Mask R-CNN's int8 export keeps its geometry and prediction layers "
        "in float. Each file, runtime and thread count timed in its own process (`invoke` only, "
        "median ms); the runtimes alternate file by file. int8/fp32: the int8 export's time "
        "over the fp32 export's on the same runtime. XNNPACK nodes / MACs: the graph's nodes "
        "and multiply-accumulates that the XNNPACK delegate ran, as measured; in brackets the "
        "support table's prediction (`edgeseg check`), \"=\" where it agrees.\n",
    ]
    header = "| model | size | threads | precision | GMACs |"
    for name in names:
        header += f" {name} ms | int8/fp32 | XNNPACK nodes | XNNPACK MACs |"
    lines += [header, "|---" * (5 + 4 * len(names)) + "|"]
    for (model, size, threads), by_runtime in cells.items():
        for precision in ("fp32", "int8"):
            first = next((by_runtime[n][precision] for n in names
                          if precision in by_runtime.get(n, {})), None)
            if first is None:
                continue
            line = f"| {model} | {size} | {threads} | {precision} | {first['macs'] / 1e9:.2f} |"
            for name in names:
                pair = by_runtime.get(name, {})
                row = pair.get(precision, {})
                ratio = ""
                if precision == "int8" and "median_ms" in row and "median_ms" in pair.get(
                        "fp32", {}):
                    ratio = f"{row['median_ms'] / pair['fp32']['median_ms']:.2f}"
                line += (f" {_ms(row)} | {ratio} | {_coverage_cell(row, 'nodes') if row else ''}"
                         f" | {_coverage_cell(row, 'macs') if row else ''} |")
            lines.append(line)
    lines += ["", *findings(report, cells, names), ""]
    lines += ["Operators left outside the delegate (measured; the prediction where it differs):",
              "", "| model | precision | runtime | outside XNNPACK | predicted |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        if "error" in row:
            continue
        predicted = row.get("predicted")
        guess = "" if predicted is None else (
            "=" if predicted["outside"] == row["ops_outside_delegate"] else _ops(predicted["outside"]))
        if predicted and predicted["unknown"]:
            guess += f" (never probed: {', '.join(predicted['unknown'])})"
        lines.append(f"| {row['model']} {row['size']} | {row['precision']} | {row['runtime']} | "
                     f"{_ops(row['ops_outside_delegate'])} | {guess} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
