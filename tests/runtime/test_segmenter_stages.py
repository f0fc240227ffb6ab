"""The Segmenter's cheap stages against the computations they replace, from their definitions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.predictor import Predictor
from edgeseg.runtime.segmenter import channel_argmax, input_lookup
from edgeseg.runtime_tflite import run_interpreter, set_input

NORMALISATIONS = [(1 / 255, 0.0), (2 / 255, -1.0), (1 / 127.5, -1.0), (1.0, 0.0)]


class FakeInterpreter:
    """LiteRT's interpreter interface over a per-pixel linear "model": class scores are a fixed
    mix of the input's channels, computed in integers for a quantised model (input and output
    ``dtype`` with their (scale, zero point)) or in float32."""

    def __init__(self, size=(40, 30), classes=5, dtype=np.uint8, input_q=(0.0078, 128),
                 output_q=(0.05, 100)):
        width, height = size
        self.dtype = np.dtype(dtype)
        self.shape = (1, height, width, 3)
        self.input_q = input_q if self.dtype != np.float32 else (0.0, 0)
        self.output_q = output_q if self.dtype != np.float32 else (0.0, 0)
        self.weights = np.random.default_rng(3).integers(-3, 4, (3, classes))
        self.fed: list[np.ndarray] = []

    def get_input_details(self):
        return [{"index": 0, "shape": np.array(self.shape), "dtype": self.dtype.type,
                 "quantization": self.input_q}]

    def get_output_details(self):
        return [{"index": 1, "shape": np.array([*self.shape[:3], self.weights.shape[1]]),
                 "dtype": self.dtype.type, "quantization": self.output_q}]

    def set_tensor(self, index, value):
        assert index == 0 and value.shape == self.shape and value.dtype == self.dtype
        self.fed.append(value.copy())

    def invoke(self):
        x = self.fed[-1]
        if self.dtype == np.float32:
            self.output = x @ self.weights.astype(np.float32)
            return
        scores = (x.astype(np.int32) - self.input_q[1]) @ self.weights // 4 + self.output_q[1]
        info = np.iinfo(self.dtype)
        self.output = np.clip(scores, info.min, info.max).astype(self.dtype)

    def get_tensor(self, index):
        assert index == 1
        return self.output.copy()

    def tensor(self, index):
        assert index == 1
        return lambda: self.output  # LiteRT's view of its buffer, no copy


class FakeTFLitePredictor(Predictor):
    """A .tflite predictor (as ``TFLitePredictor``) around a :class:`FakeInterpreter`."""

    format = "tflite"

    def __init__(self, interpreter: FakeInterpreter, scale=1 / 255, offset=0.0):
        super().__init__(Path("fake.tflite"), {
            "classes": list("abcde"), "normalisation": {"scale": scale, "offset": offset}})
        self.interpreter = interpreter
        self.input_size = (interpreter.shape[2], interpreter.shape[1])

    def run(self, batch):
        return np.concatenate([run_interpreter(self.interpreter, x[None]) for x in batch])


def reference_labels(predictor: Predictor, frame: np.ndarray, scale: float, offset: float):
    """The label map by the definitions: resize, pixel * scale + offset in float32, the
    predictor's float path (quantise, run, dequantise), argmax, resize back (nearest)."""
    resized = cv2.resize(frame, predictor.input_size, interpolation=cv2.INTER_LINEAR)
    batch = resized.astype(np.float32) * scale + offset
    labels = predictor(batch[None])[0].argmax(-1).astype(np.uint8)
    return cv2.resize(labels, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)


@pytest.mark.parametrize(("scale", "offset"), NORMALISATIONS)
def test_the_float_lookup_is_normalising_each_pixel(scale, offset):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image.reshape(-1)[:256] = np.arange(256)  # every value at least once
    got = cv2.LUT(image, input_lookup(scale, offset))
    np.testing.assert_array_equal(got, image.astype(np.float32) * scale + offset)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize(("scale", "offset"), NORMALISATIONS)
@pytest.mark.parametrize("quantisation", [(0.0078125, 128), (0.00724, 117), (0.0039216, -128)])
def test_the_quantised_lookup_is_what_the_runtime_feeds_an_integer_model(
    dtype, scale, offset, quantisation
):
    image = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    interpreter = FakeInterpreter(size=(16, 16), dtype=dtype, input_q=quantisation)
    set_input(interpreter, image.astype(np.float32) * scale + offset)  # LiteRT's own path
    got = cv2.LUT(image[0], input_lookup(scale, offset, quantisation, dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, interpreter.fed[-1][0])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32, np.float16, np.int32])
@pytest.mark.parametrize("classes", [2, 5, 12, 256])
def test_channel_argmax_is_numpys_argmax_ties_included(dtype, classes):
    rng = np.random.default_rng(classes)
    # Few distinct values: many pixels have equal maxima, where the first class must win.
    logits = rng.integers(-3, 4, (17, 23, classes)).astype(dtype)
    got = channel_argmax(logits)
    assert got.dtype == np.uint8 and got.shape == (17, 23)
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    scores = rng.normal(size=(9, 11, classes)).astype(np.float32)
    np.testing.assert_array_equal(channel_argmax(scores), np.argmax(scores, axis=-1))


class FloatPathPredictor(FakeTFLitePredictor):
    """The same model through the predictor's float path only (no direct feeding)."""

    format = "tflite-float-path"


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32])
@pytest.mark.parametrize("resize", ["resize", "letterbox"])
def test_a_tflite_model_fed_directly_gives_the_labels_of_the_float_path(dtype, resize):
    frame = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    interpreter = FakeInterpreter(dtype=dtype)
    segmenter = Segmenter(FakeTFLitePredictor(interpreter, 2 / 255, -1.0), resize=resize)
    labels = segmenter(frame)
    batch, geometry = segmenter.preprocess(frame)
    assert batch.dtype == dtype  # quantised once, in preprocessing
    raw = segmenter.infer(batch)
    assert raw.dtype == dtype  # integer scores stay integers
    np.testing.assert_array_equal(segmenter.postprocess(raw, geometry), labels)

    float_path = FloatPathPredictor(FakeInterpreter(dtype=dtype), 2 / 255, -1.0)
    reference = Segmenter(float_path, resize=resize)
    np.testing.assert_array_equal(labels, reference(frame))
    # The model was fed the same tensor either way, and its dequantised scores have the argmax
    # of the integer ones.
    np.testing.assert_array_equal(interpreter.fed[-1], float_path.interpreter.fed[-1])
    dequantised = float_path(reference.preprocess(frame)[0])
    assert dequantised.dtype == np.float32
    np.testing.assert_array_equal(raw.argmax(-1), dequantised.argmax(-1))
    if resize == "resize":  # and both are the label map of the definitions
        np.testing.assert_array_equal(labels, reference_labels(float_path, frame, 2 / 255, -1.0))


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory):
    """A tiny U-Net as a full-int8 .tflite with uint8 input and output (converts with TF)."""
    pytest.importorskip("tensorflow")
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build

    model = build("unet", 5, (24, 32, 3), filters=4, depth=2)
    rng = np.random.default_rng(0)

    def calibration():
        for _ in range(8):
            yield rng.random((1, 24, 32, 3), dtype=np.float32)

    path = tmp_path_factory.mktemp("int8") / "unet_int8.tflite"
    path.write_bytes(convert_keras_to_tflite(model, "int8", calibration, io_type="uint8"))
    return path


@pytest.mark.slow
def test_a_real_int8_model_fed_directly_gives_the_labels_of_the_float_path(int8_tflite):
    from edgeseg.runtime import load_predictor

    predictor = load_predictor(int8_tflite)
    segmenter = Segmenter(predictor)
    frame = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    batch, _ = segmenter.preprocess(frame)
    assert batch.dtype == np.uint8 and segmenter.infer(batch).dtype == np.uint8
    np.testing.assert_array_equal(
        segmenter(frame), reference_labels(predictor, frame, segmenter.scale, segmenter.offset))
