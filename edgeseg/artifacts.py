"""What is this model file? One answer for every command.

``open_artifact("runs/enet/best_int8.tflite")`` reads a ``.keras``, ``.tflite``, ``.onnx`` or
``.engine`` file and the metadata beside it and returns an :class:`Artifact`: its format, its
task (``"semantic"`` or ``"instance"``, read from the model's own outputs, never from a name),
its family in the registry, classes, palette, input size, normalisation and quantisation.
Export, eval, bench, demo, ``--init-from`` and ``--resume`` ask it.

Metadata precedence (the first that has a field wins):

1. the sidecar ``<file>.json`` that ``edgeseg export`` writes (schema :data:`SIDECAR_VERSION`,
   read and written only here: :func:`read_sidecar`, :func:`write_sidecar`);
2. the training record ``run.json`` in the same folder (``edgeseg train``'s run directory);
3. what the file embeds: a ``.tflite``'s packed ``edgeseg.json``, a ``.keras`` archive's model
   config (input size, class count).

Task, input size and quantisation always come from the file itself. Light: NumPy, the standard
library and, for ``.tflite`` / ``.onnx`` / ``.engine`` files, their runtimes; never TensorFlow or
Keras (a ``.keras`` file is read as the zip archive it is).
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.instances import DETECTION_KEYS, detection_roles
from edgeseg.io import read_json, write_json_atomic

__all__ = [
    "DEFAULT_NORMALISATION",
    "FORMATS_BY_SUFFIX",
    "SIDECAR_VERSION",
    "Artifact",
    "ArtifactError",
    "check_model_file",
    "open_artifact",
    "read_metadata",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

DEFAULT_NORMALISATION: dict[str, float] = {"scale": 1 / 255, "offset": 0.0}
"""What edgeseg's models take: ``image * scale + offset``, i.e. RGB in [0, 1]."""

FORMATS_BY_SUFFIX = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx", ".engine": "engine"}
TASKS = ("semantic", "instance")
SIDECAR_VERSION = 1
"""Version 1: the fields of :data:`SIDECAR_FIELDS`; files without ``sidecar_version`` (written
before it existed) read as version 1 too."""
SIDECAR_FIELDS = ("sidecar_version", "model", "task", "source", "format", "quant", "quant_mode",
                  "io", "output", "classes", "palette", "size", "input_size", "normalisation",
                  "ignore_index", "embedded_metadata", "runtimes", "edgeseg_version", "created")

_TFLITE_IDENTIFIER = b"TFL3"
_ONNX_FIRST_BYTES = (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x3a", b"\x42")


class ArtifactError(ValueError):
    """A model file that is missing, of an unknown suffix, or not what its suffix says."""


# --- files -------------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    kind = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise ArtifactError(
            f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; accepted: "
            + ", ".join(FORMATS_BY_SUFFIX)
        )
    return kind


def check_model_file(path: str | os.PathLike) -> str:
    """The format of ``path`` ("keras", "tflite", "onnx", "engine") after checking that the file
    exists and starts as that format does; an :class:`ArtifactError` (or FileNotFoundError) that
    names the file and says what it is not, otherwise."""
    path = Path(path).expanduser()
    kind = _format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not a {path.suffix} model file")
    size = path.stat().st_size
    if size == 0:
        raise ArtifactError(f"{path} is empty (0 bytes), not a {path.suffix} model file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if kind == "keras":
        problem = None
        if not zipfile.is_zipfile(path):
            problem = ("not a zip archive (truncated, or not written by Keras 3)"
                       if head.startswith(b"PK") else "not a zip archive")
        else:
            try:
                with zipfile.ZipFile(path) as archive:
                    if "config.json" not in archive.namelist():
                        problem = "a zip archive without config.json"
                    else:
                        json.loads(archive.read("config.json"))
            except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
                problem = f"a damaged archive ({error})"
        if problem:
            raise ArtifactError(f"{path} is not a Keras model (.keras archive): it is {problem}")
    elif kind == "tflite":
        if head[4:8] != _TFLITE_IDENTIFIER:
            raise ArtifactError(
                f"{path} is not a TFLite model: its bytes 4-8 are {head[4:8]!r}, not the TFLite "
                "flatbuffer identifier b'TFL3'"
            )
    # An ONNX file is a ModelProto: its first field is ir_version (field 1, varint: 0x08) or, in
    # some writers, another small-numbered field. Junk rarely starts so; onnxruntime checks the rest.
    elif kind == "onnx" and head[:1] not in _ONNX_FIRST_BYTES:
        raise ArtifactError(
            f"{path} is not an ONNX model: it does not start as a serialised ModelProto does"
        )
    return kind


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.tflite`` -> ``model.tflite.json`` (so that model.tflite and model.keras never
    share one)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of the model file ``path``, or None; a ValueError naming it when it is
    damaged or of a newer schema than this edgeseg reads."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    data = read_json(sidecar, "metadata file")
    if not isinstance(data, dict):
        raise ValueError(f"metadata file {sidecar} holds a {type(data).__name__}, not an object")
    version = data.get("sidecar_version", 1)
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        raise ValueError(
            f"metadata file {sidecar} has sidecar_version {version!r}; this edgeseg reads "
            f"versions up to {SIDECAR_VERSION}: upgrade edgeseg"
        )
    return data


def write_sidecar(path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Writes the sidecar of the model file ``path`` atomically, in the current schema."""
    from edgeseg import __version__

    unknown = sorted(set(metadata) - set(SIDECAR_FIELDS))
    if unknown:
        raise ValueError(f"sidecar fields {unknown} are not in schema {SIDECAR_VERSION}: "
                         f"{', '.join(SIDECAR_FIELDS)}")
    data = {"sidecar_version": SIDECAR_VERSION, "edgeseg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **metadata}
    data["sidecar_version"] = SIDECAR_VERSION
    return write_json_atomic(sidecar_path(path), data)


def _run_record(path: Path) -> dict[str, Any] | None:
    record_path = path.with_name("run.json")
    if not record_path.is_file():
        return None
    data = read_json(record_path, "training record")
    if not isinstance(data, dict):
        raise ValueError(f"training record {record_path} holds a {type(data).__name__}, "
                         "not an object")
    return data


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a model file merged in the documented precedence (sidecar, run.json);
    what the file embeds is added by :func:`open_artifact`. Empty when there is none."""
    path = Path(path).expanduser()
    merged: dict[str, Any] = {}
    for source in (_run_record(path), read_sidecar(path)):  # later wins
        if source:
            merged.update({k: v for k, v in source.items() if v is not None})
    return merged


# --- what the file says of itself ----------------------------------------------------------------


@dataclass
class _Inspection:
    input_size: tuple[int, int] | None  # (W, H)
    task: str
    num_classes: int | None = None
    quant: str | None = None  # what the file shows: "int8" for integer input, else None
    input_dtype: str = "float32"
    output: str | None = None  # logits / probs / mask / detections, where the file shows it
    name: str | None = None  # the model's own name (Keras)
    embedded: dict[str, Any] = field(default_factory=dict)


def _keras_layer_index(config: dict) -> dict[str, dict]:
    return {layer.get("name") or layer["config"].get("name"): layer
            for layer in config["config"].get("layers", [])}


def _nested_layer(config: dict, name: str) -> dict | None:
    """The layer called ``name`` anywhere in a Keras config, nested models included."""
    for layer in config.get("config", {}).get("layers", []) or []:
        if layer.get("name") == name:
            return layer
        if isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            found = _nested_layer(layer, name)
            if found:
                return found
    return None


def _keras_class_count(layers: dict[str, dict], name: str) -> int | None:
    """The channel count of a semantic model's output: the first layer back from the output
    with ``filters`` / ``units`` / ``num_classes`` in its config."""
    for _ in range(50):
        layer = layers.get(name)
        if layer is None:
            return None
        cfg = layer.get("config", {})
        for key in ("num_classes", "filters", "units"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
        nodes = layer.get("inbound_nodes") or []
        try:
            name = nodes[0]["args"][0]["config"]["keras_history"][0]
        except (IndexError, KeyError, TypeError):
            return None
    return None


def _inspect_keras(path: Path) -> _Inspection:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    inner = config.get("config", {})
    layers = _keras_layer_index(config)
    outputs = inner.get("output_layers")
    task = "instance" if isinstance(outputs, dict) and set(DETECTION_KEYS) <= set(outputs) else "semantic"
    size = None
    inputs = inner.get("input_layers") or []
    first_input = inputs[0] if inputs and isinstance(inputs[0], list) else inputs
    if first_input and first_input[0] in layers:
        shape = layers[first_input[0]]["config"].get("batch_shape") or []
        if len(shape) == 4 and shape[1] and shape[2]:
            size = (int(shape[2]), int(shape[1]))
    num_classes = output = None
    if task == "instance":
        # The box head's classifier (a Dense layer of the nested box_head model) has one unit
        # per class, background included.
        logits = _nested_layer(config, "box_class_logits")
        num_classes = logits["config"].get("units") if logits else None
        output = "detections"
    elif isinstance(outputs, list) and outputs:
        last = outputs[0][0] if isinstance(outputs[0], list) else outputs[0]
        num_classes = _keras_class_count(layers, last)
    return _Inspection(size, task, num_classes, name=inner.get("name"), output=output)


def _inspect_tflite(path: Path) -> _Inspection:
    import numpy as np

    from edgeseg.runtime_tflite import interpreter_class

    try:
        interpreter = interpreter_class()(model_path=str(path))
    except ValueError as error:
        raise ArtifactError(f"{path} is not a TFLite model LiteRT can read: {error}") from None
    (detail,) = interpreter.get_input_details()[:1]
    _, height, width, _ = (int(v) for v in detail["shape"])
    outputs = interpreter.get_output_details()
    specs = []
    for out in outputs:
        dtype = np.dtype(out["dtype"])
        quantised = dtype in (np.int8, np.uint8) and bool(out["quantization"][0])
        specs.append((tuple(int(v) for v in out["shape"]), dtype.kind == "f" or quantised))
    task = "instance" if detection_roles(specs) is not None else "semantic"
    input_dtype = np.dtype(detail["dtype"]).name
    num_classes = output = None
    if task == "semantic":
        shape = specs[0][0]
        output = "mask" if len(shape) == 3 else None
        num_classes = shape[-1] if len(shape) == 4 else None
    else:
        output = "detections"
    embedded = {}
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            if "edgeseg.json" in archive.namelist():
                embedded = json.loads(archive.read("edgeseg.json"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        embedded = {}
    quant = "int8" if input_dtype in ("int8", "uint8") else None
    return _Inspection((width, height), task, num_classes, quant, input_dtype, output,
                       embedded=embedded)


def _onnx_shape(shape) -> tuple:
    return tuple(v if isinstance(v, int) else None for v in shape)


def _inspect_onnx(path: Path) -> _Inspection:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError('reading .onnx models needs onnxruntime: pip install "edgeseg[onnx]"') from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"{path} is not an ONNX model onnxruntime can read: {first_line}") from None
    shape = _onnx_shape(session.get_inputs()[0].shape)
    size = (shape[2], shape[1]) if len(shape) == 4 and shape[1] and shape[2] else None
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    instance = sorted(names) == sorted(DETECTION_KEYS) or detection_roles(
        [(_onnx_shape(o.shape), "float" in o.type) for o in outputs]) is not None
    if instance:
        return _Inspection(size, "instance", output="detections")
    out_shape = _onnx_shape(outputs[0].shape)
    num_classes = out_shape[-1] if len(out_shape) == 4 else None
    return _Inspection(size, "semantic", num_classes, output="mask" if len(out_shape) == 3 else None)


def _inspect_engine(path: Path) -> _Inspection:
    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError(
            f"{path}: reading TensorRT engines needs TensorRT (an NVIDIA GPU with the tensorrt "
            "Python package, as on JetPack)"
        ) from None
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"{path} is not a TensorRT engine this TensorRT can deserialise")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    shape = tuple(engine.get_tensor_shape(inputs[0]))
    # An engine built from an NCHW ONNX graph takes (N, 3, H, W) and gives (N, K, H, W).
    channels_first = len(shape) == 4 and shape[1] == 3 and shape[3] != 3
    height, width = (shape[2:4] if channels_first else shape[1:3]) if len(shape) == 4 else (0, 0)
    size = (int(width), int(height)) if min(height, width) > 0 else None
    if sorted(outputs) == sorted(DETECTION_KEYS):
        return _Inspection(size, "instance", output="detections")
    out_shape = tuple(engine.get_tensor_shape(outputs[0]))
    classes = (out_shape[1] if channels_first else out_shape[-1]) if len(out_shape) == 4 else None
    return _Inspection(size, "semantic", classes)


_INSPECTORS = {"keras": _inspect_keras, "tflite": _inspect_tflite, "onnx": _inspect_onnx,
               "engine": _inspect_engine}


# --- the answer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A model file and what edgeseg knows of it (see the module's precedence)."""

    path: Path
    format: str  # keras / tflite / onnx / engine
    task: str  # semantic / instance, from the model's outputs
    family: str | None  # the registry name it was built as (metadata, else the model's name)
    classes: list[str]
    palette: list[list[int]] | None
    input_size: tuple[int, int] | None  # (W, H)
    normalisation: dict[str, float]
    quant: str  # none / fp16 / dynamic / int8 / qat, or "unknown" for a file without metadata
    output: str | None  # logits / probs / mask / detections
    metadata: dict[str, Any]  # everything merged, for the fields not named here
    run: dict[str, Any] | None  # the training record beside the file, if any

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_instance(self) -> bool:
        return self.task == "instance"

    def describe(self) -> str:
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else "any size"
        return (f"{self.path.name}: {self.format} {self.task} model"
                + (f" ({self.family})" if self.family else "")
                + f", {self.num_classes} classes, input {size}, quantisation {self.quant}")


def open_artifact(path: str | os.PathLike) -> Artifact:
    """Reads a model file and its metadata; see the module docstring.

    Raises:
        FileNotFoundError: the file does not exist.
        ArtifactError: an unknown suffix, or a file that is not what its suffix says (junk,
            truncated, empty), named with what it is not.
        ValueError: a damaged sidecar or run.json.
    """
    path = Path(path).expanduser()
    kind = check_model_file(path)
    seen = _INSPECTORS[kind](path)
    run = _run_record(path)
    sidecar = read_sidecar(path) or {}
    merged: dict[str, Any] = {}
    for source in (seen.embedded, run or {}, sidecar):  # later wins: the documented precedence
        merged.update({k: v for k, v in source.items() if v is not None})

    num_classes = seen.num_classes
    classes = merged.get("classes")
    if not classes:
        count = num_classes or 0
        classes = [f"class_{i}" for i in range(count)]
    elif num_classes and len(classes) != num_classes:
        raise ValueError(
            f"{path}: the model has {num_classes} classes but its metadata names "
            f"{len(classes)} ({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''})"
        )
    family = merged.get("model") or seen.name
    quant = sidecar.get("quant") or ("none" if kind == "keras" else seen.quant or "unknown")
    return Artifact(
        path=path,
        format=kind,
        task=seen.task,
        family=family,
        classes=[str(c) for c in classes],
        palette=merged.get("palette"),
        input_size=seen.input_size or _size(merged.get("input_size") or merged.get("size")),
        normalisation=dict(merged.get("normalisation") or DEFAULT_NORMALISATION),
        quant=quant,
        output=seen.output or merged.get("output") or "logits",
        metadata=merged,
        run=run,
    )


def _size(value: Sequence | None) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None
