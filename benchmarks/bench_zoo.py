"""Network-only latency of each zoo model, TFLite fp32 against full int8, in one run.

Usage:
    python benchmarks/bench_zoo.py --models enet,segnet,unet,fcn8s --sizes 480x320,640x360 \
        --threads 1,2,4 --out benchmarks/results/zoo_latency_cpu

Each (model, size) is built with random weights (latency does not depend on them; ENet's PReLU
slopes are set away from their untrained 0) and exported
by edgeseg's own converter, fp32 and full int8 (uint8 input and output, as ``edgeseg export
--quant int8`` writes; calibrated on random images), into a temporary folder. Each (file,
threads) is then timed by this script in a fresh process that imports no TensorFlow (LiteRT's
``invoke`` alone: the network, no pre- or post-processing), so that its load time, peak resident
memory (``VmHWM``) and the XNNPACK partition report are that file's own. Timing: warm-up, then
runs until both ``--runs`` and ``--min-seconds`` have passed (``--max-seconds`` caps it).

The floor: numpy's float32 GEMM peak on this machine, measured in the same run (before and after
the models, the larger kept) at each thread count, and each model's multiply-accumulates counted
from its layers (``edgeseg.models.analysis``): ``floor_ms = 2 * MACs / peak``, the time the
convolutions would take at the machine's best matrix-multiply speed. ``fp32 / floor`` says how
far LiteRT's float graph is from it.

Writes ``OUT.json`` (every row, the device, the command) and ``OUT.md``; rows are saved as they
come, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent


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


def time_one(path: str, threads: int, warmup: int, runs: int, min_seconds: float,
             max_seconds: float) -> dict:
    """Run in the fresh process: load, time ``invoke``, report the graph and memory."""
    import numpy as np

    from edgeseg.bench.worker import peak_rss_mb
    from edgeseg.runtime_tflite import delegation, load_interpreter

    started = time.perf_counter()
    interpreter = load_interpreter(path, num_threads=threads)
    load_ms = 1e3 * (time.perf_counter() - started)
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    shape = tuple(int(v) for v in detail["shape"])
    if np.issubdtype(detail["dtype"], np.integer):
        info = np.iinfo(detail["dtype"])
        feed = rng.integers(info.min, info.max + 1, shape).astype(detail["dtype"])
    else:
        feed = rng.random(shape, dtype=np.float32)
    interpreter.set_tensor(detail["index"], feed)
    started = time.perf_counter()
    interpreter.invoke()
    first_ms = 1e3 * (time.perf_counter() - started)
    times = timed_runs(interpreter.invoke, warmup, runs, min_seconds, max_seconds)
    graph = delegation(interpreter)
    return {
        "median_ms": statistics.median(times), "min_ms": min(times),
        "p90_ms": float(np.percentile(times, 90)), "runs": len(times),
        "load_ms": load_ms, "first_ms": first_ms, "peak_rss_mb": peak_rss_mb(),
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "graph_nodes": graph["nodes"], "xnnpack_partitions": graph["partitions"],
        "ops_outside_delegate": graph["outside"],
    }


def sgemm_peak_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """The best float32 GEMM rate numpy reaches with ``threads`` threads, in a fresh process
    (BLAS fixes its thread count at import)."""
    code = (
        "import time, numpy as np\n"
        f"n = {n}\n"
        "a = np.random.default_rng(0).random((n, n), dtype=np.float32); b = a.T.copy()\n"
        "a @ b\n"
        "best = 0.0; end = time.perf_counter() + " + str(seconds) + "\n"
        "while time.perf_counter() < end:\n"
        "    t = time.perf_counter(); a @ b; best = max(best, 2 * n**3 / (time.perf_counter() - t))\n"
        "print(best / 1e9)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip())


def cpu_description() -> dict:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(),
            "vnni": sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
            "avx512": "avx512f" in flags}


def vnni_text(device: dict) -> str:
    return ", ".join(device["vnni"]) if device["vnni"] else "no VNNI"


def write_results(report: dict, out: Path, markdown) -> None:
    """``OUT.json`` (the report) and ``OUT.md`` (``markdown(report)``), printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def export_pair(name: str, size: tuple[int, int], num_classes: int, folder: Path) -> dict:
    """fp32 and int8 .tflite of one zoo model at one size, and its MAC count."""
    import keras
    import numpy as np

    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build
    from edgeseg.models.analysis import profile_model

    width, height = size
    model = build(name, num_classes, (height, width, 3))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "alpha" in weight.path:
            # ENet's PReLU slopes as training leaves them (0.05 to 0.5), not the untrained 0s,
            # which an int8 export runs as plain ReLUs (layers.NEGLIGIBLE_SLOPE): faster, and
            # not what a user deploys.
            weight.assign(rng.uniform(0.05, 0.5, weight.shape).astype(np.float32))
    calibration = rng.random((8, height, width, 3), dtype=np.float32)
    files = {}
    for quant in ("none", "int8"):
        blob = convert_keras_to_tflite(
            model, quant, (lambda c=calibration: iter(c)) if quant == "int8" else None,
            io_type="uint8" if quant == "int8" else "float32")
        path = folder / f"{name}_{width}x{height}_{'int8' if quant == 'int8' else 'fp32'}.tflite"
        path.write_bytes(blob)
        files["int8" if quant == "int8" else "fp32"] = path
    info = {"files": files, "macs": profile_model(model).macs, "params": model.count_params()}
    keras.backend.clear_session()
    return info


def measure(path: Path, threads: int, args) -> dict:
    job = [sys.executable, str(Path(__file__).resolve()), "--time-one", str(path),
           "--threads", str(threads), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--min-seconds", str(args.min_seconds), "--max-seconds", str(args.max_seconds)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    done = subprocess.run(job, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="enet,segnet,unet,fcn8s")
    parser.add_argument("--sizes", default="480x320,640x360")
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--out", default="benchmarks/results/zoo_latency_cpu")
    parser.add_argument("--time-one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.time_one:
        print(json.dumps(time_one(args.time_one, int(args.threads), args.warmup, args.runs,
                                  args.min_seconds, args.max_seconds)))
        return

    threads = [int(t) for t in args.threads.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_zoo.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "time_one")
    import ai_edge_litert

    report = {"device": cpu_description(), "command": command,
              "runtime": f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}",
              "sgemm_gflops": {}, "rows": []}

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(markdown(report))

    for count in threads:
        report["sgemm_gflops"][str(count)] = sgemm_peak_gflops(count)
    print("sgemm GFLOP/s:", report["sgemm_gflops"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as folder:
        for name in args.models.split(","):
            for size in args.sizes.split(","):
                width, height = (int(v) for v in size.split("x"))
                pair = export_pair(name, (width, height), args.num_classes, Path(folder))
                for count in threads:
                    for quant, path in pair["files"].items():
                        row = {"model": name, "size": size, "quant": quant, "threads": count,
                               "macs": pair["macs"], "params": pair["params"],
                               "tflite_bytes": path.stat().st_size, **measure(path, count, args)}
                        report["rows"].append(row)
                        print(json.dumps(row), flush=True)
                        save()
    # The floor's peak: the better of the measurements before and after the models.
    for count in threads:
        key = str(count)
        report["sgemm_gflops"][key] = max(report["sgemm_gflops"][key], sgemm_peak_gflops(count))
    save()
    print(markdown(report))


def markdown(report: dict) -> str:
    """One line per model, size and thread count: fp32 and int8 side by side."""
    device = report["device"]
    vnni = vnni_text(device)
    peaks = ", ".join(f"{t} thread{'s' if t != '1' else ''} {g:.0f}"
                      for t, g in report["sgemm_gflops"].items())
    lines = [
        f"# Zoo network latency, TFLite fp32 against int8, batch 1: {device['cpu']}\n",
        f"{device['cores']} cores, {vnni}; {report['runtime']}; numpy sgemm peak (GFLOP/s, "
        f"same run): {peaks}.\n",
        f"`{report['command']}`\n",
        "Random weights, 12 classes; int8 has uint8 input and output (as `edgeseg export --quant "
        "int8` writes). Each file and thread count timed in its own process (`invoke` only). "
        "floor = 2 x MACs / sgemm peak at that thread count. Graph: XNNPACK partitions, and the "
        "operators left outside the delegate.\n",
        "| model | size | GMACs | threads | fp32 ms | int8 ms | int8 speed-up | floor ms | "
        "fp32 / floor | fp32 graph | int8 graph | fp32 peak RSS MB | int8 peak RSS MB |",
        "|---" * 13 + "|",
    ]
    cells: dict = {}
    for row in report["rows"]:
        cells.setdefault((row["model"], row["size"], row["threads"]), {})[row["quant"]] = row
    for (model, size, threads), pair in cells.items():
        fp32, int8 = pair.get("fp32", {}), pair.get("int8", {})
        macs = (fp32 or int8).get("macs", 0)
        peak = report["sgemm_gflops"].get(str(threads))
        floor = 2 * macs / (peak * 1e9) * 1e3 if peak else None

        def ms(row):
            return f"failed: {row['error'][:50]}" if "error" in row else (
                f"{row['median_ms']:.1f}" if row else "")

        def graph(row):
            if not row or "error" in row:
                return ""
            outside = row["ops_outside_delegate"]
            return f"{row['xnnpack_partitions']}" + (
                " + " + ", ".join(f"{op} x{n}" for op, n in outside.items()) if outside else "")

        def rss(row):
            return f"{row['peak_rss_mb']:.0f}" if row and row.get("peak_rss_mb") else ""

        ok = "median_ms" in fp32 and "median_ms" in int8
        lines.append(
            f"| {model} | {size} | {macs / 1e9:.2f} | {threads} | {ms(fp32)} | {ms(int8)} | "
            + (f"{fp32['median_ms'] / int8['median_ms']:.2f}x" if ok else "") + " | "
            + (f"{floor:.1f}" if floor else "") + " | "
            + (f"{fp32['median_ms'] / floor:.2f}" if floor and "median_ms" in fp32 else "")
            + f" | {graph(fp32)} | {graph(int8)} | {rss(fp32)} | {rss(int8)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
