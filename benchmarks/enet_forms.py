"""ENet's export forms side by side: before and after issue 14, and the PReLU's cost in int8.

Usage:
    git worktree add /tmp/before e6cb23e
    python benchmarks/enet_forms.py --before-root /tmp/before --out benchmarks/results/enet_forms_cpu

One random-weight ENet at 480x320 (12 classes; PReLU slopes set to 0.05-0.5, as training leaves
them) is exported fp32 and full int8 (uint8 I/O) by:
- ``before``: the edgeseg at ``--before-root`` (run in its own process with it on the path);
- ``now``: this edgeseg;
- ``now, PReLU as x + relu((alpha - 1) x)``: the two-operator PReLU form (not the default: it
  loses more int8 accuracy, see ``edgeseg.models.layers.deployable``);
- ``now, ReLU``: the same network with its slopes at 0, which exports as ReLUs: what int8 would
  run at if the PReLU cost nothing.
All files are then loaded in one fresh process (no TensorFlow) and timed interleaved, round after
round, so that they share the machine's state; the median of each is reported with its XNNPACK
partitions and the operators outside the delegate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_zoo import cpu_description, vnni_text, write_results  # noqa: E402

EXPORT = """
import sys
import numpy as np
from edgeseg.converters.tflite import convert_keras_to_tflite
from edgeseg.models import build
import edgeseg.models.layers as layers

folder, tag, form = sys.argv[1:4]
if form == "two-op":
    from keras import ops
    layers.LeakyDecomposedPReLU.call = lambda self, x: x + ops.relu(x * (self.alpha - 1.0))
model = build("enet", 12, (320, 480, 3))
rng = np.random.default_rng(0)
for weight in model.weights:
    if "alpha" in weight.path:
        slopes = rng.uniform(0.05, 0.5, weight.shape).astype(np.float32)
        weight.assign(slopes * 0 if form == "relu" else slopes)
calibration = rng.random((8, 320, 480, 3), dtype=np.float32)
with open(f"{folder}/{tag}_int8.tflite", "wb") as file:
    file.write(convert_keras_to_tflite(model, "int8", lambda: iter(calibration), io_type="uint8"))
if form == "default":
    with open(f"{folder}/{tag}_fp32.tflite", "wb") as file:
        file.write(convert_keras_to_tflite(model))
"""

TIME = """
import json, statistics, sys, time
import numpy as np
from edgeseg.runtime_tflite import delegation, load_interpreter

threads, rounds, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
interpreters = {}
for path in files:
    interpreter = load_interpreter(path, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.float32:
        feed = rng.random(detail["shape"], dtype=np.float32)
    else:
        feed = rng.integers(0, 256, detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], feed)
    for _ in range(3):
        interpreter.invoke()
    interpreters[path] = interpreter
times = {path: [] for path in files}
for _ in range(rounds):
    for path, interpreter in interpreters.items():
        for _ in range(3):
            start = time.perf_counter()
            interpreter.invoke()
            times[path].append(1e3 * (time.perf_counter() - start))
rows = []
for path in files:
    graph = delegation(interpreters[path])
    rows.append({"file": path, "median_ms": statistics.median(times[path]),
                 "runs": len(times[path]), "xnnpack_partitions": graph["partitions"],
                 "ops_outside_delegate": graph["outside"], "graph_nodes": graph["nodes"],
                 "tensorflow_loaded": "tensorflow" in sys.modules})
print(json.dumps(rows))
"""

VARIANTS = (  # (tag, form, edgeseg root: None for this one)
    ("before", "default", "before"),
    ("now", "default", None),
    ("now_two_op_prelu", "two-op", None),
    ("now_relu", "relu", None),
)
LABELS = {
    "before_fp32": "before (e6cb23e), fp32",
    "before_int8": "before (e6cb23e), int8",
    "now_fp32": "now, fp32",
    "now_int8": "now, int8 (PReLU in four operators, the default)",
    "now_two_op_prelu_int8": "now, int8 with PReLU as x + relu((alpha - 1) x)",
    "now_relu_int8": "now, int8 with ReLU in place of PReLU (the PReLU's cost removed)",
}


def run_python(code: str, args: list[str], root: str) -> str:
    env = dict(os.environ, PYTHONPATH=root)
    # Run from ``root``: ``python -c`` puts the working directory first on the path.
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-root", required=True,
                        help="a checkout of the commit to compare with (git worktree add ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/enet_forms_cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="enet-forms-") as folder:
        for tag, form, root in VARIANTS:
            run_python(EXPORT, [folder, tag, form],
                       args.before_root if root == "before" else str(HERE.parent))
        files = [str(Path(folder) / f"{key}.tflite") for key in LABELS]
        rows = json.loads(run_python(TIME, [str(args.threads), str(args.rounds), *files],
                                     str(HERE.parent)).strip().splitlines()[-1])
    for row in rows:
        row["variant"] = Path(row.pop("file")).stem
    report = {"device": cpu_description(), "threads": args.threads,
              "command": f"python benchmarks/enet_forms.py --before-root {args.before_root} "
                         f"--threads {args.threads} --rounds {args.rounds} --out {args.out}",
              "rows": rows}
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    device = report["device"]
    vnni = vnni_text(device)
    by = {r["variant"]: r for r in report["rows"]}
    fp32 = by["now_fp32"]["median_ms"]
    lines = [
        f"# ENet 480x320 export forms, LiteRT, {report['threads']} threads: {device['cpu']}\n",
        f"{device['cores']} cores, {vnni}. `{report['command']}`\n",
        "Random weights (PReLU slopes 0.05-0.5), 12 classes; int8 with uint8 I/O. All files "
        "timed interleaved in one process (network only, `invoke`).\n",
        "| export | median ms | against now fp32 | XNNPACK partitions | outside the delegate | "
        "graph nodes |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        row = by[key]
        outside = ", ".join(f"{op} x{n}" for op, n in row["ops_outside_delegate"].items())
        lines.append(f"| {label} | {row['median_ms']:.2f} | {fp32 / row['median_ms']:.2f}x | "
                     f"{row['xnnpack_partitions']} | {outside or 'none'} | "
                     f"{row['graph_nodes']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
