"""benchmarks/gpu/run.sh: its plan holds the issue's measurements, and its --quick mode runs on
the CPU with the JAX backend, without TensorFlow, into rows that ``edgeseg bench report`` puts
beside the ENet paper's."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"


def load_bench_jax():
    """benchmarks/gpu/bench_jax.py as a module (benchmarks/ is not a package); importing it
    imports neither Keras nor JAX."""
    spec = importlib.util.spec_from_file_location("bench_jax", SCRIPT.parent / "bench_jax.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_gpu_plan_holds_the_issue_measurements():
    bench_jax = load_bench_jax()
    jobs = bench_jax.plan(bench_jax.Settings())
    latency = {(j.model, j.size, j.precision) for j in jobs if j.batch == 1 and j.mode == "infer"}
    assert latency == {(m, s, p) for m in ("enet", "segnet", "unet")
                       for s in ((640, 360), (1280, 720), (1920, 1080)) for p in ("fp32", "bf16")}
    throughput = [(j.model, j.batch) for j in jobs if j.batch > 1 and j.mode == "infer"]
    assert throughput == [("enet", 8), ("enet", 8)]
    assert [(j.model, j.size, j.mode) for j in jobs if j.mode == "train"] == [
        ("enet", (480, 360), "train")]
    # ENet's measurements come first, so that a run cut short by its budget still has them.
    assert {j.model for j in jobs[:len(jobs) // 3]} == {"enet"}
    assert len(jobs) == 21


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        pytest.skip('the GPU script runs on Keras\' JAX backend: pip install "edgeseg[jax]"')
    out = tmp_path_factory.mktemp("gpu_quick")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    done = subprocess.run(["bash", str(SCRIPT), "--quick", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_quick_run_writes_jax_rows_without_tensorflow(quick_run):
    out, _ = quick_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tensorflow_loaded"] is False and summary["backend"] == "jax"
    assert summary["rows"] == len(rows) == 9 and summary["failed"] == 0
    assert {(r["model"], r["quant"], r["batch"]) for r in rows} == {
        ("enet", "fp32", 1), ("enet", "bf16", 1), ("enet", "fp32", 2), ("enet", "bf16", 2),
        ("enet training", "fp32", 2), ("segnet", "fp32", 1), ("segnet", "bf16", 1),
        ("unet", "fp32", 1), ("unet", "bf16", 1)}
    for row in rows:
        assert row["error"] is None, row["error"]
        assert row["backend"] == "jax" and "jax" in row["runtime"]
        assert row["compute_device"]["platform"] == "cpu"
        want = {"fp32": "fp32 (matmul precision: ", "bf16": "bf16 (mixed_bfloat16)"}
        assert row["precision"].startswith(want[row["quant"]])
        assert row["tensorflow_loaded"] is False
        assert row["device"]["jax_devices"], "the fingerprint names JAX's devices"
        total = row["latency_ms"]["total"]
        assert total["min"] <= total["median"] <= total["p90"]
        assert row["runs"] >= 2 and row["first_ms"] > 0 and row["load_ms"] > 0
        # fps counts images: the batch over the median time of one call.
        assert row["fps"] == pytest.approx(1000 * row["batch"] / total["median"])


@pytest.mark.slow
def test_report_puts_quick_rows_beside_the_paper_enet_rows(quick_run):
    out, done = quick_run
    report = (out / "report" / "report.md").read_text()
    assert "report in" in done.stdout
    section = re.search(r"## enet, network input 640x360\n(.*?)(\n## |\Z)", report, re.S)
    assert section, report[:2000]
    lines = section.group(1).splitlines()
    measured = [line for line in lines if "jax" in line]
    assert len(measured) == 4  # fp32 and bf16, batch 1 and batch 2
    assert any("NVIDIA Titan X (ENet paper)" in line and "| 7 |" in line for line in lines)
    assert "## enet training, network input 480x360" not in report  # quick trains at 128x96
    assert "## enet training, network input 128x96" in report
