"""``edgeseg bench --precision``: .keras models at fp32 and bf16 (Keras' mixed dtype policy),
other formats at fp32 only; the rows name backend, device, precision and batch; a Mask R-CNN at
bf16 gives float32 detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bench.runner import benchmark, format_row, parse_precisions
from tests.bench.small_models import conv_prelu, save_small_enet, write_tflite
from tests.helpers import random_images, spread_unet

FAKE_DEVICE = {"label": "test machine"}
QUICK = {"warmup": 1, "runs": 2, "min_seconds": 0, "fingerprint": FAKE_DEVICE}
MASK_RCNN_CLASSES = ["background", "disc", "box", "triangle"]


def test_parse_precisions():
    assert parse_precisions(None) == ["fp32"]
    assert parse_precisions("bf16") == ["bf16"]
    assert parse_precisions("fp32, bf16,fp16,bf16") == ["fp32", "bf16", "fp16"]
    assert parse_precisions(["fp16"]) == ["fp16"]
    for bad in ("int4", "fp32,int8", "", ",", ["fp64"]):
        with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
            parse_precisions(bad)


def test_cli_rejects_an_unknown_precision_naming_the_accepted_ones(tmp_path, capsys):
    from edgeseg.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["bench", str(tmp_path / "enet.keras"), "--precision", "int4",
              "--out", str(tmp_path / "results.jsonl")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--precision" in error and "'int4'" in error
    assert "precision must be one of fp32, bf16, fp16" in error
    assert not (tmp_path / "results.jsonl").exists()


def test_cli_passes_the_precisions_to_the_benchmark(tmp_path, monkeypatch, capsys):
    from edgeseg.bench import runner
    from edgeseg.cli import main

    asked = {}

    def fake_benchmark(artifacts, sizes, **options):
        asked.update(options)
        return iter(())

    monkeypatch.setattr(runner, "benchmark", fake_benchmark)
    out = str(tmp_path / "results.jsonl")
    assert main(["bench", "enet.keras", "--precision", "fp32,bf16", "--out", out]) == 0
    assert asked["precisions"] == ["fp32", "bf16"]
    assert main(["bench", "enet.keras", "--out", out]) == 0
    assert asked["precisions"] == ["fp32"]  # the default


@pytest.fixture(scope="module")
def enet_keras(tmp_path_factory) -> Path:
    return save_small_enet(tmp_path_factory.mktemp("enet"))


@pytest.fixture(scope="module")
def mask_rcnn_keras(tmp_path_factory) -> Path:
    """A tiny untrained Mask R-CNN as .keras (64 x 64), every proposal kept as a detection."""
    import keras

    from edgeseg.models.maskrcnn import build_mobile_mask_rcnn

    keras.utils.set_random_seed(0)
    model = build_mobile_mask_rcnn(
        len(MASK_RCNN_CLASSES), (64, 64, 3), alpha=0.35, fpn_channels=32, rpn_channels=32,
        box_fc=64, mask_channels=16, proposals=20, max_detections=10, min_confidence=0.0,
        anchor_scales=(16, 24, 32, 40, 48))
    path = tmp_path_factory.mktemp("mask_rcnn") / "mask_rcnn.keras"
    model.save(path)
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"model": "mobile_mask_rcnn", "classes": MASK_RCNN_CLASSES}))
    return path


@pytest.fixture(scope="module")
def precision_rows(enet_keras, mask_rcnn_keras, tmp_path_factory) -> tuple[list[dict], list]:
    """One sweep at fp32 and bf16: ENet rebuilt at the 128x96 frame, a float .tflite, the
    Mask R-CNN; and the warnings it gave."""
    tflite = write_tflite(conv_prelu(), tmp_path_factory.mktemp("tflite") / "prelu.tflite")
    with pytest.warns(UserWarning) as said:
        rows = list(benchmark([enet_keras, tflite, mask_rcnn_keras], sizes=[(128, 96)],
                              precisions="fp32,bf16", model_size="frame", **QUICK))
    return rows, [str(w.message) for w in said]


@pytest.mark.slow
def test_a_keras_model_gives_a_row_per_precision(precision_rows):
    import keras

    rows, _ = precision_rows
    assert all(row["error"] is None for row in rows), [row["error"] for row in rows]
    enet = [row for row in rows if row["model"] == "enet"]
    assert [row["precision"] for row in enet] == ["fp32 (matmul precision: default)",
                                                   "bf16 (mixed_bfloat16)"]
    fp32, bf16 = enet
    # Read from the model that ran, rebuilt at the frame: the bf16 one stayed bf16.
    assert fp32["compute_dtype"] == "float32" and bf16["compute_dtype"] == "bfloat16"
    for row in enet:
        assert (row["size"], row["model_input"], row["note"]) == ("128x96", "128x96", None)
        assert row["backend"] == keras.backend.backend() == "tensorflow"
        assert row["compute_device"]["platform"] == "cpu"  # no GPU in these tests
        assert row["batch"] == 1 and row["format"] == "keras"
        assert row["precision"].split()[0] in format_row(row)


@pytest.mark.slow
def test_other_formats_run_at_fp32_only(precision_rows):
    rows, said = precision_rows
    (tflite,) = [row for row in rows if row["format"] == "tflite"]
    # No precision of its own (its quant says it), no Keras backend or device.
    assert tflite["precision"] is None and tflite["quant"] == "none"
    assert tflite["backend"] is None and tflite["compute_device"] is None
    assert tflite["batch"] == 1 and tflite["error"] is None
    (skip,) = [message for message in said if "prelu.tflite" in message]
    assert "precision bf16 applies to .keras models" in skip and "no bf16 rows" in skip


@pytest.mark.slow
def test_a_mask_rcnn_row_per_precision(precision_rows):
    rows, _ = precision_rows
    found = [row for row in rows if row["model"] == "mobile_mask_rcnn"]
    assert [row["precision"].split()[0] for row in found] == ["fp32", "bf16"]
    assert [row["compute_dtype"] for row in found] == ["float32", "bfloat16"]
    for row in found:
        assert row["error"] is None and row["resize"] == "letterbox"
        assert row["model_input"] == "64x64" and row["runs"] == 2


def test_bf16_predictor_computes_in_bf16_close_to_fp32(tmp_path):
    """The bf16 predictor's layers compute in bfloat16 (variables float32), and its output is
    the fp32 one within what 8 bits of mantissa allow."""
    from edgeseg.runtime import load_predictor

    path = tmp_path / "unet.keras"
    spread_unet(5, 32, 48).save(path)
    batch = random_images(2, 32, 48, seed=1)
    fp32, bf16 = (load_predictor(path, precision=p) for p in ("fp32", "bf16"))
    convolutions = [layer for layer in bf16.model.layers if layer.weights]
    assert {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert {v.dtype for v in bf16.model.weights} == {"float32"}
    assert bf16.dtype_policy == "mixed_bfloat16" and fp32.dtype_policy == "float32"
    expected, got = fp32.run(batch), bf16.run(batch)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert not np.array_equal(got, expected)  # it did compute in 16 bits
    # bf16 rounds each value to 2**-8 of itself: errors of a few percent of the logits' range.
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_a_bf16_predictor_rebuilt_at_the_frame_stays_bf16(enet_keras):
    from edgeseg.bench.worker import compute_dtypes, fit_input
    from edgeseg.runtime import load_predictor

    batch = random_images(1, 96, 128, seed=2)
    outputs = {}
    for precision in ("fp32", "bf16"):
        predictor, note = fit_input(load_predictor(enet_keras, precision=precision), (128, 96),
                                    "frame", None)
        assert note is None and predictor.input_size == (128, 96)
        assert predictor.model.inputs[0].shape[1:3] == (96, 128)
        outputs[precision] = predictor.run(batch)  # the recompiled forward: the new model
        assert compute_dtypes(predictor.model) == {"fp32": "float32",
                                                   "bf16": "bfloat16"}[precision]
    assert outputs["bf16"].dtype == np.float32 and outputs["bf16"].shape == (1, 96, 128, 3)
    # An untrained ENet's outputs are small and its 30-odd layers compound bf16's rounding:
    # the same map, not the same digits (the close comparison is the U-Net's above).
    fp32, bf16 = outputs["fp32"].ravel(), outputs["bf16"].ravel()
    assert not np.array_equal(fp32, bf16)
    assert np.corrcoef(fp32, bf16)[0, 1] > 0.95
    assert np.abs(bf16 - fp32).mean() < 0.25 * np.abs(fp32).mean()


def test_mask_rcnn_at_bf16_gives_float32_detections(mask_rcnn_keras):
    from edgeseg.runtime import InstanceSegmenter, load_predictor
    from edgeseg.runtime.instances import detect

    image = random_images(1, 64, 64, seed=4)
    fp32, bf16 = (load_predictor(mask_rcnn_keras, precision=p) for p in ("fp32", "bf16"))
    raw = bf16._forward(image)["masks"]
    assert "bfloat16" in str(raw.dtype)  # what the model hands back: 16 bits, not NumPy's
    expected, got = detect(fp32, image), detect(bf16, image)
    for key, dtype in (("boxes", np.float32), ("scores", np.float32), ("masks", np.float32),
                       ("classes", np.int32), ("count", np.int32)):
        assert got[key].dtype == dtype, key
        assert got[key].shape == expected[key].shape, key
    # The same boxes from the RPN to the detections, and masks within bf16's rounding.
    np.testing.assert_array_equal(got["count"], expected["count"])
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=0.05)
    np.testing.assert_allclose(got["masks"], expected["masks"], atol=0.05)
    frame = (255 * random_images(1, 50, 80, seed=5)[0]).astype(np.uint8)
    found = InstanceSegmenter(bf16, min_score=0.0)(frame)
    assert found["boxes"].dtype == np.float32 and found["masks"].dtype == bool
    assert found["masks"].shape[1:] == (50, 80)


def test_cli_notes_a_tflite_skipped_for_bf16(tmp_path, capsys):
    from edgeseg.cli import main

    model = tmp_path / "enet.tflite"
    model.write_bytes(b"not measured: no row runs")
    out = tmp_path / "results.jsonl"
    assert main(["bench", str(model), "--precision", "bf16", "--sizes", "64x48",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert (f"  note: {model}: precision bf16 applies to .keras models; a .tflite file runs at "
            "the precision it was exported at, so it has no bf16 rows") in said.out
    assert "Warning" not in said.err and not out.exists()
