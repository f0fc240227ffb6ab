"""edgeseg export: option validation, atomic writes, validation report, runtimes without TF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.converters.formats import EXPORT_FORMATS, check_export_options, formats_table_markdown
from tests.helpers import BLOCK_TENSORFLOW


@pytest.mark.parametrize(
    ("fmt", "quant", "io", "output", "message"),
    [
        ("onnx", "int8", "float32", "logits", r"--format onnx accepts --quant none"),
        ("tflite", "fp16", "uint8", "logits", r"--io uint8 needs a full-integer model"),
        ("tensorrt", "none", "float32", "logits", r"--format tensorrt accepts --quant fp16 / int8"),
        ("tflite", "int8", "uint8", "probs", r"integer outputs are quantised logits"),
        ("coreml", "none", "float32", "logits", r"format must be one of tflite, onnx"),
    ],
)
def test_invalid_combinations_say_what_is_allowed(fmt, quant, io, output, message):
    with pytest.raises(ValueError, match=message):
        check_export_options(fmt, quant, io, output)


def test_formats_table_lists_every_format():
    table = formats_table_markdown()
    for name, row in EXPORT_FORMATS.items():
        assert f"| {name} |" in table
        assert (row.suffix or "(folder)") in table


# --- end to end on a briefly trained tiny model -------------------------------------------------

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny U-Net trained for a few steps on a tiny synthetic set, as `edgeseg train` writes it."""
    from edgeseg.data import write_synthetic
    from edgeseg.train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=12, n_val=6, size=(64, 48), seed=5)
    out = tmp_path_factory.mktemp("run")
    train(
        TrainConfig(
            model="unet",
            data=f"synthetic:{root}",
            out=str(out),
            size=(64, 48),
            epochs=2,
            batch=4,
            optimizer="adam",
            lr=3e-3,
            weight_map=False,
            elastic=False,
            steps_per_epoch=15,
            model_options={"filters": 8, "depth": 2, "dropout": 0.0},
            verbose=0,
        )
    )
    return out


@pytest.mark.slow
def test_tflite_fp32_export_agrees_with_keras_and_eval_reads_it(trained_run, tmp_path):
    from edgeseg.converters.export import ExportRequest, export
    from edgeseg.evaluate import evaluate

    out = tmp_path / "model.tflite"
    report = export(ExportRequest(model=str(trained_run / "best.keras"), out=str(out), num_val=6))
    assert out.is_file() and report["passed"]
    check = report["validation"]
    assert check["pixel_agreement"] >= 0.995
    assert abs(check["miou_drop_points"]) < 0.5
    on_disk = json.loads((tmp_path / "model.tflite.report.json").read_text())
    assert on_disk["validation"]["pixel_agreement"] == pytest.approx(check["pixel_agreement"])
    sidecar = json.loads((tmp_path / "model.tflite.json").read_text())
    run = json.loads((trained_run / "run.json").read_text())
    assert sidecar["classes"] == run["classes"] and sidecar["size"] == [64, 48]
    from edgeseg.converters.tflite_metadata import read_embedded_metadata

    embedded = read_embedded_metadata(out.read_bytes())
    assert embedded["classes"] == run["classes"] and embedded["model"] == "unet"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    data = run["config"]["data"]
    from_keras = evaluate(trained_run / "best.keras", data)
    from_tflite = evaluate(out, data)
    assert from_tflite["format"] == "tflite"
    assert from_tflite["miou"] == pytest.approx(from_keras["miou"], abs=0.005)


@pytest.mark.slow
def test_int8_export_with_uint8_io_and_a_failing_drop_threshold(trained_run, tmp_path):
    from edgeseg.converters.export import ExportRequest, ExportValidationError, export
    from edgeseg.runtime import load_predictor

    out = tmp_path / "model_int8.tflite"
    with pytest.raises(ExportValidationError, match="mIoU dropped"):
        export(
            ExportRequest(
                model=str(trained_run / "best.keras"),
                quant="int8",
                io="uint8",
                out=str(out),
                num_calib=12,
                num_val=6,
                max_miou_drop=-100,
            )
        )
    report = json.loads((tmp_path / "model_int8.tflite.report.json").read_text())
    assert report["passed"] is False
    assert report["validation"]["pixel_agreement"] > 0.8
    predictor = load_predictor(out)
    detail = predictor.interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8


@pytest.mark.slow
def test_qat_export_fine_tunes_and_writes_a_full_int8_graph(trained_run, tmp_path):
    pytest.importorskip("tensorflow_model_optimization")
    from edgeseg.converters.export import ExportRequest, export
    from edgeseg.converters.qat import float_ops
    from edgeseg.runtime import load_predictor

    out = tmp_path / "model_qat.tflite"
    report = export(ExportRequest(model=str(trained_run / "best.keras"), quant="qat", io="int8",
                                  out=str(out), num_calib=8, num_val=6, qat_epochs=1))
    assert report["passed"] and out.is_file()
    assert float_ops(out.read_bytes()) == []
    assert load_predictor(out).interpreter.get_input_details()[0]["dtype"] == np.int8
    validation = report["validation"]
    # The int8 graph is the fine-tuned model, not the source: most pixels still agree.
    assert validation["pixel_agreement"] > 0.6, validation
    assert validation["miou_drop_points"] == pytest.approx(
        100 * (validation["miou_keras"] - validation["miou_export"]))


def test_qat_export_needs_logits():
    with pytest.raises(ValueError, match="--quant qat fine-tunes on the logits"):
        check_export_options("tflite", "qat", "float32", "mask")


def test_an_interrupted_export_leaves_no_file_at_the_destination(
    trained_run, tmp_path, monkeypatch
):
    from edgeseg.converters import export as export_module

    def failing_convert(request, model, calibration, train_spec, tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_convert", failing_convert)
    out = tmp_path / "model.tflite"
    with pytest.raises(KeyboardInterrupt):
        export_module.export(
            export_module.ExportRequest(model=str(trained_run / "best.keras"), out=str(out))
        )
    assert list(tmp_path.iterdir()) == []


def test_int8_without_calibration_data_is_refused(tmp_path):
    from edgeseg.converters.export import ExportRequest, export
    from edgeseg.models import build

    path = tmp_path / "bare.keras"
    build("unet", 3, (32, 48, 3), filters=4, depth=2).save(path)
    with pytest.raises(ValueError, match="--calib SPEC"):
        export(ExportRequest(model=str(path), quant="int8", io="uint8"))


NO_TENSORFLOW = BLOCK_TENSORFLOW + """import numpy as np
from edgeseg.runtime import load_predictor
predictor = load_predictor(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], predictor(x))
print(json.dumps({"format": predictor.format, "size": predictor.input_size,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_exported_tflite_runs_where_tensorflow_is_not_importable(trained_run, tmp_path):
    from edgeseg.converters.export import ExportRequest, export
    from edgeseg.runtime import load_predictor

    out = tmp_path / "device.tflite"
    export(ExportRequest(model=str(trained_run / "best.keras"), out=str(out), num_val=2))
    x = np.random.default_rng(0).random((1, 48, 64, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TENSORFLOW,
            str(out),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"format": "tflite", "size": [64, 48], "tensorflow": False}
    want = load_predictor(trained_run / "best.keras")(x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-4)
