"""Predictors for each model format, behind one interface."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMATS_BY_SUFFIX = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}


def read_metadata(model_path: str | os.PathLike) -> dict | None:
    """The model's metadata: its sidecar ``<file>.json`` (exports) or ``run.json`` (training)."""
    path = Path(model_path)
    for candidate in (path.with_name(path.name + ".json"), path.with_name("run.json")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"metadata file {candidate} is not valid JSON: {error}") from None
    return None


class Predictor:
    """Runs one model format. Subclasses set ``input_size`` (W, H) and implement ``run``."""

    format = "?"

    def __init__(self, path: Path, metadata: dict | None):
        self.path = path
        self.metadata = metadata or {}
        self.input_size: tuple[int, int] | None = None

    @property
    def normalisation(self) -> dict:
        return self.metadata.get("normalisation") or {"scale": 1 / 255, "offset": 0.0}

    @property
    def classes(self) -> list[str] | None:
        return self.metadata.get("classes")

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4:
            raise ValueError(f"predictor input must be a (N, H, W, 3) batch, got {batch.shape}")
        return self.run(batch)


class KerasPredictor(Predictor):
    format = "keras"

    def __init__(self, path: Path, metadata: dict | None):
        super().__init__(path, metadata)
        from edgeseg.evaluate import load_keras_model

        self.model = load_keras_model(path)
        shape = self.model.inputs[0].shape
        if shape[1] is not None and shape[2] is not None:
            self.input_size = (int(shape[2]), int(shape[1]))
        self._forward = self._compiled_forward()

    def _compiled_forward(self):
        """The forward pass as one graph on TensorFlow (eager calls cost ms per layer)."""
        import keras

        model = self.model
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: model(x, training=False)

    def run(self, batch):
        from keras import ops

        return ops.convert_to_numpy(self._forward(batch))


class TFLitePredictor(Predictor):
    """LiteRT interpreter; quantises a float input and dequantises an int8 / uint8 output."""

    format = "tflite"

    def __init__(self, path: Path, metadata: dict | None, threads: int | None = None):
        super().__init__(path, metadata)
        from edgeseg.runtime_tflite import load_interpreter

        self.interpreter = load_interpreter(path, num_threads=threads)
        _, height, width, _ = self.interpreter.get_input_details()[0]["shape"]
        self.input_size = (int(width), int(height))

    def run(self, batch):
        from edgeseg.runtime_tflite import run_interpreter

        return np.concatenate([run_interpreter(self.interpreter, x[None]) for x in batch])


class OnnxPredictor(Predictor):
    """onnxruntime, with the TensorRT or CUDA execution provider where present."""

    format = "onnx"

    def __init__(self, path: Path, metadata: dict | None, threads: int | None = None):
        super().__init__(path, metadata)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError('running .onnx models needs onnxruntime: pip install "edgeseg[onnx]"') from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in preferred if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0]
        shape = self.input.shape
        if isinstance(shape[1], int) and isinstance(shape[2], int):
            self.input_size = (shape[2], shape[1])
        self.batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, batch):
        if self.batch == 1:
            outputs = [self.session.run(None, {self.input.name: x[None]})[0] for x in batch]
            return np.concatenate(outputs)
        return self.session.run(None, {self.input.name: batch})[0]


def load_predictor(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """A predictor for a .keras, .tflite or .onnx file, with its metadata."""
    path = Path(path).expanduser()
    kind = FORMATS_BY_SUFFIX.get(path.suffix)
    if kind is None:
        raise ValueError(
            f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; accepted: "
            + ", ".join(FORMATS_BY_SUFFIX)
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    metadata = read_metadata(path)
    if kind == "keras":
        return KerasPredictor(path, metadata)
    if kind == "tflite":
        return TFLitePredictor(path, metadata, threads)
    return OnnxPredictor(path, metadata, threads)
