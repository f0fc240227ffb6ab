"""The instance runtime: outputs told apart, frame mapping, .tflite against .keras, drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeseg.instances import resize_square
from edgeseg.runtime import InstanceSegmenter, is_instance_model, load_predictor
from edgeseg.runtime.instances import DETECTION_KEYS, INSTANCE_COLOURS, detect
from edgeseg.runtime.predictor import Predictor
from tests.helpers import BLOCK_TENSORFLOW

SIZE = 64
CLASSES = ["background", "disc", "box", "triangle"]
METADATA = {"model": "mobile_mask_rcnn", "classes": CLASSES, "size": [SIZE, SIZE],
            "normalisation": {"scale": 1 / 255, "offset": 0}}
_BUILT: dict[str, Path] = {}


def mask_rcnn_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny Mask R-CNN that detects, as .tflite (fp32) and .keras with their metadata.

    Built once per test session (the demo tests use it too): conversion takes about 15 s.
    """
    if _BUILT:
        return _BUILT
    pytest.importorskip("tensorflow")
    import keras

    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models.maskrcnn import build_mobile_mask_rcnn

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")
    keras.utils.set_random_seed(0)
    # The registry's builder, with anchors of 16-48 px rather than the 2-32 px of a 64 x 64
    # input, so that the boxes (and the masks compared) are some 15 px, not 2.
    model = build_mobile_mask_rcnn(
        len(CLASSES), (SIZE, SIZE, 3), alpha=0.35, fpn_channels=32, rpn_channels=32, box_fc=64,
        mask_channels=16, proposals=20, max_detections=10, min_confidence=0.0,
        anchor_scales=(16, 24, 32, 40, 48),
    )
    # Random weights, made to detect: class 1 wins; the RPN and mask logits are spread out, so
    # that float rounding flips few mask pixels near the 0.5 threshold between Keras and
    # LiteRT, and the masks' bias makes them cover much of their boxes.
    logits = model.get_layer("box_head").get_layer("box_class_logits")
    kernel, bias = logits.get_weights()
    bias[:] = [-10.0, 4.0, 0.0, 0.0]
    logits.set_weights([kernel * 4.0, bias])
    rpn = model.get_layer("trunk").get_layer("rpn").get_layer("rpn_class_raw")
    kernel, bias = rpn.get_weights()
    rpn.set_weights([kernel * 8.0, bias])
    masks = model.get_layer("mask_head").get_layer("mask_logits_conv")
    kernel, bias = masks.get_weights()
    masks.set_weights([kernel * 8.0, bias + 2.0])
    folder = tmp_path_factory.mktemp("mask_rcnn")
    tflite = folder / "mask_rcnn.tflite"
    tflite.write_bytes(convert_keras_to_tflite(model))
    tflite.with_name(tflite.name + ".json").write_text(json.dumps(METADATA))
    run = folder / "run"
    run.mkdir()
    model.save(run / "best.keras")
    (run / "run.json").write_text(json.dumps(METADATA))
    _BUILT.update(tflite=tflite, keras=run / "best.keras")
    return _BUILT


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory):
    return mask_rcnn_files(tmp_path_factory)


def blob_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured discs on a dark background, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.full((height, width, 3), 20.0)
    for _ in range(5):
        cy, cx = rng.random(2) * (height, width)
        radius = (0.1 + 0.2 * rng.random()) * min(height, width)
        image[np.hypot(y - cy, x - cx) < radius] = rng.integers(60, 255, 3)
    return image.astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class FakeDetector(Predictor):
    """A square-input predictor whose ``detect`` returns fixed padded detections."""

    format = "fake"

    def __init__(self, outputs: dict, metadata: dict | None = None, size: int = SIZE):
        super().__init__(Path("fake.tflite"), metadata or METADATA)
        self.input_size = (size, size)
        self.outputs = outputs
        self.seen: list[np.ndarray] = []

    def detect(self, batch):
        self.seen.append(batch)
        return self.outputs


def padded_outputs(boxes, classes, scores, masks, detections: int = 4) -> dict:
    """Model outputs (batch 1, ``detections`` rows, zero past the count) from lists."""
    count = len(boxes)
    out = {"boxes": np.zeros((1, detections, 4), np.float32),
           "classes": np.zeros((1, detections), np.int32),
           "scores": np.zeros((1, detections), np.float32),
           "masks": np.zeros((1, detections, 28, 28), np.float32),
           "count": np.array([count], np.int32)}
    if count:
        out["boxes"][0, :count] = boxes
        out["classes"][0, :count] = classes
        out["scores"][0, :count] = scores
        out["masks"][0, :count] = masks
    return out


# ----------------------------------------------------------------------------------- mapping


def test_a_box_over_the_whole_window_maps_to_the_whole_frame():
    # 80 x 50 -> scale 0.8, 64 x 40 inside the 64 x 64 input: rows 0..39, columns 0..63.
    window = [0.0, 0.0, 39 / (SIZE - 1), 1.0]
    half = [0.0, 0.0, 39 / (SIZE - 1), 31 / (SIZE - 1)]  # the left 32 model columns
    outputs = padded_outputs([window, half], [1, 3], [0.9, 0.4], np.ones((2, 28, 28)))
    predictor = FakeDetector(outputs)
    segmenter = InstanceSegmenter(predictor, min_score=0.3)
    frame = np.full((50, 80, 3), 255, np.uint8)
    found = segmenter(frame)
    np.testing.assert_allclose(found["boxes"], [[0, 0, 80, 50], [0, 0, 40, 50]], atol=1e-4)
    np.testing.assert_array_equal(found["classes"], [1, 3])
    assert found["masks"].shape == (2, 50, 80) and found["masks"].dtype == bool
    assert found["masks"][0].all()
    assert found["masks"][1][:, :40].all() and not found["masks"][1][:, 40:].any()
    # The input: the frame scaled by 0.8, normalised, zero below it.
    (fed,) = predictor.seen
    np.testing.assert_allclose(fed[0, :40], 1.0, atol=1e-6)
    assert not fed[0, 40:].any()
    assert set(segmenter.last_timings) == {"preprocess", "inference", "postprocess"}

    strict = InstanceSegmenter(predictor, min_score=0.5)(frame)
    np.testing.assert_array_equal(strict["classes"], [1])  # the 0.4 detection is dropped
    empty = InstanceSegmenter(FakeDetector(padded_outputs([], [], [], [])))(frame)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 50, 80)


def test_is_instance_model_reads_metadata_and_outputs():
    assert is_instance_model({"task": "instance"})
    # A name decides nothing: the model's outputs (or what was read from them) do.
    assert not is_instance_model({"model": "mobile_mask_rcnn"})
    assert not is_instance_model({"model": "enet"}) and not is_instance_model(None)
    assert is_instance_model(FakeDetector(padded_outputs([], [], [], [])))

    class Semantic(Predictor):
        pass

    assert not is_instance_model(Semantic(Path("enet.tflite"), {"model": "enet"}))


class FakeInterpreter:
    """A LiteRT-like interpreter with int8 outputs, listed in a shuffled order."""

    def __init__(self, outputs: dict):
        order = ["count", "masks", "scores", "boxes", "classes"]
        self.details, self.tensors = [], {}
        for index, key in enumerate(order, start=1):
            value = np.asarray(outputs[key])
            if value.dtype.kind == "f":  # quantised: q = value / scale + zero_point
                scale, zero_point = 1 / 127, -1
                stored = np.round(value / scale + zero_point).astype(np.int8)
            else:
                scale, zero_point, stored = 0.0, 0, value
            self.details.append({"name": f"StatefulPartitionedCall:{index}", "index": index,
                                 "shape": np.array(stored.shape), "dtype": stored.dtype.type,
                                 "quantization": (scale, zero_point)})
            self.tensors[index] = stored
        self.input = None

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([1, SIZE, SIZE, 3]), "dtype": np.float32,
                 "quantization": (0.0, 0)}]

    def get_output_details(self):
        return self.details

    def set_tensor(self, index, value):
        self.input = value

    def invoke(self):
        pass

    def get_tensor(self, index):
        return self.tensors[index]


def test_tflite_outputs_are_told_apart_by_shape_and_dequantised():
    masks = np.random.default_rng(1).random((2, 28, 28))
    want = padded_outputs([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], [2, 1], [0.9, 0.6],
                          masks)
    predictor = SimpleNamespace(interpreter=FakeInterpreter(want), metadata={})
    assert is_instance_model(predictor)
    got = detect(predictor, np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert set(got) == set(want)
    for key in ("count", "classes"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got[key].dtype == np.int32
    for key in ("boxes", "scores", "masks"):  # int8 steps of 1/127
        np.testing.assert_allclose(got[key], want[key], atol=0.5 / 127 + 1e-6, err_msg=key)
        assert got[key].dtype == np.float32

    semantic = SimpleNamespace(interpreter=FakeInterpreter(want), metadata={})
    semantic.interpreter.details = semantic.interpreter.details[:1]
    assert not is_instance_model(semantic)
    with pytest.raises(ValueError, match=r"not the five Mask R-CNN outputs.*\(1,\) int"):
        detect(semantic, np.zeros((1, SIZE, SIZE, 3), np.float32))


def _onnx_detector(path: Path, outputs: dict, names: list[str]) -> None:
    """An .onnx model whose outputs are constants: output ``names[i]`` is DETECTION_KEYS[i]."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    nodes, infos = [], []
    for key, name in zip(DETECTION_KEYS, names, strict=True):
        value = np.asarray(outputs[key])
        tensor = numpy_helper.from_array(value, name=f"{name}_value")
        nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        dtype = helper.np_dtype_to_tensor_dtype(value.dtype)
        infos.append(helper.make_tensor_value_info(name, dtype, value.shape))
    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, SIZE, SIZE, 3])
    graph = helper.make_graph(nodes, "detector", [image], infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("names", [["boxes", "classes", "scores", "masks", "count"],
                                   ["out_3", "out_0", "out_4", "out_1", "out_2"]])
def test_onnx_outputs_by_name_or_by_shape(tmp_path, names):
    onnxruntime = pytest.importorskip("onnxruntime")
    # Scores (1, D) float and classes (1, D) int: only their types tell them apart.
    want = padded_outputs([[0.1, 0.2, 0.5, 0.6]], [2], [0.75], np.full((1, 28, 28), 0.8))
    path = tmp_path / "detector.onnx"
    _onnx_detector(path, want, names)
    predictor = load_predictor(path)
    assert is_instance_model(predictor)  # no metadata: from the outputs
    assert predictor.runtime.startswith(f"onnxruntime {onnxruntime.__version__} (")
    assert predictor.runtime[:-1].endswith("ExecutionProvider") and predictor.xnnpack is None
    got = detect(predictor, np.zeros((1, SIZE, SIZE, 3), np.float32))
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    found = InstanceSegmenter(predictor)(np.zeros((SIZE, SIZE, 3), np.uint8))
    np.testing.assert_allclose(found["boxes"], [[0.2 * 63, 0.1 * 63, 0.6 * 63 + 1,
                                                 0.5 * 63 + 1]], atol=1e-4)


# ----------------------------------------------------------------------------------- the model


@pytest.mark.slow
def test_tflite_and_keras_find_the_same_instances_in_a_non_square_frame(mask_rcnn):
    frame = blob_frame(50, 80)
    keras_predictor = load_predictor(mask_rcnn["keras"])
    tflite_predictor = load_predictor(mask_rcnn["tflite"])
    assert is_instance_model(keras_predictor) and is_instance_model(tflite_predictor)
    assert is_instance_model(SimpleNamespace(metadata={}, model=keras_predictor.model))
    assert is_instance_model(SimpleNamespace(metadata={}, interpreter=tflite_predictor.interpreter))
    want = InstanceSegmenter(keras_predictor)(frame)
    got = InstanceSegmenter(tflite_predictor)(frame)
    assert len(want["scores"]) >= 2 and want["masks"].sum() > 100, "the test model should detect"
    print(f"\n{len(want['scores'])} instances, mask pixels {want['masks'].sum((1, 2))}")
    assert len(got["scores"]) == len(want["scores"])
    # Random weights give near-tied scores, which float rounding may reorder: pair by box.
    for i, box in enumerate(want["boxes"]):
        j = int(np.abs(got["boxes"] - box).max(axis=1).argmin())
        np.testing.assert_allclose(got["boxes"][j], box, atol=0.05)  # frame pixels
        assert got["classes"][j] == want["classes"][i]
        assert got["scores"][j] == pytest.approx(want["scores"][i], abs=1e-4)
        assert mask_iou(got["masks"][j], want["masks"][i]) > 0.99

    # Reference for the mapping: the Keras model's raw detections, scaled by hand.
    image, scale, _ = resize_square(frame, SIZE)
    assert scale == pytest.approx(0.8)
    raw = detect(keras_predictor, image[None].astype(np.float32) / 255)
    keep = raw["scores"][0, : raw["count"][0]] >= 0.5
    y1, x1, y2, x2 = (raw["boxes"][0, : raw["count"][0]][keep] * (SIZE - 1)).T
    by_hand = np.stack([x1 / 0.8, y1 / 0.8, (x2 + 1) / 0.8, (y2 + 1) / 0.8], axis=-1)
    by_hand = np.clip(by_hand, 0, [80, 50, 80, 50])
    np.testing.assert_allclose(want["boxes"], by_hand, atol=1e-3)
    for (bx0, by0, bx1, by1), mask in zip(want["boxes"], want["masks"], strict=True):
        rows, cols = np.nonzero(mask)
        if rows.size:  # a mask lies in its box (to a pixel of rounding)
            assert cols.min() >= bx0 - 1.5 and cols.max() <= bx1 + 0.5
            assert rows.min() >= by0 - 1.5 and rows.max() <= by1 + 0.5

    tall = InstanceSegmenter(tflite_predictor)(blob_frame(150, 90, seed=3))
    assert tall["masks"].shape[1:] == (150, 90)
    boxes = tall["boxes"]
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 90).all() and (boxes[:, [1, 3]] <= 150).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


NO_TENSORFLOW = BLOCK_TENSORFLOW + """import numpy as np
from edgeseg.runtime import InstanceSegmenter, is_instance_model, load_predictor
predictor = load_predictor(sys.argv[1])
segmenter = InstanceSegmenter(predictor)
found = segmenter(np.load(sys.argv[2]))
segmenter.overlay(np.load(sys.argv[2]), found)
np.savez(sys.argv[3], **found)
print(json.dumps({"instance_model": is_instance_model(predictor),
                  "tensorflow": "tensorflow" in sys.modules or "keras" in sys.modules}))
"""


@pytest.mark.slow
def test_tflite_instances_run_where_tensorflow_is_not_importable(mask_rcnn, tmp_path):
    frame = blob_frame(50, 80)
    np.save(tmp_path / "frame.npy", frame)
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, str(mask_rcnn["tflite"]),
         str(tmp_path / "frame.npy"), str(tmp_path / "found.npz")],
        capture_output=True, text=True, env={**os.environ}, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "instance_model": True, "tensorflow": False}
    want = InstanceSegmenter(load_predictor(mask_rcnn["tflite"]))(frame)
    got = np.load(tmp_path / "found.npz")
    assert len(want["scores"]) >= 1
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ----------------------------------------------------------------------------------- drawing


def test_overlay_blends_the_class_colour_inside_masks_and_nothing_outside_boxes():
    # One instance, frame 80 x 50: box x 10..50, y 10..40; its mask the box's lower part.
    frame = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    mask = np.zeros((50, 80), bool)
    mask[25:40, 10:50] = True
    detections = {"boxes": np.array([[10, 10, 50, 40]], np.float32),
                  "classes": np.array([2], np.int32), "scores": np.array([0.87], np.float32),
                  "masks": mask[None]}
    palette = [[0, 0, 0], [255, 0, 0], [0, 200, 100], [0, 0, 255]]
    segmenter = InstanceSegmenter(FakeDetector({}, {**METADATA, "palette": palette}))
    out = segmenter.overlay(frame, detections, alpha=0.25)
    assert out.shape == frame.shape and out.dtype == np.uint8
    want = np.round(0.75 * frame.astype(np.float64) + 0.25 * np.array([0, 200, 100]))
    inner = mask.copy()
    inner[:, [10, 49]] = inner[39] = False  # the outline is drawn over the mask's edge
    np.testing.assert_array_equal(out[inner], want[inner].astype(np.uint8))
    inside_box = np.zeros((50, 80), bool)
    inside_box[10:40, 10:50] = True
    np.testing.assert_array_equal(out[~inside_box], frame[~inside_box])
    assert (out[10, 10:50] == [0, 200, 100]).all()  # the outline, in the class colour
    assert not np.array_equal(out[11:24, 11:49], frame[11:24, 11:49])  # the label

    masks_only = segmenter.colourise(detections, (50, 80))
    assert (masks_only[mask] == [0, 200, 100]).all() and not masks_only[~mask].any()
    # Without a palette: the fixed colour table, one colour per class.
    plain = InstanceSegmenter(FakeDetector({}))
    np.testing.assert_array_equal(plain.colour(2), INSTANCE_COLOURS[1])
    assert plain.classes == CLASSES and len(plain.palette) == len(CLASSES)


def test_bad_options_are_refused():
    outputs = padded_outputs([], [], [], [])
    with pytest.raises(ValueError, match="mask_mode must be one of bilinear, nearest"):
        InstanceSegmenter(FakeDetector(outputs), mask_mode="cubic")
    with pytest.raises(ValueError, match="square input"):
        detector = FakeDetector(outputs)
        detector.input_size = (64, 48)
        InstanceSegmenter(detector)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        InstanceSegmenter(FakeDetector(outputs))(np.zeros((10, 10), np.uint8))
