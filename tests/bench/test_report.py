"""Reports merged from the results files of two (fake) devices."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from edgeseg.bench.fingerprint import device_fingerprint
from edgeseg.bench.report import (
    PAPER_ROWS,
    deduplicate,
    latency_series,
    merge_results,
    table_rows,
    write_report,
)
from edgeseg.bench.runner import write_jsonl
from edgeseg.bench.stats import fps, latency_stats
from tests.bench.fake_devices import fake_orin, fake_x86

SIZES = ("480x320", "640x360", "1280x720")


def fake_row(model, fmt, size, device, total_ms, timestamp="2026-01-01T00:00:00+00:00",
             model_input=None):
    """A measured row; the network ran at the frame's size unless ``model_input`` says."""
    times = total_ms * np.linspace(0.95, 1.1, 15)
    latency = {
        "preprocess": latency_stats(times * 0.1),
        "inference": latency_stats(times * 0.8),
        "postprocess": latency_stats(times * 0.1),
        "total": latency_stats(times),
    }
    return {
        "model": model, "artifact": f"/models/{model}.{fmt}", "format": fmt, "quant": "none",
        "size": size, "model_input": model_input or size, "resize": "resize", "threads": 4,
        "device": device, "latency_ms": latency, "fps": fps(latency["total"]["median"]),
        "runs": 15, "warmup": 3, "peak_rss_mb": 180.0, "model_bytes": 1_500_000, "error": None,
        "timestamp": timestamp, "edgeseg_version": "0.1.0",
    }


@pytest.fixture
def two_devices(tmp_path):
    orin_root = fake_orin(tmp_path / "orin")
    x86_root = fake_x86(tmp_path / "x86", gpu=True)
    orin = device_fingerprint(proc_root=orin_root, sys_root=orin_root)
    x86 = device_fingerprint(proc_root=x86_root, sys_root=x86_root)
    orin_rows = [fake_row(m, "tflite", s, orin, 30.0 * (i + 1) * (3 if m == "unet" else 1))
                 for m in ("enet", "unet") for i, s in enumerate(SIZES)]
    x86_rows = [fake_row(m, "onnx", s, x86, 2.0 * (i + 1)) for m in ("enet",)
                for i, s in enumerate(SIZES)]
    broken = dict(fake_row("enet", "tflite", "640x360", x86, 1.0), latency_ms=None, fps=None,
                  runs=0, error="RuntimeError: Select TF ops are not supported")
    files = [tmp_path / "orin.jsonl", tmp_path / "x86.jsonl"]
    write_jsonl(orin_rows, files[0])
    write_jsonl([*x86_rows, broken], files[1])
    # A blank line, as an editor or a concatenation may leave.
    with open(files[1], "a") as file:
        file.write("\n")
    return files, orin_rows, x86_rows, broken


def test_paper_rows_are_the_published_enet_table():
    by_key = {(r["model"], r["device"]["label"], r["size"]): r for r in PAPER_ROWS}
    # 11 ENet-paper rows (SegNet has no 1280x720 TX1 entry) and the seed's Mask R-CNN figure.
    assert len(PAPER_ROWS) == 12
    mask_rcnn = by_key[("mobile_mask_rcnn", "Tesla K40c (Mobile_Mask_RCNN, seed document)",
                        "512x512")]
    assert mask_rcnn["latency_ms"]["total"]["median"] == 145 and mask_rcnn["fps"] == 6.9
    assert all(r["reference"] for r in PAPER_ROWS)
    enet_tx1 = by_key[("ENet", "Jetson TX1 (ENet paper)", "480x320")]
    assert enet_tx1["latency_ms"]["total"]["median"] == 47 and enet_tx1["fps"] == 21.1
    segnet = by_key[("SegNet", "NVIDIA Titan X (ENet paper)", "1920x1080")]
    assert segnet["latency_ms"]["total"]["median"] == 637 and segnet["fps"] == 1.6
    assert ("SegNet", "Jetson TX1 (ENet paper)", "1280x720") not in by_key


def test_merged_report_of_two_devices(two_devices, tmp_path):
    files, orin_rows, x86_rows, broken = two_devices
    rows = merge_results(files)
    assert rows == [*orin_rows, *x86_rows, broken]

    written = write_report(rows, tmp_path / "report")
    markdown = written["markdown"].read_text()
    assert "## enet" in markdown and "## unet" in markdown and "## SegNet" in markdown
    assert "Jetson Orin Nano (15W)" in markdown
    assert "NVIDIA H100 80GB HBM3 / 535.104.05" in markdown
    assert "Select TF ops are not supported" in markdown.split("## Errors")[1]

    with open(written["csv"], newline="") as file:
        records = list(csv.DictReader(file))
    assert len(records) == len(orin_rows) + len(x86_rows) + 1 + len(PAPER_ROWS)
    enet_640 = [r for r in records if r["model"].lower() == "enet" and r["size"] == "640x360"]
    # Grouped: the 640x360 ENet rows are consecutive, measured first, then the paper's.
    start = records.index(enet_640[0])
    assert records[start : start + len(enet_640)] == enet_640
    assert [r["reference"] != "" for r in enet_640] == [False, False, False, True, True]
    devices = {r["device"] for r in enet_640}
    assert {"Jetson Orin Nano (15W)", "NVIDIA H100 80GB HBM3 / 535.104.05",
            "Jetson TX1 (ENet paper)", "NVIDIA Titan X (ENet paper)"} <= devices
    orin_enet = next(r for r in enet_640 if r["device"].startswith("Jetson Orin"))
    expected = orin_rows[1]["latency_ms"]["total"]["median"]
    assert float(orin_enet["total_ms"]) == pytest.approx(expected)
    assert float(orin_enet["fps"]) == pytest.approx(1000 / expected)
    paper = next(r for r in enet_640 if r["device"] == "Jetson TX1 (ENet paper)")
    assert float(paper["total_ms"]) == 69 and float(paper["fps"]) == 14.6
    failed = [r for r in records if r["error"]]
    assert len(failed) == 1 and failed[0]["total_ms"] == ""

    png = written["plot"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_paper_rows_sit_beside_rows_of_the_same_network_input_only(two_devices, tmp_path):
    orin = merge_results(two_devices[0][:1])[0]["device"]
    # A 240x180 network fed 480x320 frames, as a model exported at 240x180 is.
    small = fake_row("enet", "tflite", "480x320", orin, 5.0, model_input="240x180")
    rows = merge_results(two_devices[0]) + [small]
    records = table_rows(rows + [dict(r) for r in PAPER_ROWS])
    by_input = {}
    for record in records:
        if not record["error"] and str(record["model"]).lower() == "enet":
            by_input.setdefault(record["model_input"], []).append(record)
    assert [r["reference"] is not None for r in by_input["240x180"]] == [False]
    assert by_input["240x180"][0]["size"] == "480x320"
    paper_480 = [r for r in by_input["480x320"] if r["reference"]]
    assert {r["device"] for r in paper_480} == {"Jetson TX1 (ENet paper)"}
    assert all(r["size"] == r["model_input"] for r in by_input["480x320"])

    markdown = write_report(rows, tmp_path / "report")["markdown"].read_text()
    table = markdown.split("## enet, network input 240x180")[1].split("\n## ")[0]
    assert "paper" not in table and "| 480x320 |" in table
    # The plot's point for it is at 240x180 pixels, labelled with its frame.
    series = latency_series(records)
    resized = [points for (label, _), points in series.items() if "(frame 480x320)" in label]
    assert resized == [[(240 * 180, pytest.approx(5.0 * np.median(np.linspace(0.95, 1.1, 15))))]]


def test_plot_has_one_line_per_device_format_and_model(two_devices):
    files = two_devices[0]
    rows = merge_results(files) + [dict(r) for r in PAPER_ROWS]
    series = latency_series(table_rows(rows))
    measured = {label for label, reference in series if not reference}
    assert measured == {
        "Jetson Orin Nano (15W): enet tflite 4 threads",
        "Jetson Orin Nano (15W): unet tflite 4 threads",
        "NVIDIA H100 80GB HBM3 / 535.104.05: enet onnx 4 threads",
    }
    # ENet / SegNet x TX1 / Titan X, and Mask R-CNN on the K40c
    assert sum(reference for _, reference in series) == 5
    assert all(len(points) == 3 for (_, ref), points in series.items() if not ref)
    orin_unet = series[("Jetson Orin Nano (15W): unet tflite 4 threads", False)]
    assert [p for p, _ in orin_unet] == [480 * 320, 640 * 360, 1280 * 720]


def test_without_matplotlib_the_table_is_written_and_the_plot_names_the_extra(
    two_devices, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r'pip install "edgeseg\[plot\]"'):
        write_report(merge_results(two_devices[0]), tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "report.csv").is_file()
    assert not (tmp_path / "report" / "latency_vs_resolution.png").exists()


def test_rerun_rows_replace_older_ones(two_devices):
    orin_rows = two_devices[1]
    newer = dict(orin_rows[0], timestamp="2026-02-01T00:00:00+00:00", fps=99.0)
    kept = deduplicate([orin_rows[0], newer, *orin_rows[1:]])
    assert len(kept) == len(orin_rows) and newer in kept and orin_rows[0] not in kept


def test_bad_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"model": "enet", "size": "640x360"})
    path.write_text(f"{good}\n\n{{not json\n{good}\n")
    with pytest.raises(ValueError, match=r"results\.jsonl:3: not valid JSON"):
        merge_results([path])
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"results\.jsonl:2: not a benchmark row"):
        merge_results([path])


def test_a_row_cut_off_by_a_killed_run_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"model": "enet", "size": "640x360"})
    path.write_text(f"{good}\n{good[:20]}")
    with pytest.warns(UserWarning, match=r"results\.jsonl:2: skipped a truncated last line"):
        rows = merge_results([path])
    assert len(rows) == 1


def test_rows_of_two_runtimes_stay_apart_and_the_table_names_them(two_devices, tmp_path):
    orin = merge_results(two_devices[0][:1])[0]["device"]
    litert = dict(fake_row("enet", "tflite", "480x320", orin, 14.0),
                  runtime="ai-edge-litert 2.3.0", xnnpack=True)
    old = dict(fake_row("enet", "tflite", "480x320", orin, 149.0),
               runtime="tflite-runtime 2.14.0", xnnpack=False,
               timestamp="2026-01-02T00:00:00+00:00")
    assert len(deduplicate([litert, old])) == 2  # the same file, device and size
    series = latency_series(table_rows([litert, old]))
    assert sorted(label for label, _ in series) == [
        "Jetson Orin Nano (15W): enet tflite (ai-edge-litert 2.3.0) 4 threads",
        "Jetson Orin Nano (15W): enet tflite (tflite-runtime 2.14.0) 4 threads"]
    written = write_report([litert, old], tmp_path / "report", include_paper=False, plot=False)
    lines = written["markdown"].read_text().splitlines()
    header = next(line for line in lines if line.startswith("| frame |"))
    column = [cell.strip() for cell in header.split("|")].index("runtime")
    cells = [[cell.strip() for cell in line.split("|")][column] for line in lines
             if line.startswith("| 480x320 |")]
    assert cells == ["ai-edge-litert 2.3.0", "tflite-runtime 2.14.0"]
    with open(written["csv"], newline="") as file:
        by_runtime = {r["runtime"]: r["xnnpack"] for r in csv.DictReader(file)}
    assert by_runtime == {"ai-edge-litert 2.3.0": "True", "tflite-runtime 2.14.0": "False"}


# --- precision and batch ------------------------------------------------------------------------


def gpu_rows(x86: dict) -> list[dict]:
    """Rows as ``benchmarks/gpu/bench_jax.py`` writes them (``quant`` the precision, its Keras
    policy, ``batch``; the batch in the runtime), and ``edgeseg bench`` .keras rows on the GPU
    (``precision``, ``compute_device``, ``backend``) of ENet at 640x360."""
    runtime = "keras 3.10.0 (jax 0.6.2 backend, gpu: NVIDIA H200)"
    rows = []
    for quant, policy in (("fp32", "float32"), ("bf16", "mixed_bfloat16")):
        for batch, ms in ((1, 4.0), (8, 20.0)):
            rows.append(dict(
                fake_row("enet", "keras", "640x360", x86, ms), artifact=None, quant=quant,
                precision_policy=policy, batch=batch, backend="jax", threads=None,
                runtime=runtime if batch == 1 else f"{runtime}, batch {batch}"))
    h200 = {"platform": "gpu", "name": "NVIDIA H200", "memory_mib": 143771,
            "driver": "570.86.15", "compute_capability": "9.0"}
    for precision, ms in (("fp32 (matmul precision: default, TF32 on this GPU)", 6.0),
                          ("bf16 (mixed_bfloat16)", 5.0)):
        rows.append(dict(fake_row("enet", "keras", "640x360", x86, ms), quant=None,
                         precision=precision, batch=1, backend="jax", compute_device=h200,
                         threads=None, runtime="keras 3.10.0 (jax 0.6.2 backend, gpu NVIDIA H200)"))
    return rows


def test_precision_and_batch_columns_beside_the_paper_and_old_rows(two_devices, tmp_path):
    files, orin_rows, _, _ = two_devices
    x86 = merge_results(files)[len(orin_rows)]["device"]
    gpu = gpu_rows(x86)
    old = merge_results(files)  # rows written before precision and batch existed
    assert all("batch" not in row and "precision" not in row for row in old)
    cpu_keras = dict(fake_row("enet", "keras", "640x360", x86, 90.0), quant=None, batch=1,
                     precision="fp32 (matmul precision: default)", backend="tensorflow",
                     compute_device={"platform": "cpu", "name": "cpu"}, threads=None)
    results = tmp_path / "gpu.jsonl"
    write_jsonl([*gpu, cpu_keras], results)
    rows = merge_results([*files, results])
    # fp32 / bf16 at batch 1 and 8 of one file and device are rows of their own.
    assert len(deduplicate(rows)) == len(rows)
    written = write_report(rows, tmp_path / "report", plot=False)

    with open(written["csv"], newline="") as file:
        records = [r for r in csv.DictReader(file) if r["size"] == "640x360"
                   and r["model"].lower() == "enet"]
    keyed = {(r["device"], r["precision"], r["batch"]): r for r in records}
    # The GPU script's rows: the precision from quant and policy, the batch as written.
    assert float(keyed[("NVIDIA H100 80GB HBM3 / 535.104.05", "fp32", "8")]["total_ms"]) > 0
    assert ("NVIDIA H100 80GB HBM3 / 535.104.05", "bf16 (mixed_bfloat16)", "8") in keyed
    # edgeseg bench's .keras rows: the device their backend ran on, not the machine's GPU.
    assert ("NVIDIA H200 / 570.86.15", "bf16 (mixed_bfloat16)", "1") in keyed
    assert ("NVIDIA H200 / 570.86.15", "fp32 (matmul precision: default, TF32 on this GPU)",
            "1") in keyed
    cpu = [key for key in keyed if key[1] == "fp32 (matmul precision: default)"]
    assert len(cpu) == 1 and "H100" not in cpu[0][0] and "Xeon" in cpu[0][0]
    # Old rows: batch 1, precision from quant ("none": fp32); the paper's: batch 1, unstated.
    orin = [r for r in records if r["device"].startswith("Jetson Orin")]
    assert [(r["quant"], r["precision"], r["batch"]) for r in orin] == [("none", "fp32", "1")]
    paper = [r for r in records if r["reference"]]
    assert {r["device"] for r in paper} == {"Jetson TX1 (ENet paper)",
                                            "NVIDIA Titan X (ENet paper)"}
    assert {(r["precision"], r["batch"]) for r in paper} == {("", "1")}

    markdown = written["markdown"].read_text()
    table = markdown.split("## enet, network input 640x360")[1].split("\n## ")[0]
    header = [cell.strip() for cell in table.strip().splitlines()[0].split("|")]
    assert "precision" in header and "batch" in header and "device" in header
    lines = [[cell.strip() for cell in line.split("|")] for line in table.strip().splitlines()[2:]]
    at = {name: header.index(name) for name in ("device", "precision", "batch")}
    cells = {(line[at["device"]], line[at["precision"]], line[at["batch"]]) for line in lines}
    assert ("NVIDIA H200 / 570.86.15", "bf16 (mixed_bfloat16)", "1") in cells
    assert ("NVIDIA H100 80GB HBM3 / 535.104.05", "bf16 (mixed_bfloat16)", "8") in cells
    assert ("NVIDIA Titan X (ENet paper)", "", "1") in cells
    assert ("Jetson Orin Nano (15W)", "fp32", "1") in cells

    # The plot: one line per precision and batch, the batch said once.
    series = {label for label, _ in latency_series(table_rows(rows))}
    assert "NVIDIA H200 / 570.86.15: enet keras (keras 3.10.0 (jax 0.6.2 backend, gpu NVIDIA " \
           "H200)) bf16 (mixed_bfloat16)" in series
    batch8 = [label for label in series if "batch 8" in label]
    assert len(batch8) == 2 and all(label.count("batch 8") == 1 for label in batch8)
