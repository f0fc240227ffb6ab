"""The table of export formats: it drives ``edgeseg export``'s help and validation.

Each row says what a format is called, its file suffix, the quantisation modes and input /
output types it accepts, whether it needs an NVIDIA GPU, and the extra that installs it.
"""

from __future__ import annotations

from dataclasses import dataclass

QUANT_MODES = ("none", "fp16", "dynamic", "int8", "qat")
IO_TYPES = ("float32", "uint8", "int8")
OUTPUTS = ("logits", "probs", "mask")


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    quant: tuple[str, ...]
    io: tuple[str, ...]
    needs_gpu: bool
    extra: str
    summary: str


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("tflite", ".tflite", ("none", "fp16", "dynamic", "int8", "qat"), IO_TYPES,
                     False, "train", "LiteRT flatbuffer, builtin ops only, with metadata"),
        ExportFormat("onnx", ".onnx", ("none",), ("float32",), False, "onnx",
                     "ONNX (tf2onnx, opset 17), checked and run with onnxruntime"),
        ExportFormat("tensorrt", ".engine", ("fp16", "int8"), ("float32",), True, "onnx",
                     "TensorRT engine from the ONNX graph (GPU; trtexec command printed)"),
        ExportFormat("saved_model", "", ("none",), ("float32",), False, "train",
                     "TensorFlow SavedModel folder (for TF Serving, TF.js converters)"),
    )
}


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
