"""Mask R-CNN exports: the whole graph in builtin TFLite / ONNX, validated on detections."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgeseg.converters.export import ExportRequest, export  # noqa: E402
from edgeseg.converters.maskrcnn_export import (  # noqa: E402
    check_instance_options,
    match_detections,
)
from edgeseg.data import write_synthetic  # noqa: E402
from tests.helpers import graph_ops  # noqa: E402


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A small Mask R-CNN that detects (random weights, biased to the object classes).

    max_detections = proposals: no detection is cut at the top-k, where the near-tied scores of
    random weights would make the kept set differ by float rounding.
    """
    import keras

    from edgeseg.models.maskrcnn.network import build_mobile_mask_rcnn

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("mrx")
    data = write_synthetic(root / "data", n_train=4, n_val=3, size=(96, 64), seed=2)
    model = build_mobile_mask_rcnn(
        5, (64, 64, 3), alpha=0.35, fpn_channels=32, rpn_channels=32, box_fc=64,
        mask_channels=16, proposals=20, max_detections=20, min_confidence=0.3,
        anchor_scales=(16, 24, 32, 40, 48))
    rng = np.random.default_rng(0)
    head = model.get_layer("box_head").get_layer("box_class_logits")
    kernel, bias = head.get_weights()
    head.set_weights([rng.normal(0, 0.5, kernel.shape).astype(np.float32),
                      np.array([-3, 1, 0.5, 0, -0.5], np.float32)])
    path = root / "best.keras"
    model.save(path)
    (root / "run.json").write_text(json.dumps({
        "model": "mobile_mask_rcnn", "config": {"data": f"synthetic:{data}"},
        "classes": ["background", "disc", "ellipse", "box", "triangle"], "size": [64, 64],
        "normalisation": {"scale": 1 / 255, "offset": 0.0}}))
    return path


def op_input_types(blob: bytes) -> dict[tuple[str, str], int]:
    """How many ops of each (name, type of the first input) the flatbuffer holds."""
    from collections import Counter

    return Counter((op["op"], op["inputs"][0][1]) for op in graph_ops(blob) if op["inputs"])


def int8_geometry_ops(blob: bytes) -> list[str]:
    """Ops of the proposal / ROIAlign / detection layers with an int8 input or output, except
    the QUANTIZE of the crops into the heads."""
    found = []
    for op in graph_ops(blob):
        touched = [*op["inputs"], *op["outputs"]]
        if not any(dtype == "int8" for _, dtype, _ in touched):
            continue
        names = " ".join(name for name, _, _ in touched)
        crops = op["op"] == "QUANTIZE" and len(op["inputs"][0][2]) == 5
        if any(f"/{layer}" in names for layer in ("proposals", "detections", "roi_align")) \
                and not crops:
            found.append(f"{op['op']}: {names[:120]}")
    return found


def test_options_say_what_a_detector_accepts():
    with pytest.raises(ValueError, match="--format tflite / onnx"):
        check_instance_options("tensorrt", "fp16", "float32", "logits")
    with pytest.raises(ValueError, match="accepts --quant none / fp16 / dynamic / int8"):
        check_instance_options("tflite", "qat", "float32", "logits")
    with pytest.raises(ValueError, match="use --io float32"):
        check_instance_options("tflite", "int8", "uint8", "logits")


def test_matching_pairs_same_class_boxes_by_iou():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5, :5] = masks[1, 5:, 5:] = True
    reference = {"boxes": np.array([[0, 0, 5, 5], [5, 5, 10, 10]], np.float32),
                 "classes": np.array([1, 2]), "scores": np.array([0.9, 0.8]), "masks": masks}
    other = {"boxes": np.array([[5, 5, 10, 10], [0, 0, 5, 4]], np.float32),
             "classes": np.array([2, 1]), "scores": np.array([0.9, 0.8]),
             "masks": masks[::-1].copy()}
    found = match_detections(reference, other)
    assert found["matched"] == 2
    assert sorted(found["box_ious"]) == pytest.approx([0.8, 1.0])
    other["classes"] = np.array([1, 2])  # swapped classes: nothing matches
    assert match_detections(reference, other)["matched"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "quant"), [("tflite", "none"), ("tflite", "int8"),
                                            ("onnx", "none")])
def test_export_holds_the_whole_graph_and_matches_keras(detector, fmt, quant, tmp_path):
    from edgeseg.converters.tflite import non_builtin_ops, tflite_op_names

    suffix = ".onnx" if fmt == "onnx" else ".tflite"
    out = tmp_path / f"det{suffix}"
    report = export(ExportRequest(model=str(detector), format=fmt, quant=quant, out=str(out),
                                  num_val=3, num_calib=4))
    v = report["validation"]
    assert v["keras_detections"] > 0
    if quant == "none":
        # Random weights leave many overlapping boxes with nearly equal scores, where float
        # rounding can tip an NMS decision: nearly all match, and those exactly. (The trained
        # model of benchmarks/maskrcnn_synthetic.py matches 144 of 144.)
        assert v["export_detections"] == pytest.approx(v["keras_detections"], rel=0.15)
        assert v["matched_fraction"] >= 0.85
        assert v["box_iou_min"] > 0.99 and v["mask_iou_min"] > 0.95
    else:
        # Random weights put every score near the threshold, where int8 rounding decides:
        # the accuracy of int8 is measured on a trained model (benchmarks/maskrcnn_synthetic.py).
        assert report["quant_mode"].startswith(
            "int8 backbone, FPN, RPN and heads; float geometry (proposals, ")
        assert v["export_detections"] > 0 and 0 <= v["matched"] <= v["keras_detections"]
        # No geometry op reads or writes int8 (TFLite's quantiser would slip value-moving ops
        # such as top-k, min / max, select into int8): only the crops are quantised, for the
        # heads, and the mask probabilities on their way out.
        assert int8_geometry_ops(out.read_bytes()) == []
        kinds = op_input_types(out.read_bytes())
        # The networks run int8 kernels; the geometry's ops run float ones.
        assert kinds[("CONV_2D", "int8")] > 3 * kinds.get(("CONV_2D", "float32"), 0)
        assert kinds[("DEPTHWISE_CONV_2D", "int8")] > 0
        assert set(t for op, t in kinds if op == "NON_MAX_SUPPRESSION_V4") == {"float32"}
        assert ("GATHER", "float32") in kinds and ("LOG", "float32") in kinds
        assert not {("LOG", "int8"), ("SQRT", "int8"), ("EXP", "int8")} & set(kinds)
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["model"] == "mobile_mask_rcnn" and sidecar["size"] == [64, 64]
    if fmt == "tflite":
        blob = out.read_bytes()
        assert non_builtin_ops(blob) == []
        assert "NON_MAX_SUPPRESSION_V4" in tflite_op_names(blob)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "quant"), [("mobile_mask_rcnn", "int8"), ("my_detector", "none")])
def test_an_api_saved_detector_exports_through_the_cli(name, quant, tmp_path, monkeypatch, capsys):
    """A Mask R-CNN built and saved through the Python API with no run.json beside it, under
    its own name or another, exports and validates through ``edgeseg export``: the task comes
    from the model's outputs. (The defect: export took the semantic path by the name in
    run.json and died with an IndexError in validate_export.)

    Built by the family's builder (what ``models.build("mobile_mask_rcnn", ...)`` calls) with
    the small anchors of the ``detector`` fixture: ``models.build`` takes neither
    ``anchor_scales`` nor ``name``, and with the default anchors at this size the near-tied
    scores of random weights make even the fp32 export keep other boxes than Keras does.
    """
    import keras

    from edgeseg.artifacts import SIDECAR_VERSION, open_artifact
    from edgeseg.cli import main
    from edgeseg.models.maskrcnn.network import build_mobile_mask_rcnn

    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    keras.utils.set_random_seed(0)
    model = build_mobile_mask_rcnn(
        5, (64, 64, 3), alpha=0.35, fpn_channels=32, rpn_channels=32, box_fc=64,
        mask_channels=16, proposals=20, max_detections=20, min_confidence=0.3,
        anchor_scales=(16, 24, 32, 40, 48), name=name)
    head = model.get_layer("box_head").get_layer("box_class_logits")
    kernel, _ = head.get_weights()
    head.set_weights([np.random.default_rng(0).normal(0, 0.5, kernel.shape).astype(np.float32),
                      np.array([-3, 1, 0.5, 0, -0.5], np.float32)])
    path = tmp_path / "m.keras"
    model.save(path)
    assert not (tmp_path / "run.json").exists()

    out = tmp_path / f"m_{quant}.tflite"
    code = main(["export", str(path), "--format", "tflite", "--quant", quant, "--calib",
                 "synthetic?n_train=4&n_val=2&size=96x64", "--num-calib", "4", "--num-val", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Keras detections matched" in captured.out
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["task"] == "instance" and report["passed"]
    check = report["validation"]
    assert check["num_images"] == 2 and check["keras_detections"] > 0
    if quant == "int8":
        assert report["quant_mode"].startswith("int8 backbone")
        assert check["matched"] > 0 and check["box_iou_mean"] > 0.5
    else:
        assert check["matched_fraction"] >= 0.85 and check["box_iou_min"] > 0.99
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["sidecar_version"] == SIDECAR_VERSION and sidecar["task"] == "instance"
    assert sidecar["model"] == name and sidecar["output"] == "detections"
    assert sidecar["input_size"] == [64, 64] and len(sidecar["classes"]) == 5
    exported = open_artifact(out)
    assert exported.task == "instance" and exported.quant == quant


@pytest.mark.slow
def test_export_for_tflite_runtime_2_14_takes_the_forms_it_has(detector, tmp_path):
    """A dynamic-range Mask R-CNN has per-channel hybrid FULLY_CONNECTED version 12, which
    tflite-runtime 2.14 cannot load; exported for it, the dense weights are quantised per tensor
    (version 9) and the real 2.14 loads and runs the file."""
    import subprocess

    from edgeseg.tflite_file import read_tflite
    from tests.side_envs import side_python

    plain = tmp_path / "plain.tflite"
    report = export(ExportRequest(model=str(detector), quant="dynamic", out=str(plain), num_val=2))
    assert report["runtimes"]["tflite-runtime==2.14.0"]["loads"] is False
    assert {op.version for op in read_tflite(plain).operators
            if op.name == "FULLY_CONNECTED"} == {12}

    target = tmp_path / "for_2_14.tflite"
    report = export(ExportRequest(model=str(detector), quant="dynamic", out=str(target),
                                  num_val=2, runtime="tflite-runtime==2.14.0"))
    assert report["runtimes"]["tflite-runtime==2.14.0"]["loads"] is True
    assert "dense weights per tensor" in report["quant_mode"]
    assert max(op.version for op in read_tflite(target).operators
               if op.name == "FULLY_CONNECTED") < 12
    sidecar = json.loads(target.with_name(target.name + ".json").read_text())
    assert sidecar["runtimes"]["tflite-runtime==2.14.0"]["loads"] is True
    # the real runtime agrees on both files
    python = side_python("tflite-runtime", "tflite_runtime.interpreter")
    script = ("import sys, numpy as np\nfrom edgeseg.runtime_tflite import load_interpreter\n"
              "for path in sys.argv[1:]:\n"
              "    try:\n"
              "        it = load_interpreter(path)\n"
              "        d = it.get_input_details()[0]\n"
              "        it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype']))\n"
              "        it.invoke()\n"
              "        print('runs')\n"
              "    except (RuntimeError, ValueError) as e:\n"
              "        print('refused', str(e).splitlines()[0])\n")
    done = subprocess.run([str(python), "-c", script, str(plain), str(target)],
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert lines[0].startswith("refused") and "FULLY_CONNECTED" in lines[0], done.stdout
    assert lines[1] == "runs", done.stdout + done.stderr
