"""``edgeseg train`` on the TensorFlow and the JAX backends, in one run on one machine.

The same command (ENet's recipe on the built-in synthetic data, at the paper's 480x360 crops)
runs once per backend, each in its own process: on TensorFlow through tf.data, on JAX through the
PyDataset pipeline with TensorFlow made unimportable (as on a GPU box without it). Epoch 1
includes tracing and XLA compilation, so the steady figure is epoch 2's training images / s
(input pipeline included, validation excluded). The ratio JAX / TensorFlow is what carries over
to another machine; the CPU is named in the result.

    python benchmarks/train_backends.py --out benchmarks/results/train_backends_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import edgeseg_without_tensorflow  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def train_args(data: str, out: Path, args) -> list[str]:
    return ["train", "--model", "enet", "--data", data, "--size", args.size, "--epochs", "2",
            "--steps-per-epoch", str(args.steps), "--batch", str(args.batch), "--out", str(out),
            "--quiet"]


def run_backend(backend: str, data: str, work: Path, args) -> dict:
    out = work / backend
    command = train_args(data, out, args)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if backend == "jax":
        command = edgeseg_without_tensorflow(*command)
    else:
        command = [sys.executable, "-m", "edgeseg.cli", *command]
        env["KERAS_BACKEND"] = "tensorflow"
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        return {"backend": backend, "error": result.stderr.strip().splitlines()[-1:]}
    epochs = json.loads((out / "run.json").read_text())["epochs"]
    return {
        "backend": backend,
        "tensorflow_imported": backend != "jax",  # the JAX command fails if it was
        "wall_s": round(wall, 1),
        "epoch1_train_images_per_s": round(epochs[0]["train_images_per_second"], 2),
        "epoch2_train_images_per_s": round(epochs[1]["train_images_per_second"], 2),
        "losses": [round(e["loss"], 4) for e in epochs],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="480x360")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    from edgeseg.data import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        width, height = (int(v) for v in args.size.split("x"))
        root = write_synthetic(work / "synth", n_train=32, n_val=4, size=(width, height), seed=0)
        rows = [run_backend(b, f"synthetic:{root}", work, args) for b in ("tensorflow", "jax")]
    by = {row["backend"]: row for row in rows}
    ratio = None
    if all("error" not in row for row in rows):
        ratio = round(by["jax"]["epoch2_train_images_per_s"]
                      / by["tensorflow"]["epoch2_train_images_per_s"], 2)
    result = {"cpu": cpu_name(), "command": " ".join(train_args("synthetic:<32 scenes>",
                                                                Path("<out>"), args)),
              "rows": rows, "jax_over_tensorflow": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# edgeseg train, TensorFlow vs JAX backend ({result['cpu']})", "",
        f"`{result['command']}`, epoch 2 (epoch 1 includes compilation); input pipeline "
        "included, validation excluded. One run, both backends on the same machine.", "",
        "| backend | pipeline | epoch 1 img/s | epoch 2 img/s | losses | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['backend']} | error: {row['error']} | | | | |")
            continue
        pipeline = "tf.data" if row["backend"] == "tensorflow" else "PyDataset, no TensorFlow"
        lines.append(f"| {row['backend']} | {pipeline} | {row['epoch1_train_images_per_s']} | "
                     f"{row['epoch2_train_images_per_s']} | {row['losses']} | {row['wall_s']} |")
    lines += ["", f"JAX / TensorFlow, epoch 2: {ratio}x"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
