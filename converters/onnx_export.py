"""Keras model -> ONNX, through tf2onnx, and an onnxruntime runner to check the result.

The exported graph keeps the Keras model's interface: one float32 input named ``image`` of shape
(batch, H, W, 3) in channels-last (NHWC) order with values in [0, 1], and one output named
``output`` (logits (batch, H, W, K), or a uint8 (batch, H, W) mask for ``output="mask"``
models). tf2onnx inserts the Transposes that ONNX's channels-first Conv and MaxPool need and
cancels most of them; an application therefore feeds the same arrays to the Keras, TFLite, ONNX
and TensorRT models, with no layout change on the device.

tf2onnx, onnx and onnxruntime are optional (``pip install "edgeseg[onnx]"``) and imported by the
functions that use them, never at module import.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# Opset 17 is the oldest that every runtime edgeseg targets parses fully (TensorRT 8.6 and 10,
# onnxruntime); tf2onnx 1.17 writes opsets up to 18.
MIN_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "output"
# onnxruntime execution providers, fastest first; those that the installed build lacks are skipped.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_INSTALL_HINT = 'pip install "edgeseg[onnx]"'


def _import_optional(name: str):
    """Imports tf2onnx, onnx or onnxruntime, or says how to install them."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"{name} is needed for ONNX export and inference but could not be imported "
            f"({error}); install it with: {_INSTALL_HINT}"
        ) from error


def _max_tf2onnx_opset() -> int:
    constants = _import_optional("tf2onnx.constants")
    return max(constants.OPSET_TO_IR_VERSION)


def convert_keras_to_onnx(model, opset: int = MIN_OPSET, batch: int = 1):
    """Converts a Keras 3 image model to an ONNX ``ModelProto`` checked by ``onnx.checker``.

    Args:
        model: a Keras model with one (H, W, C) float32 input of static size, such as
            ``edgeseg.models.build(...)``.
        opset: ONNX opset of the default domain; 17 or newer.
        batch: the static batch size of the exported input. TensorRT builds fastest for a fixed
            shape; an INT8 ``EntropyCalibrator`` must use the same batch size.
    Returns:
        The model, with input ``image`` (batch, H, W, C) float32 NHWC and output ``output``
        (several outputs are named ``output_0``, ``output_1``, ...).
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset must be an integer >= {MIN_OPSET} (the oldest opset TensorRT 8.6 / 10 and "
            f"onnxruntime fully parse for these models), got {opset!r}"
        )
    max_opset = _max_tf2onnx_opset()
    if opset > max_opset:
        raise ValueError(
            f"the installed tf2onnx writes opsets up to {max_opset}, got opset {opset}"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if len(model.inputs) != 1:
        raise ValueError(f"expected a model with one image input, got {len(model.inputs)} inputs")
    image_shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in image_shape):
        raise ValueError(
            f"ONNX export needs a static input size, got (None, {', '.join(map(str, image_shape))}); "
            "build the model with input_shape=(H, W, C)"
        )

    tf2onnx = _import_optional("tf2onnx")
    onnx = _import_optional("onnx")
    import tensorflow as tf

    spec = (tf.TensorSpec((batch, *image_shape), tf.float32, name=INPUT_NAME),)
    function = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)

    outputs = [value.name for value in proto.graph.output]
    new_names = (
        [OUTPUT_NAME] if len(outputs) == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(len(outputs))]
    )
    for old, new in zip(outputs, new_names, strict=True):
        _rename_tensor(proto.graph, old, new)
    for key, value in (("edgeseg.input_layout", "NHWC"), ("edgeseg.input_range", "0..1")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _rename_tensor(graph, old: str, new: str) -> None:
    """Renames a tensor of the top-level graph (graph output, node outputs and inputs)."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]


def iter_nodes(graph) -> Iterator:
    """Every node of an ONNX graph, including those in the subgraphs of If, Loop and Scan."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_nodes(subgraph)


def onnx_op_types(proto) -> set[str]:
    """The operator types in a model: ``Conv``, ``Relu``, ...; other domains as ``domain:Op``.

    Subgraphs (If / Loop / Scan bodies) are included.
    """
    return {
        node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"
        for node in iter_nodes(proto.graph)
    }


def default_opset(proto) -> int:
    """The opset version of the default (``ai.onnx``) domain recorded in the model."""
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise ValueError("the model imports no default-domain (ai.onnx) opset")


def write_onnx(job, path: str | os.PathLike) -> str:
    """The formats table's ONNX converter: ``job.model`` as an ONNX file at ``path`` (float32;
    see ``edgeseg.converters.formats``). Returns the quantisation mode, ``job.quant``."""
    Path(path).write_bytes(convert_keras_to_onnx(job.model).SerializeToString())
    return job.quant


def preferred_providers(available: Sequence[str] | None = None) -> list[str]:
    """The onnxruntime execution providers to use, fastest first, among those available.

    TensorRT, then CUDA, then CPU; ``available`` defaults to what the installed onnxruntime
    offers.
    """
    if available is None:
        available = _import_optional("onnxruntime").get_available_providers()
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or list(available)


def run_onnx(path_or_bytes, x: np.ndarray, providers: Sequence[str] | None = None) -> np.ndarray:
    """Runs an ONNX image model with onnxruntime and returns its first output.

    Args:
        path_or_bytes: a file path, the serialized model or a ``ModelProto``.
        x: float32 images (N, H, W, C), or one image (H, W, C). When the model was exported
            with a batch of 1 and N > 1, the images run one at a time.
        providers: onnxruntime execution providers; by default ``preferred_providers()``.
    Returns:
        The output for all N images (no batch axis for a single (H, W, C) image).
    """
    ort = _import_optional("onnxruntime")
    if hasattr(path_or_bytes, "SerializeToString"):
        path_or_bytes = path_or_bytes.SerializeToString()
    elif isinstance(path_or_bytes, os.PathLike):
        path_or_bytes = os.fspath(path_or_bytes)
    session = ort.InferenceSession(
        path_or_bytes, providers=list(providers) if providers else preferred_providers()
    )
    model_input = session.get_inputs()[0]
    x = np.asarray(x, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(
            f"expected images (N, H, W, C) or one image (H, W, C), got shape {x.shape}"
        )
    model_batch = model_input.shape[0]
    if isinstance(model_batch, int) and model_batch != x.shape[0]:
        if model_batch != 1:
            raise ValueError(
                f"the model takes batches of {model_batch} images, got {x.shape[0]} images"
            )
        outputs = [session.run(None, {model_input.name: image[None]})[0] for image in x]
        y = np.concatenate(outputs, axis=0)
    else:
        y = session.run(None, {model_input.name: x})[0]
    return y[0] if single else y
