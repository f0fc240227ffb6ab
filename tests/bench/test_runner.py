"""benchmark() on real (tiny) models, each row in its own process; broken artifacts, crashed
processes, the graph's delegation, thread sweeps, the network's input size; the results file."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import pytest

from edgeseg.bench import runner
from edgeseg.bench.report import merge_results
from edgeseg.bench.runner import (
    STAGES,
    benchmark,
    format_row,
    parse_size,
    parse_sizes,
    parse_threads,
    resolve_artifacts,
    synthetic_frame,
    write_jsonl,
)
from edgeseg.bench.stats import STAT_NAMES
from tests.bench.small_models import conv_prelu, fixed_reshape, save_small_enet, write_tflite

CLASSES = ["sky", "road", "car"]
# Model input 48x32 (W x H); frames of other sizes are resized to it.
FRAME_SIZES = [(64, 40), (40, 30)]
FAKE_DEVICE = {"label": "test machine"}


QUICK = {"warmup": 1, "runs": 2, "min_seconds": 0, "fingerprint": FAKE_DEVICE}


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> Path:
    """A small U-Net converted to .tflite, with the metadata sidecar an export writes."""
    import keras

    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build

    keras.utils.set_random_seed(0)
    model = build("unet", len(CLASSES), (32, 48, 3), filters=4, depth=2)
    path = tmp_path_factory.mktemp("models") / "unet_fp32.tflite"
    path.write_bytes(convert_keras_to_tflite(model))
    sidecar = {"model": "unet", "classes": CLASSES, "quant": "none",
               "normalisation": {"scale": 1 / 255, "offset": 0.0}}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


def copy_model(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    shutil.copy(source.with_name(source.name + ".json"), target.with_name(target.name + ".json"))
    return target


def assert_stats(stats: dict) -> None:
    assert set(stats) == set(STAT_NAMES)
    assert 0 < stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"]
    assert stats["std"] >= 0


def test_parse_sizes():
    assert parse_size("640x360") == (640, 360)
    assert parse_sizes("480x320, 1280X720") == [(480, 320), (1280, 720)]
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("640")


def test_parse_threads():
    assert parse_threads(None) == [None]
    assert parse_threads(4) == [4]
    assert parse_threads("1,2, 4") == [1, 2, 4]
    assert parse_threads([2, 1]) == [2, 1]
    for bad in ("0", "two", "1,,x", [0], [1.5], ""):
        with pytest.raises(ValueError, match="threads|thread counts"):
            parse_threads(bad)


def test_synthetic_frame_is_deterministic_and_varied():
    frame = synthetic_frame(64, 40)
    assert frame.shape == (40, 64, 3) and frame.dtype.name == "uint8"
    assert (frame == synthetic_frame(64, 40)).all()
    assert frame.std() > 20


@pytest.mark.slow
def test_benchmark_rows_of_a_tflite_model(tflite_model, tmp_path):
    rows = list(
        benchmark([tflite_model], sizes=FRAME_SIZES, threads=1, warmup=2, runs=5, min_seconds=0)
    )
    assert [row["size"] for row in rows] == ["64x40", "40x30"]
    for row in rows:
        assert row["error"] is None
        assert row["model"] == "unet" and row["quant"] == "none"  # from the sidecar
        assert row["format"] == "tflite" and row["artifact"] == str(tflite_model)
        assert row["model_input"] == "48x32"
        assert row["threads"] == 1 and row["runs"] == 5 and row["warmup"] == 2
        assert set(row["latency_ms"]) == set(STAGES)
        for stage in STAGES:
            assert_stats(row["latency_ms"][stage])
        latency = row["latency_ms"]
        # Each frame's total includes its inference, so every order statistic does too.
        assert latency["total"]["median"] >= latency["inference"]["median"]
        assert row["fps"] == pytest.approx(1000 / latency["total"]["median"], rel=1e-4)
        assert row["model_bytes"] == tflite_model.stat().st_size
        assert row["peak_rss_mb"] > 10 and row["load_ms"] > 0 and row["first_ms"] > 0
        assert row["tensorflow_loaded"] is False and row["model_size"] == "artifact"
        assert row["note"] is None and row["graph_nodes"] > 0
        assert row["xnnpack_partitions"] >= 1 and isinstance(row["ops_outside_delegate"], dict)
        assert row["device"]["cpu_cores"] and "packages" in row["device"]
        assert row["timestamp"].endswith("+00:00") and row["edgeseg_version"]

    results = tmp_path / "out" / "results.jsonl"
    write_jsonl(rows[:1], results)
    write_jsonl(rows[1:], results)  # appends
    assert results.read_text().count("\n") == 2
    assert merge_results([results]) == rows


@pytest.mark.slow
def test_min_seconds_keeps_timing_past_runs(tflite_model):
    (row,) = benchmark(
        [tflite_model], sizes=[(48, 32)], warmup=0, runs=1, min_seconds=0.2,
        fingerprint=FAKE_DEVICE,
    )
    total = row["latency_ms"]["total"]
    assert row["runs"] > 1
    assert row["runs"] * total["mean"] >= 150  # the frames filled most of the 200 ms


def test_broken_artifacts_become_error_rows(tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"this is not a flatbuffer")
    unknown = tmp_path / "model.pt"
    unknown.write_bytes(b"torch")
    missing = tmp_path / "missing.onnx"
    rows = list(
        benchmark([bogus, unknown, missing], sizes=FRAME_SIZES, warmup=0, runs=1, min_seconds=0,
                  fingerprint=FAKE_DEVICE)
    )
    assert len(rows) == 6
    for row in rows:
        assert isinstance(row["error"], str) and row["error"]
        assert row["latency_ms"] is None and row["fps"] is None and row["runs"] == 0
        assert row["device"] == FAKE_DEVICE and row["timestamp"]
        json.dumps(row, allow_nan=False)  # still a well-formed results line
    assert rows[0]["model"] == "bogus" and rows[0]["format"] == "tflite"
    assert rows[0]["model_bytes"] == len(b"this is not a flatbuffer")
    assert "unknown model format" in rows[2]["error"] and ".tflite" in rows[2]["error"]
    assert rows[4]["error"].startswith("FileNotFoundError") and rows[4]["model_bytes"] is None
    assert all(row["peak_rss_mb"] is None for row in rows)  # no process ran: no figure


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
         "the benchmark process was killed by signal 9 (SIGKILL)"),
        ("import sys; print('out of memory in the delegate', file=sys.stderr); sys.exit(3)",
         "the benchmark process exited with status 3: out of memory in the delegate"),
        ("import sys", "exited with status 0 without writing its row"),
    ],
)
def test_a_crashed_process_is_an_error_row(tflite_model, monkeypatch, script, said):
    monkeypatch.setattr(runner, "worker_command", lambda: [sys.executable, "-c", script])
    rows = list(benchmark([tflite_model], sizes=[(48, 32)], threads=[1, 2], **QUICK))
    assert [row["threads"] for row in rows] == [1, 2]
    for row in rows:
        assert said in row["error"] and row["latency_ms"] is None and row["runs"] == 0
        assert row["artifact"] == str(tflite_model) and row["size"] == "48x32"
        assert row["timestamp"]
        json.dumps(row, allow_nan=False)


def test_a_process_past_its_timeout_is_stopped(tflite_model, monkeypatch):
    script = "import time; time.sleep(60)"
    monkeypatch.setattr(runner, "worker_command", lambda: [sys.executable, "-c", script])
    (row,) = benchmark([tflite_model], sizes=[(48, 32)], timeout=0.5, **QUICK)
    assert row["error"] == ("TimeoutError: the benchmark process ran past 0.5 s and was "
                            "stopped")


@pytest.mark.slow
def test_a_broken_artifact_does_not_stop_the_next_one(tflite_model, tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"\0" * 64)
    rows = list(
        benchmark([bogus, tflite_model], sizes=[(48, 32)], warmup=0, runs=2, min_seconds=0,
                  fingerprint=FAKE_DEVICE)
    )
    assert rows[0]["error"] and rows[1]["error"] is None and rows[1]["runs"] == 2


@pytest.mark.slow
def test_one_artifact_per_size_by_pattern_and_by_directory(tflite_model, tmp_path):
    for size in ("64x40", "40x30"):
        copy_model(tflite_model, tmp_path / f"unet_{size}.tflite")
    sizes = [(64, 40), (40, 30), (80, 60)]
    pattern = str(tmp_path / "unet_{size}.tflite")
    assert [(p.name, s) for p, s in resolve_artifacts([pattern], sizes)] == [
        ("unet_64x40.tflite", (64, 40)),
        ("unet_40x30.tflite", (40, 30)),
        ("unet_80x60.tflite", (80, 60)),
    ]
    rows = list(benchmark([pattern], sizes, warmup=0, runs=1, min_seconds=0,
                          fingerprint=FAKE_DEVICE))
    assert [row["error"] is None for row in rows] == [True, True, False]
    assert rows[0]["artifact"].endswith("unet_64x40.tflite") and rows[0]["size"] == "64x40"
    assert "FileNotFoundError" in rows[2]["error"]

    # A directory: size-tagged files at their size, untagged ones at every size.
    copy_model(tflite_model, tmp_path / "unet_any.tflite")
    jobs = [(p.name, s) for p, s in resolve_artifacts([tmp_path], [(64, 40), (80, 60)])]
    assert jobs == [
        ("unet_64x40.tflite", (64, 40)),
        ("unet_any.tflite", (64, 40)),
        ("unet_any.tflite", (80, 60)),
    ]
    (tmp_path / "unet_any.tflite").unlink()
    rows = list(benchmark([tmp_path], [(64, 40), (80, 60)], warmup=0, runs=1, min_seconds=0,
                          fingerprint=FAKE_DEVICE))
    assert rows[0]["error"] is None
    assert rows[1]["artifact"] == str(tmp_path) and "no model file" in rows[1]["error"]


# --- each row in its own process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def enet_keras(tmp_path_factory) -> Path:
    return save_small_enet(tmp_path_factory.mktemp("enet"))


@pytest.fixture(scope="module")
def tiny_tflites(tmp_path_factory) -> dict[str, Path]:
    """Conv + PReLU in int8 and in float (PReLU as Keras writes it, not rewritten as
    ``convert_keras_to_tflite`` does), and a float graph whose shapes are constants."""
    folder = tmp_path_factory.mktemp("tiny")
    prelu = conv_prelu()
    return {
        "prelu_int8": write_tflite(prelu, folder / "prelu_int8.tflite", "int8"),
        "prelu_fp32": write_tflite(prelu, folder / "prelu_fp32.tflite"),
        "fixed": write_tflite(fixed_reshape(), folder / "fixed.tflite"),
    }


@pytest.fixture(scope="module")
def keras_then_tflite(enet_keras, tiny_tflites) -> list[dict]:
    """One benchmark() call: the .keras model, then a .tflite, at a 128x96 frame."""
    return list(benchmark([enet_keras, tiny_tflites["prelu_fp32"]], sizes=[(128, 96)],
                          **QUICK))


@pytest.mark.slow
def test_each_row_runs_in_its_own_process(keras_then_tflite):
    keras_row, tflite_row = keras_then_tflite
    assert keras_row["error"] is None and tflite_row["error"] is None
    assert keras_row["format"] == "keras" and tflite_row["format"] == "tflite"
    # The .tflite row's process never imported TensorFlow, though the .keras row's did (and so
    # did this test's process, which built both models).
    assert keras_row["tensorflow_loaded"] is True
    assert tflite_row["tensorflow_loaded"] is False
    assert "tensorflow" in sys.modules
    # Its peak memory is its own: no TensorFlow in it, from the row before or from this process.
    assert tflite_row["peak_rss_mb"] < 0.5 * keras_row["peak_rss_mb"]
    assert tflite_row["peak_rss_mb"] < 0.5 * runner_peak_mb()
    for row in keras_then_tflite:
        assert row["load_ms"] > 0 and row["first_ms"] > 0


def runner_peak_mb() -> float:
    from edgeseg.bench.worker import peak_rss_mb

    return peak_rss_mb()


def test_the_graph_report_of_a_tflite_row(tiny_tflites):
    from edgeseg.runtime_tflite import delegation, load_interpreter

    rows = list(benchmark([tiny_tflites["prelu_int8"], tiny_tflites["prelu_fp32"]],
                          sizes=[(24, 16)], **QUICK))
    int8, fp32 = rows
    assert int8["error"] is None and fp32["error"] is None
    # XNNPACK runs PReLU in float but not in int8: that one operator is left outside.
    assert int8["ops_outside_delegate"] == {"PRELU": 1}
    assert fp32["ops_outside_delegate"] == {}
    for row, path in zip(rows, (tiny_tflites["prelu_int8"], tiny_tflites["prelu_fp32"]),
                         strict=True):
        seen = delegation(load_interpreter(path))  # here, independently of the worker
        assert row["xnnpack_partitions"] == seen["partitions"] and seen["partitions"] in (1, 2)
        assert row["graph_nodes"] == seen["nodes"] == 2  # CONV_2D, PRELU
    # The runtime that ran them, as pip names it; XNNPACK ran the convolution (PRELU is not one).
    runtime = f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    for row in rows:
        assert row["runtime"] == runtime and row["xnnpack"] is True and row["warnings"] == []
    line = format_row(int8)
    assert line.startswith(f"prelu_int8 [tflite, {runtime}] 24x16")
    assert f"{int8['xnnpack_partitions']} XNNPACK partition" in line
    assert line.endswith("outside: PRELU x1")
    assert "outside" not in format_row(fp32)


def test_keras_rows_have_no_graph_report(keras_then_tflite):
    import keras
    import tensorflow as tf

    keras_row = keras_then_tflite[0]
    for key in ("graph_nodes", "xnnpack_partitions", "ops_outside_delegate", "xnnpack"):
        assert keras_row[key] is None
    assert keras_row["runtime"] == (f"keras {keras.__version__} (tensorflow {tf.__version__} "
                                    "backend, cpu)")


def test_a_threads_sweep_gives_one_row_per_count(tiny_tflites):
    rows = list(benchmark([tiny_tflites["prelu_fp32"]], sizes=[(24, 16), (48, 32)],
                          threads="1,2", **QUICK))
    assert [(row["size"], row["threads"]) for row in rows] == [
        ("24x16", 1), ("24x16", 2), ("48x32", 1), ("48x32", 2)]
    assert all(row["error"] is None and type(row["threads"]) is int for row in rows)
    (single,) = benchmark([tiny_tflites["prelu_fp32"]], sizes=[(24, 16)], threads=2, **QUICK)
    assert single["threads"] == 2


# --- the network's input size -------------------------------------------------------------------


@pytest.mark.slow
def test_model_size_frame_rebuilds_a_keras_model_at_the_frame(enet_keras, keras_then_tflite):
    (row,) = benchmark([enet_keras], sizes=[(128, 96)], model_size="frame", **QUICK)
    assert row["error"] is None and row["note"] is None
    assert (row["size"], row["model_input"], row["model_size"]) == ("128x96", "128x96", "frame")
    # By default the network runs at the artifact's own input, the frame resized to it.
    default = keras_then_tflite[0]
    assert (default["size"], default["model_input"]) == ("128x96", "64x48")
    assert default["model_size"] == "artifact"


def test_model_size_frame_resizes_a_tflite_graph_where_it_can(tiny_tflites):
    rows = list(benchmark([tiny_tflites["prelu_fp32"], tiny_tflites["fixed"]],
                          sizes=[(48, 32)], model_size="frame", **QUICK))
    resized, fixed = rows
    assert resized["error"] is None and resized["note"] is None
    assert resized["model_input"] == "48x32"
    # A reshape to constant shapes: the graph runs at its own size, and the row says so.
    assert fixed["error"] is None and fixed["model_input"] == "24x16"
    assert fixed["note"] == "the graph has a fixed input; ran at 24x16"
    (default,) = benchmark([tiny_tflites["prelu_fp32"]], sizes=[(48, 32)], **QUICK)
    assert default["model_input"] == "24x16" and default["note"] is None


def test_model_size_must_be_known(tiny_tflites):
    with pytest.raises(ValueError, match="model_size must be one of artifact, frame"):
        list(benchmark([tiny_tflites["fixed"]], sizes=[(48, 32)], model_size="network"))
