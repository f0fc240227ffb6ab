"""Predictors for each model format, behind one interface."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
"""The precisions a .keras model runs at, and the Keras dtype policy of each: the mixed ones
compute in 16 bits and keep their variables in float32."""


class KerasPredictor(Predictor):
    """A .keras model on the active Keras backend, its forward pass compiled: ``jax.jit`` of
    ``model.stateless_call`` on JAX, ``tf.function`` on TensorFlow; on the first GPU where the
    backend sees one.

    ``precision`` is "fp32", or "bf16" / "fp16": the model rebuilt under Keras' mixed dtype
    policy (16-bit compute, float32 variables); the output is float32 either way. The predictor
    says what ran: ``backend`` ("jax", "tensorflow"), ``device`` (:func:`keras_device`) and
    ``precision`` as a label, "fp32 (matmul precision: default)" or "bf16 (mixed_bfloat16)".
    ``dtype_policy`` is the Keras policy it runs under: a model put in ``model`` later (at another
    input size) is built inside :func:`dtype_policy_scope` of it, then ``_compiled_forward()``.
    """

    format = "keras"

    def __init__(self, path: Path, metadata: dict | None, artifact: Artifact | None = None,
                 precision: str = "fp32"):
        super().__init__(path, metadata, artifact)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        import keras

        from edgeseg.models.loading import load_keras_model

        self.model = load_keras_model(path)
        if precision != "fp32":
            self.model = _rebuilt_with_policy(self.model, path, PRECISIONS[precision])
        self.dtype_policy = PRECISIONS[precision]
        self.backend = keras.backend.backend()
        self.device = keras_device()
        self.precision = precision_label(precision, self.device)
        self.runtime = keras_runtime_label(self.device)
        shape = self.model.inputs[0].shape
        if shape[1] is not None and shape[2] is not None:
            self.input_size = (int(shape[2]), int(shape[1]))
        self._forward = self._compiled_forward()

    def _compiled_forward(self):
        """The forward pass as one compiled program (eager calls cost ms per layer). On JAX the
        variables are arguments of the jitted function, not constants folded into it; the
        returned callable is ``functools.partial(jitted, trainable, non_trainable)``."""
        import keras

        model = self.model
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        if backend == "jax":
            import functools

            import jax

            def forward(trainable, non_trainable, x):
                outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
                return outputs

            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return functools.partial(jax.jit(forward), trainable, non_trainable)
        return lambda x: model(x, training=False)

    def run(self, batch):
        from keras import ops

        # A mixed-precision model returns bf16 / fp16; callers get float32 whatever ran.
        return np.asarray(ops.convert_to_numpy(self._forward(batch)), np.float32)


def _rebuilt_with_policy(model, path: Path, policy: str):
    """``model`` rebuilt from its archive's config under the dtype policy ``policy``, with its
    weights. Every layer's saved policy is replaced (a saved policy outranks the global one) and
    the global policy is set while building, for sub-layers made without one. The config is read
    from the archive, not ``model.get_config()``, which imports TensorFlow on any backend."""
    import json
    import zipfile

    import keras

    def replace(node):
        if isinstance(node, dict):
            if node.get("module") == "keras" and node.get("class_name") == "DTypePolicy":
                return policy
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(value) for value in node]
        return node

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    config.pop("compile_config", None)  # inference only: no optimizer or loss to rebuild
    with dtype_policy_scope(policy):
        rebuilt = keras.saving.deserialize_keras_object(replace(config), safe_mode=True)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to ``policy`` ("mixed_bfloat16") inside the block: a model
    built there computes at that precision (``KerasPredictor.dtype_policy`` names its own)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def keras_device() -> dict:
    """The device the active Keras backend runs on: ``{"platform": "gpu" | "cpu", "name"}``,
    and for a GPU ``"memory_mib"``, ``"driver"`` and ``"compute_capability"`` ("9.0") where
    known (None where not: a Jetson has no nvidia-smi)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "gpu":
            return {"platform": device.platform, "name": device.device_kind}
        info = {"platform": "gpu", "name": device.device_kind,
                "compute_capability": getattr(device, "compute_capability", None)}
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return {"platform": "cpu", "name": "cpu"}
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability")
        info = {"platform": "gpu", "name": details.get("device_name", gpus[0].name),
                "compute_capability": ".".join(map(str, capability)) if capability else None}
    else:
        return {"platform": "cpu", "name": "cpu"}
    from edgeseg.bench.fingerprint import driver_from_proc

    smi = visible_nvidia_gpu()
    return {**info, "name": info["name"] or smi.get("name"),
            "memory_mib": smi.get("memory_mib"), "driver": smi.get("driver") or driver_from_proc(),
            "compute_capability": info["compute_capability"] or smi.get("compute_capability")}


def visible_nvidia_gpu() -> dict:
    """The first GPU this process sees (``CUDA_VISIBLE_DEVICES``) as nvidia-smi reports it
    (:func:`edgeseg.bench.fingerprint.nvidia_gpus`); {} where there is no nvidia-smi."""
    from edgeseg.bench.fingerprint import nvidia_gpus

    gpus = nvidia_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
    index = int(visible) if visible.isdigit() else 0
    return gpus[index] if index < len(gpus) else {}


def precision_label(precision: str, device: dict) -> str:
    """What "fp32" / "bf16" / "fp16" meant on this backend and device. fp32 states the matmul
    precision: on GPUs of compute capability 8.0 and newer both JAX (precision "default") and
    TensorFlow (TF32 execution enabled, its default) run float32 matmuls and convolutions in
    TF32."""
    if precision != "fp32":
        return f"{precision} ({PRECISIONS[precision]})"
    import keras

    capability = device.get("compute_capability")
    try:
        tf32_gpu = device["platform"] == "gpu" and float(capability) >= 8.0
    except (TypeError, ValueError):
        tf32_gpu = False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        setting = jax.config.jax_default_matmul_precision
        tf32 = tf32_gpu and setting in (None, "default", "tensorfloat32", "high")
        return f"fp32 (matmul precision: {setting or 'default'}{', TF32 on this GPU' if tf32 else ''})"
    if backend == "tensorflow" and tf32_gpu:
        import tensorflow as tf

        if tf.config.experimental.is_tensor_float_32_execution_enabled():
            return "fp32 (matmul precision: TF32 enabled, TF32 on this GPU)"
        return "fp32 (matmul precision: TF32 disabled)"
    return "fp32 (matmul precision: default)"


def keras_runtime_label(device: dict | None = None) -> str:
    """Keras, its backend and where it runs: "keras 3.10.0 (jax 0.6.2 backend, cpu)",
    "keras 3.10.0 (tensorflow 2.19.0 backend, gpu NVIDIA H200)"."""
    import importlib
    import sys

    import keras

    backend = keras.backend.backend()
    module = sys.modules.get(backend) or importlib.import_module(backend)
    version = getattr(module, "__version__", None)
    device = device or keras_device()
    where = device["platform"] if device["platform"] == "cpu" else f"{device['platform']} {device['name']}"
    return f"keras {keras.__version__} ({' '.join(filter(None, (backend, version)))} backend, {where})"


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
    """onnxruntime, with the TensorRT or CUDA execution provider where present.

    ``providers`` lists the execution providers the session uses, in onnxruntime's order of
    preference (``session.get_providers()``: the ones it asked for that loaded), and
    ``runtime`` names them all: "onnxruntime 1.22.0 (CUDAExecutionProvider,
    CPUExecutionProvider)". Nodes a provider cannot take fall to the next one.
    """

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
        self.providers = list(self.session.get_providers())
        self.runtime = f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"
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


class EnginePredictor(Predictor):
    """A TensorRT engine (``.engine``), through TensorRT's Python API and cuda-python / pycuda.

    The engine is deserialised and its GPU buffers allocated once
    (:class:`edgeseg.runtime.engine.EngineRunner`); a call runs the images in batches of the
    engine's batch size (``batch``), the last one filled up. ``layout`` is the engine input's:
    "NHWC" as edgeseg's ONNX export writes it, or "NCHW" for a channels-first model, whose
    images are transposed on the way in and whose (N, K, H, W) output is transposed back. The
    first output is returned: float outputs as float32 (an FP16 engine's half-precision logits
    included), a uint8 mask as it is. An instance engine (outputs named as
    ``edgeseg.instances.DETECTION_KEYS``) also has ``detect``.

    ``runtime`` is "tensorrt 10.3.0 (Orin)": the TensorRT version and the GPU, where CUDA or
    nvidia-smi names it. An engine runs only with the TensorRT version and on the GPU model
    that built it; another one's is a RuntimeError saying so.
    """

    format = "engine"

    def __init__(self, path: Path, metadata: dict | None, artifact: Artifact | None = None,
                 runner=None):
        super().__init__(path, metadata, artifact)
        from edgeseg.runtime.engine import EngineRunner

        self.engine = runner if runner is not None else EngineRunner(
            path, alternative=_onnx_alternative(Path(path)))
        shape = self.engine.input_shape
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(
                f"{path}: the engine's input is {shape}; edgeseg runs image engines, (N, H, W, 3) "
                "or (N, 3, H, W)"
            )
        self.layout = "NCHW" if shape[1] == 3 and shape[3] != 3 else "NHWC"
        height, width = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        self.input_size = (int(width), int(height))
        self.batch = self.engine.batch
        gpu = self.engine.cuda.device_name() or visible_nvidia_gpu().get("name")
        self.runtime = f"tensorrt {self.engine.tensorrt_version}" + (f" ({gpu})" if gpu else "")
        if artifact is not None and artifact.task == "instance":
            self.detect = self._detect

    def _outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        width, height = self.input_size
        if batch.shape[1:3] != (height, width):
            raise ValueError(
                f"{self.path.name} takes {width}x{height} images (W x H), got a batch of "
                f"{batch.shape[2]}x{batch.shape[1]}"
            )
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return self.engine.run(batch)

    def run(self, batch):
        name = self.engine.output_names[0]
        y = self._outputs(batch)[name]
        width, height = self.input_size
        if self.layout == "NCHW" and y.ndim == 4 and y.shape[2:] == (height, width):
            y = y.transpose(0, 2, 3, 1)  # (N, K, H, W) logits back to (N, H, W, K)
        return y.astype(np.float32, copy=False) if y.dtype.kind == "f" else y

    def _detect(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from edgeseg.instances import DETECTION_KEYS

        outputs = self._outputs(np.asarray(batch, np.float32))
        return {key: outputs[key] for key in DETECTION_KEYS}

    def close(self) -> None:
        """Frees the engine's GPU buffers now (they are freed with the predictor otherwise)."""
        self.engine.close()


def _onnx_alternative(engine_path: Path) -> str:
    """What to run instead of an engine without TensorRT: the .onnx beside it, if there."""
    onnx_path = engine_path.with_suffix(".onnx")
    if onnx_path.is_file():
        return f"run {onnx_path} beside it with onnxruntime"
    return ("run the model's ONNX export with onnxruntime (edgeseg export --format onnx; "
            "edgeseg export --format tensorrt writes it beside the engine)")


def load_predictor(path: str | os.PathLike, threads: int | None = None,
                   precision: str = "fp32") -> Predictor:
    """A predictor for a .keras, .tflite, .onnx or .engine file, with what ``open_artifact``
    says of it.

    ``precision`` ("fp32", "bf16", "fp16") applies to .keras models (see
    :class:`KerasPredictor`); the other formats run at the precision they were exported at.

    Raises:
        FileNotFoundError: no such file.
        edgeseg.artifacts.ArtifactError: an unknown suffix, or a file that is not a model of
            its suffix (junk, truncated, empty), named with what it is not.
        ImportError: the runtime of the format is not installed (onnxruntime, TensorRT), with
            how to install it.
        RuntimeError: an engine that this TensorRT or GPU cannot run (built by another).
    """
    path = Path(path).expanduser()
    if FORMATS_BY_SUFFIX.get(path.suffix.lower()) == "engine":
        return _load_engine_predictor(path, precision)
    artifact = open_artifact(path)
    _check_precision(artifact.path, artifact.format, precision)
    if artifact.format == "keras":
        return KerasPredictor(artifact.path, None, artifact, precision=precision)
    if artifact.format == "tflite":
        return TFLitePredictor(artifact.path, None, threads, artifact)
    if artifact.format == "onnx":
        return OnnxPredictor(artifact.path, None, threads, artifact)
    raise ValueError(
        f"{artifact.path}: load_predictor takes {', '.join(FORMATS_BY_SUFFIX)} files, not "
        f"{artifact.format}"
    )


def _check_precision(path: Path, kind: str, precision: str) -> None:
    if precision != "fp32" and kind != "keras":
        raise ValueError(
            f"{path}: precision {precision!r} applies to .keras models; a "
            f".{kind} file runs at the precision it was exported at (pass \"fp32\")"
        )


def _load_engine_predictor(path: Path, precision: str) -> EnginePredictor:
    """The engine is opened before ``open_artifact`` reads it, so that a missing TensorRT or an
    engine built by another TensorRT / GPU fails with what to do (an ImportError naming the
    install and the .onnx beside it; a RuntimeError), not as an unreadable file."""
    from edgeseg.artifacts import check_model_file
    from edgeseg.runtime.engine import EngineRunner

    check_model_file(path)
    _check_precision(path, "engine", precision)
    runner = EngineRunner(path, alternative=_onnx_alternative(path))
    try:
        artifact = open_artifact(path)
        return EnginePredictor(artifact.path, None, artifact, runner=runner)
    except BaseException:
        runner.close()
        raise
