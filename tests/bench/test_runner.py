"""benchmark() on a real (tiny) .tflite model, on broken artifacts, and its results file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeseg.bench.report import merge_results
from edgeseg.bench.runner import (
    STAGES,
    benchmark,
    parse_size,
    parse_sizes,
    resolve_artifacts,
    synthetic_frame,
    write_jsonl,
)
from edgeseg.bench.stats import STAT_NAMES

CLASSES = ["sky", "road", "car"]
# Model input 48x32 (W x H); frames of other sizes are resized to it.
FRAME_SIZES = [(64, 40), (40, 30)]
FAKE_DEVICE = {"label": "test machine"}


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
