"""The table of export formats: it drives ``edgeseg export``'s help, validation and conversion.

Each row says what a format is called, the kind of model file it writes (its suffix comes from
the core table ``edgeseg.artifacts.FORMATS_BY_SUFFIX``, which the runtime reads too), the
quantisation modes and input / output types it accepts, whether it needs an NVIDIA GPU, the
extra that installs it, and the functions that write and check it. Converters are named as
``"module:function"`` strings and imported when an export runs, so that reading the table (the
CLI's help) imports no converter, TensorFlow or ONNX.

A converter is ``write(job: ConversionJob, path: Path) -> str``: it writes the artifact at
``path`` (a temporary name beside the destination; a folder for a folder format) and returns
the quantisation mode it applied (usually ``job.quant``). A check is ``check(path) -> None`` and
raises when the written artifact must not be kept. A task can put its own converter in place of
the row's (``edgeseg.converters.export.TaskExport.converters``: the instance models' TFLite).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.artifacts import FORMATS_BY_SUFFIX

QUANT_MODES = ("none", "fp16", "dynamic", "int8", "qat")
IO_TYPES = ("float32", "uint8", "int8")
OUTPUTS = ("logits", "probs", "mask")

SUFFIX_BY_ARTIFACT = {kind: suffix for suffix, kind in FORMATS_BY_SUFFIX.items()}
"""``"tflite"`` -> ``".tflite"``, ``"engine"`` -> ``".engine"``: the core table inverted."""


@dataclass(frozen=True)
class ConversionJob:
    """What a converter gets: the Keras model at the export size and how to convert it."""

    model: Any  # keras.Model
    quant: str
    io: str = "float32"
    calibration: Any = None  # np.ndarray of model inputs, for int8 / qat / TensorRT
    train_spec: str | None = None  # the training data spec (QAT fine-tunes on it)
    qat_epochs: int = 2
    destination: Path | None = None  # where the artifact will be renamed to (for side files)
    forms: dict = field(default_factory=dict)  # converter options for an older runtime
    # (edgeseg.converters.tflite.RUNTIME_FORMS)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    artifact: str | None  # the edgeseg.artifacts format it writes; None for a folder
    quant: tuple[str, ...]
    io: tuple[str, ...]
    needs_gpu: bool
    extra: str
    summary: str
    converter: str  # "module:function", see the module docstring
    check: str | None = None  # "module:function" run on the written file before it is kept
    metadata: str | None = None  # "module:function": (bytes, fields) -> bytes with them inside
    validated: bool = True  # whether the export runs the artifact (load_predictor) against the
    # Keras model on held-out images

    @property
    def suffix(self) -> str:
        """The file suffix (``""`` for a folder format), from ``FORMATS_BY_SUFFIX``."""
        return SUFFIX_BY_ARTIFACT[self.artifact] if self.artifact else ""

    @property
    def folder(self) -> bool:
        return self.artifact is None


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("tflite", "tflite", ("none", "fp16", "dynamic", "int8", "qat"), IO_TYPES,
                     False, "train", "LiteRT flatbuffer, builtin ops only, with metadata",
                     "edgeseg.converters.tflite:write_tflite",
                     check="edgeseg.converters.tflite:require_builtin_ops",
                     metadata="edgeseg.converters.tflite_metadata:embed_metadata"),
        ExportFormat("onnx", "onnx", ("none",), ("float32",), False, "onnx",
                     "ONNX (tf2onnx, opset 17), checked and run with onnxruntime",
                     "edgeseg.converters.onnx_export:write_onnx"),
        ExportFormat("tensorrt", "engine", ("fp16", "int8"), ("float32",), True, "onnx",
                     "TensorRT engine from the ONNX graph (GPU; trtexec command printed)",
                     "edgeseg.converters.tensorrt_export:write_engine",
                     # Not checked against Keras at export: an engine runs only on the GPU and
                     # TensorRT that built it (load_predictor runs it there).
                     validated=False),
        ExportFormat("saved_model", None, ("none",), ("float32",), False, "train",
                     "TensorFlow SavedModel folder (for TF Serving, TF.js converters)",
                     "edgeseg.converters.saved_model:write_saved_model",
                     validated=False),  # no runtime predictor reads a SavedModel folder
    )
}  # fmt: skip


def resolve(reference: str) -> Callable:
    """``"edgeseg.converters.tflite:write_tflite"`` -> the function (imported now)."""
    module, _, name = reference.partition(":")
    if not name:
        raise ValueError(f"a converter reference is 'module:function'; got {reference!r}")
    return getattr(importlib.import_module(module), name)


def check_export_options(fmt: str, quant: str, io: str, output: str) -> ExportFormat:
    """The format's row, or a ValueError saying what is allowed."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    row = EXPORT_FORMATS[fmt]
    if quant not in row.quant:
        raise ValueError(
            f"--format {fmt} accepts --quant {' / '.join(row.quant)}; got {quant!r}"
        )
    if io not in row.io:
        raise ValueError(f"--format {fmt} accepts --io {' / '.join(row.io)}; got {io!r}")
    if io != "float32" and quant not in ("int8", "qat"):
        raise ValueError(
            f"--io {io} needs a full-integer model (--quant int8 or qat); got --quant {quant}"
        )
    if output not in OUTPUTS:
        raise ValueError(f"--output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    if quant == "qat" and output != "logits":
        raise ValueError(
            f"--quant qat fine-tunes on the logits; use --output logits (got --output {output})"
        )
    if output != "logits" and io != "float32":
        raise ValueError(
            f"--output {output} with --io {io}: integer outputs are quantised logits; use "
            "--output logits with integer I/O, or --io float32"
        )
    return row


def formats_table_markdown() -> str:
    """The formats as a Markdown table (for the README and ``edgeseg export --help``)."""
    lines = ["| format | suffix | --quant | --io | GPU | extra |", "|---|---|---|---|---|---|"]
    for row in EXPORT_FORMATS.values():
        lines.append(
            f"| {row.name} | {row.suffix or '(folder)'} | {', '.join(row.quant)} | "
            f"{', '.join(row.io)} | {'yes' if row.needs_gpu else 'no'} | {row.extra} |"
        )
    return "\n".join(lines)
