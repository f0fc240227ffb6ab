"""Predictors for each model format, behind one interface."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION, FORMATS_BY_SUFFIX, Artifact, open_artifact
from edgeseg.artifacts import read_metadata as _read_metadata


def read_metadata(model_path: str | os.PathLike) -> dict | None:
    """The model's metadata in ``edgeseg.artifacts``' precedence (sidecar, then run.json)."""
    return _read_metadata(model_path) or None


class Predictor:
    """Runs one model format. Subclasses set ``input_size`` (W, H) and implement ``run``.

    ``artifact`` (``edgeseg.artifacts.Artifact``) says what the file is: its task, classes,
    palette and normalisation; predictors made without one (tests, wrappers) fall back to
    ``metadata``. ``runtime`` names what runs the model ("ai-edge-litert 2.3.0", "onnxruntime
    1.22.0 (CPUExecutionProvider)"); ``xnnpack`` says how XNNPACK ran a .tflite graph (see
    :class:`TFLitePredictor`), None for other formats.
    """

    format = "?"
    runtime: str | None = None
    xnnpack: dict | None = None

    def __init__(self, path: Path, metadata: dict | None, artifact: Artifact | None = None):
        self.path = path
        self.artifact = artifact
        self.metadata = metadata if metadata is not None else (artifact.metadata if artifact else {})
        self.input_size: tuple[int, int] | None = None

    @property
    def task(self) -> str:
        """"semantic" or "instance": the artifact's (read from the model's outputs); without
        one, an instance predictor is one with a ``detect`` method or metadata saying so."""
        if self.artifact:
            return self.artifact.task
        if callable(getattr(self, "detect", None)) or self.metadata.get("task") == "instance":
            return "instance"
        return "semantic"

    @property
    def normalisation(self) -> dict:
        if self.artifact:
            return self.artifact.normalisation
        return self.metadata.get("normalisation") or dict(DEFAULT_NORMALISATION)

    @property
    def classes(self) -> list[str] | None:
        if self.artifact and self.artifact.classes:
            return self.artifact.classes
        return self.metadata.get("classes")

    @property
    def palette(self) -> list | None:
        return self.artifact.palette if self.artifact else self.metadata.get("palette")

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4:
            raise ValueError(f"predictor input must be a (N, H, W, 3) batch, got {batch.shape}")
        return self.run(batch)


class KerasPredictor(Predictor):
    format = "keras"

    def __init__(self, path: Path, metadata: dict | None, artifact: Artifact | None = None):
        super().__init__(path, metadata, artifact)
        from edgeseg.models.loading import load_keras_model

        self.model = load_keras_model(path)
        self.runtime = keras_runtime_label()
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


def keras_runtime_label() -> str:
    """Keras and its backend: "keras 3.10.0 (tensorflow 2.19.0 backend)"."""
    import importlib
    import sys

    import keras

    backend = keras.backend.backend()
    module = sys.modules.get(backend) or importlib.import_module(backend)
    version = getattr(module, "__version__", None)
    return f"keras {keras.__version__} ({' '.join(filter(None, (backend, version)))} backend)"


class TFLitePredictor(Predictor):
    """LiteRT interpreter; quantises a float input and dequantises an int8 / uint8 output.

    ``runtime`` is the interpreter's package and version ("tflite-runtime 2.14.0"); ``graph``
    its :func:`~edgeseg.runtime_tflite.delegation` of the model, and ``xnnpack`` that in short:
    ``{"partitions": XNNPACK partitions, "nodes_outside": operators left to the runtime's own
    kernels, "ran_graph": whether XNNPACK ran all the convolutions}``. An int8 model whose
    convolutions run outside XNNPACK is warned about once per file
    (:func:`~edgeseg.runtime_tflite.warn_if_int8_without_xnnpack`).
    """

    format = "tflite"

    def __init__(self, path: Path, metadata: dict | None, threads: int | None = None,
                 artifact: Artifact | None = None):
        super().__init__(path, metadata, artifact)
        from edgeseg.runtime_tflite import (
            delegation,
            load_interpreter,
            runtime_label,
            warn_if_int8_without_xnnpack,
            xnnpack_ran_graph,
        )

        self.interpreter = load_interpreter(path, num_threads=threads)
        _, height, width, _ = self.interpreter.get_input_details()[0]["shape"]
        self.input_size = (int(width), int(height))
        self.runtime = runtime_label()
        self.graph = delegation(self.interpreter)
        self.xnnpack = {
            "partitions": self.graph["partitions"],
            "nodes_outside": sum(self.graph["outside"].values()),
            "ran_graph": xnnpack_ran_graph(self.graph),
        }
        warn_if_int8_without_xnnpack(self.graph, path)

    def run(self, batch):
        from edgeseg.runtime_tflite import run_interpreter

        return np.concatenate([run_interpreter(self.interpreter, x[None]) for x in batch])


class OnnxPredictor(Predictor):
    """onnxruntime, with the TensorRT or CUDA execution provider where present."""

    format = "onnx"

    def __init__(self, path: Path, metadata: dict | None, threads: int | None = None,
                 artifact: Artifact | None = None):
        super().__init__(path, metadata, artifact)
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
        self.runtime = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"
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
    """A predictor for a .keras, .tflite or .onnx file, with what ``open_artifact`` says of it.

    Raises:
        FileNotFoundError: no such file.
        edgeseg.artifacts.ArtifactError: an unknown suffix, or a file that is not a model of
            its suffix (junk, truncated, empty), named with what it is not.
    """
    artifact = open_artifact(path)
    if artifact.format == "keras":
        return KerasPredictor(artifact.path, None, artifact)
    if artifact.format == "tflite":
        return TFLitePredictor(artifact.path, None, threads, artifact)
    if artifact.format == "onnx":
        return OnnxPredictor(artifact.path, None, threads, artifact)
    raise ValueError(
        f"{artifact.path}: {artifact.format} files run through their own runtime; "
        f"load_predictor takes {', '.join(s for s, f in FORMATS_BY_SUFFIX.items() if f != 'engine')}"
    )
