"""Metadata for exported .tflite models: a sidecar JSON and TFLite metadata inside the file.

The same edgeseg metadata (architecture, class names, palette, input size, normalisation, output
kind, quantisation, edgeseg version) is written twice:

* next to the model, as ``<model>.tflite.json`` (``edgeseg.artifacts.write_sidecar``, the one
  sidecar writer), for edgeseg's own runtime;
* inside the model, in the TFLite metadata format (``embed_metadata``), so that MediaPipe Tasks'
  ``ImageSegmenter`` loads the model as it is: a ``ModelMetadata`` flatbuffer (schema
  ``mediapipe/tasks/metadata/metadata_schema.fbs``, identifier ``M001``) in the model buffer
  named ``TFLITE_METADATA``, and the associated files (``labels.txt``, one class name a line, and
  ``edgeseg.json``) in an uncompressed zip archive appended to the flatbuffer. LiteRT ignores
  both; ``read_embedded_metadata`` gets the JSON back with ``zipfile``.

The metadata flatbuffer is encoded here with the ``flatbuffers`` package and the field numbers of
the schema, not with MediaPipe's metadata writer: that writer does not import in mediapipe 1.2.2
(it needs ``mediapipe.tasks.cc``, which the wheel lacks), and writing only needs ``flatbuffers``
and LiteRT's model schema, which every edgeseg install has.
"""

from __future__ import annotations

import datetime
import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION
from edgeseg.io import to_json

EMBEDDED_JSON_NAME = "edgeseg.json"
LABELS_FILE_NAME = "labels.txt"
METADATA_BUFFER_NAME = "TFLITE_METADATA"  # the name the TFLite metadata parsers look for
OUTPUTS = ("logits", "probs", "mask")
# edgeseg's normalisation is x = image * scale + offset (DEFAULT_NORMALISATION: x = image / 255);
# MediaPipe's NormalizationOptions are x = (image - mean) / std: normalisation_mean_std converts.

_MODEL_FILE_IDENTIFIER = b"TFL3"
_METADATA_FILE_IDENTIFIER = b"M001"
_SEGMENTER_OPTIONS_FILE_IDENTIFIER = b"V001"
_SEGMENTER_OPTIONS_NAME = "SEGMENTER_METADATA"
# 1.5.0 added SubGraphMetadata.custom_metadata (the segmenter's activation); nothing newer is used.
_MIN_PARSER_VERSION = "1.5.0"
# Enum values of metadata_schema.fbs and image_segmenter_metadata_schema.fbs.
_CONTENT_IMAGE_PROPERTIES = 2
_COLOR_SPACE_RGB = 1
_COLOR_SPACE_GRAYSCALE = 2
_PROCESS_UNIT_NORMALIZATION = 1
_FILE_UNKNOWN = 0
_FILE_TENSOR_AXIS_LABELS = 2
_ACTIVATION = {"logits": 2, "probs": 0}  # SOFTMAX, NONE
# Tensor types of the TFLite schema that MediaPipe's image preprocessing accepts as input.
_TFLITE_FLOAT32 = 0
_TFLITE_UINT8 = 3
_TFLITE_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 9: "int8"}


class MediaPipeIncompatibleError(ValueError):
    """The model is valid but not one MediaPipe's ImageSegmenter can run as it is (a mask output,
    an int8 input, a uint8 input whose quantisation is not the normalisation); the sidecar JSON
    still describes it."""


# --- the edgeseg metadata ------------------------------------------------------------------------


def build_metadata(
    model: str,
    classes: Sequence[str],
    input_size: tuple[int, int],
    output: str = "logits",
    quant: str = "none",
    io_type: str = "float32",
    palette: Sequence[Sequence[int]] | None = None,
    normalisation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of one exported model, ready for ``edgeseg.artifacts.write_sidecar`` and
    ``embed_metadata``.

    Args:
        model: architecture name, e.g. ``"enet"``.
        classes: class names, index = class id.
        input_size: (width, height) in pixels.
        output: what the model returns: ``"logits"``, ``"probs"`` or ``"mask"``.
        quant, io_type: as given to ``convert_keras_to_tflite`` (``io_type`` is recorded as
            ``"io"``, as the exporter's sidecar does).
        palette: one RGB colour per class, for drawing masks.
        normalisation: ``{"scale": s, "offset": o}`` (x = image * s + o) or
            ``{"mean": [...], "std": [...]}`` (x = (image - mean) / std); default
            ``edgeseg.artifacts.DEFAULT_NORMALISATION`` (x = image / 255).
    """
    import edgeseg

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("classes is empty: a segmentation model needs at least one class name")
    if palette is not None and len(palette) != len(classes):
        raise ValueError(f"palette has {len(palette)} colours but there are {len(classes)} classes")
    width, height = (int(v) for v in input_size)
    return {
        "model": str(model),
        "classes": classes,
        "palette": None if palette is None else [[int(c) for c in rgb] for rgb in palette],
        "input_size": [width, height],
        "normalisation": dict(normalisation or DEFAULT_NORMALISATION),
        "output": output,
        "quant": quant,
        "io": io_type,
        "edgeseg_version": edgeseg.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def normalisation_mean_std(normalisation: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of x = (image - mean) / std from either normalisation form."""
    if "mean" in normalisation and "std" in normalisation:
        mean, std = normalisation["mean"], normalisation["std"]
    elif "scale" in normalisation and "offset" in normalisation:
        # x = image * scale + offset = (image + offset / scale) * scale
        scale = np.asarray(normalisation["scale"], dtype=np.float64)
        offset = np.asarray(normalisation["offset"], dtype=np.float64)
        mean, std = -offset / scale + 0.0, 1.0 / scale  # + 0.0: no -0.0 in the metadata
    else:
        raise ValueError(
            "normalisation must have 'mean' and 'std' or 'scale' and 'offset'; got keys "
            f"{sorted(normalisation)}"
        )
    mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    std = np.atleast_1d(np.asarray(std, dtype=np.float64))
    if mean.ndim != 1 or std.ndim != 1 or len(mean) != len(std):
        raise ValueError(
            f"normalisation mean {mean.tolist()} and std {std.tolist()} must be lists "
            "of the same length (one value, or one per channel)"
        )
    if np.any(std == 0):
        raise ValueError(f"normalisation std must not be 0; got {std.tolist()}")
    return mean.tolist(), std.tolist()


def _to_json(metadata: dict[str, Any]) -> str:
    return to_json(metadata) + "\n"


# --- TFLite metadata inside the model ------------------------------------------------------------


def embed_metadata(tflite_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """The model with TFLite metadata for MediaPipe's ImageSegmenter and ``edgeseg.json``.

    Input: an RGB image with ``NormalizationOptions`` from ``metadata["normalisation"]`` for a
    float32 input. A uint8 input takes pixel values as they are, so MediaPipe applies no
    normalisation and its quantisation must already map a pixel p to (p - mean) / std. Output:
    per-class scores with ``labels.txt`` and the segmenter's activation (SOFTMAX for logits,
    NONE for probs). Metadata already in the model is replaced.

    Raises:
        MediaPipeIncompatibleError: the model is not one RGB image in (float32, or uint8
            quantised as the normalisation), per-class scores out; output ``"mask"`` models have
            no scores for MediaPipe to take the argmax of.
        ValueError: the bytes are not a TFLite model, or the class names do not match the
            model's output channels.
    """
    from ai_edge_litert import schema_py_generated as schema

    tflite_bytes = bytes(tflite_bytes)
    if tflite_bytes[4:8] != _MODEL_FILE_IDENTIFIER:
        raise ValueError("not a TFLite flatbuffer (file identifier is not 'TFL3')")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(tflite_bytes, 0))
    classes = list(metadata.get("classes") or [])
    output = metadata.get("output", "logits")
    if output not in _ACTIVATION:
        raise MediaPipeIncompatibleError(
            f"MediaPipe's ImageSegmenter needs per-class scores, so the model's output must be "
            f"'logits' or 'probs'; got {output!r} (export with output='logits' and take the "
            "argmax on the device)"
        )
    input_type = _check_segmentation_model(model, len(classes))
    mean, std = normalisation_mean_std(metadata.get("normalisation") or DEFAULT_NORMALISATION)
    if len(mean) == 1:  # one value for all channels: written per channel of the RGB input
        mean, std = mean * 3, std * 3
    if input_type == _TFLITE_UINT8:
        _check_uint8_input_quantisation(model, mean, std)

    metadata_buffer = _model_metadata_buffer(
        name=f"edgeseg {metadata.get('model', 'model')}",
        description=(
            f"Semantic segmentation into {len(classes)} classes by edgeseg "
            f"{metadata.get('edgeseg_version', '')}".rstrip()
        ),
        version=str(metadata.get("edgeseg_version", "")),
        normalisation=(mean, std) if input_type == _TFLITE_FLOAT32 else None,
        activation=_ACTIVATION[output],
    )
    buffer = schema.BufferT(data=np.frombuffer(metadata_buffer, dtype=np.uint8))
    model.metadata = model.metadata or []
    existing = [m for m in model.metadata if _name(m.name) == METADATA_BUFFER_NAME]
    if existing:  # replace the old metadata in place, so that no orphaned buffer stays behind
        model.buffers[existing[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        model.metadata.append(
            schema.MetadataT(name=METADATA_BUFFER_NAME, buffer=len(model.buffers) - 1)
        )
    model_bytes = _pack_model(model, schema)

    archive = io.BytesIO()
    archive.write(model_bytes)
    # Stored, not deflated: the metadata extractors hand out associated files as views into the
    # model buffer.
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(LABELS_FILE_NAME, "\n".join(classes))
        zf.writestr(EMBEDDED_JSON_NAME, _to_json(metadata))
    return archive.getvalue()


def read_associated_files(tflite_bytes: bytes) -> dict[str, bytes]:
    """The files packed after the flatbuffer (name -> contents); empty without metadata."""
    try:
        with zipfile.ZipFile(io.BytesIO(tflite_bytes)) as zf:
            return {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def read_embedded_metadata(tflite_bytes: bytes) -> dict[str, Any]:
    """The edgeseg metadata that ``embed_metadata`` packed into the model."""
    files = read_associated_files(tflite_bytes)
    if EMBEDDED_JSON_NAME not in files:
        raise ValueError(
            f"the model has no {EMBEDDED_JSON_NAME} (packed files: {sorted(files) or 'none'}); "
            "was it written by edgeseg.converters.tflite_metadata.embed_metadata?"
        )
    return json.loads(files[EMBEDDED_JSON_NAME].decode("utf-8"))


def read_metadata_buffer(tflite_bytes: bytes) -> bytes | None:
    """The ``ModelMetadata`` flatbuffer in the model, or None when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytes(tflite_bytes), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_BUFFER_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def _name(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_segmentation_model(model, num_classes: int) -> int:
    """Checks one (1, H, W, 3) image in and one (1, H, W, classes) output; returns input type."""
    if len(model.subgraphs) != 1:
        raise MediaPipeIncompatibleError(
            f"expected a model with one subgraph; got {len(model.subgraphs)}"
        )
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise MediaPipeIncompatibleError(
            "MediaPipe's ImageSegmenter takes a model with one image input and one score "
            f"output; this one has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs"
        )
    image, scores = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    in_shape, out_shape = [int(d) for d in image.shape], [int(d) for d in scores.shape]
    if len(in_shape) != 4 or in_shape[3] != 3:
        raise MediaPipeIncompatibleError(
            f"expected an RGB image input (1, H, W, 3); got shape {in_shape}"
        )
    if len(out_shape) != 4 or out_shape[3] != num_classes:
        raise ValueError(
            f"expected per-class scores (1, H, W, {num_classes}) for the {num_classes} class "
            f"names; got output shape {out_shape}"
        )
    if image.type not in (_TFLITE_FLOAT32, _TFLITE_UINT8):
        got = _TFLITE_TYPE_NAMES.get(image.type, f"type {image.type}")
        raise MediaPipeIncompatibleError(
            f"MediaPipe's ImageSegmenter takes float32 or uint8 image inputs; this model's input "
            f"is {got} (convert with io_type='uint8' or 'float32')"
        )
    return image.type


def _check_uint8_input_quantisation(model, mean: list[float], std: list[float]) -> None:
    """MediaPipe feeds a uint8 model the pixels as they are: x = (p - zp) * scale must equal
    (p - mean) / std, or the model sees other values than it was trained on."""
    graph = model.subgraphs[0]
    quant = graph.tensors[graph.inputs[0]].quantization
    has_scale = quant is not None and quant.scale is not None and len(quant.scale)
    scale = float(quant.scale[0]) if has_scale else 0.0
    zero_point = int(quant.zeroPoint[0]) if has_scale and quant.zeroPoint is not None else 0
    for m, s in zip(mean, std, strict=True):
        # Over p in 0..255 the two maps differ by at most half a quantisation step (+1 % slack).
        worst = max(abs((p - zero_point) * scale - (p - m) / s) for p in (0, 255))
        if not scale or worst > 0.505 * scale:
            raise MediaPipeIncompatibleError(
                f"the uint8 input is quantised with scale {scale:.6g} and zero point {zero_point}, "
                f"but the normalisation is x = (pixel - {m:g}) / {s:g}, which needs scale "
                f"{1 / s:.6g} and zero point {round(m):d}: MediaPipe feeds uint8 models the "
                "pixels unnormalised. Calibrate with images that span the full input range."
            )


# --- flatbuffer encoding -------------------------------------------------------------------------
# Field numbers are the order of the fields in metadata_schema.fbs; a union takes two (its type,
# then its value).


def _model_metadata_buffer(
    name: str,
    description: str,
    version: str,
    normalisation: tuple[list[float], list[float]] | None,
    activation: int,
) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)

    # Input: an RGB image, normalised for a float input.
    if normalisation is not None:
        mean, std = normalisation
        options = _table(b, 2, [(0, "offset", _floats(b, mean)), (1, "offset", _floats(b, std))])
        process_units = _vector(
            b, [_table(b, 2, [(0, "uint8", _PROCESS_UNIT_NORMALIZATION), (1, "offset", options)])]
        )
        stats = _table(
            b,
            2,
            [
                (
                    0,
                    "offset",
                    _floats(b, [(255.0 - m) / s for m, s in zip(mean, std, strict=True)]),
                ),
                (1, "offset", _floats(b, [(0.0 - m) / s for m, s in zip(mean, std, strict=True)])),
            ],
        )
    else:
        process_units = None
        stats = _table(b, 2, [(0, "offset", _floats(b, [255.0])), (1, "offset", _floats(b, [0.0]))])
    image_properties = _table(b, 2, [(0, "int8", _COLOR_SPACE_RGB)])
    content = _table(
        b, 3, [(0, "uint8", _CONTENT_IMAGE_PROPERTIES), (1, "offset", image_properties)]
    )
    input_fields = [
        (0, "offset", b.CreateString("image")),
        (1, "offset", b.CreateString("Input image to be segmented.")),
        (3, "offset", content),
        (5, "offset", stats),
    ]
    if process_units is not None:
        input_fields.append((4, "offset", process_units))
    input_tensor = _table(b, 7, input_fields)

    # Output: per-class scores, a grayscale "image" per class (content dims 1-2), with labels.
    labels = _associated_file(
        b, LABELS_FILE_NAME, "Class names, one a line, in class-id order.", _FILE_TENSOR_AXIS_LABELS
    )
    value_range = _table(b, 2, [(0, "int32", 1), (1, "int32", 2)])
    mask_properties = _table(b, 2, [(0, "int8", _COLOR_SPACE_GRAYSCALE)])
    mask_content = _table(
        b,
        3,
        [
            (0, "uint8", _CONTENT_IMAGE_PROPERTIES),
            (1, "offset", mask_properties),
            (2, "offset", value_range),
        ],
    )
    output_tensor = _table(
        b,
        7,
        [
            (0, "offset", b.CreateString("segmentation_masks")),
            (1, "offset", b.CreateString("Per-pixel scores of each class.")),
            (3, "offset", mask_content),
            (5, "offset", _table(b, 2, [])),
            (6, "offset", _vector(b, [labels])),
        ],
    )

    # MediaPipe's segmenter options (image_segmenter_metadata_schema.fbs) as custom metadata.
    options_builder = flatbuffers.Builder(64)
    options_builder.Finish(
        _table(options_builder, 2, [(0, "int8", activation)]), _SEGMENTER_OPTIONS_FILE_IDENTIFIER
    )
    custom = _table(
        b,
        2,
        [
            (0, "offset", b.CreateString(_SEGMENTER_OPTIONS_NAME)),
            (1, "offset", _aligned_bytes(b, bytes(options_builder.Output()), 16)),
        ],
    )

    subgraph = _table(
        b,
        10,
        [
            (2, "offset", _vector(b, [input_tensor])),
            (3, "offset", _vector(b, [output_tensor])),
            (9, "offset", _vector(b, [custom])),
        ],
    )
    edgeseg_json = _associated_file(
        b, EMBEDDED_JSON_NAME, "edgeseg export metadata (JSON).", _FILE_UNKNOWN
    )
    root = _table(
        b,
        8,
        [
            (0, "offset", b.CreateString(name)),
            (1, "offset", b.CreateString(description)),
            (2, "offset", b.CreateString(version)),
            (3, "offset", _vector(b, [subgraph])),
            (4, "offset", b.CreateString("edgeseg")),
            (6, "offset", _vector(b, [edgeseg_json])),
            (7, "offset", b.CreateString(_MIN_PARSER_VERSION)),
        ],
    )
    b.Finish(root, _METADATA_FILE_IDENTIFIER)
    return bytes(b.Output())


def _table(b, num_fields: int, fields: list[tuple[int, str, Any]]) -> int:
    """One table; ``fields`` are (field number, kind, value), values already in the builder."""
    b.StartObject(num_fields)
    for slot, kind, value in fields:
        if kind == "offset":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "int8":
            b.PrependInt8Slot(slot, value, 0)
        elif kind == "uint8":
            b.PrependUint8Slot(slot, value, 0)
        elif kind == "int32":
            b.PrependInt32Slot(slot, value, 0)
        else:
            raise ValueError(f"unknown field kind {kind!r}")
    return b.EndObject()


def _vector(b, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b, values: Sequence[float]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype="<f4"))


def _aligned_bytes(b, data: bytes, alignment: int) -> int:
    """A [ubyte] vector whose first byte sits at a multiple of ``alignment`` in the buffer.

    Flatbuffers are built back to front and ``Finish`` pads the whole to the largest alignment
    used, so aligning against the end aligns against the start.
    """
    b.StartVector(1, len(data), alignment)
    b.head = b.head - len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return b.EndVector()


def _associated_file(b, name: str, description: str, file_type: int) -> int:
    return _table(
        b,
        5,
        [
            (0, "offset", b.CreateString(name)),
            (1, "offset", b.CreateString(description)),
            (2, "int8", file_type),
        ],
    )


def _pack_model(model, schema) -> bytes:
    """Serialises a ``ModelT``, keeping constant buffers 16-byte aligned as the converter does.

    The generated ``BufferT.Pack`` aligns data to its element size (1); the schema asks for
    ``force_align: 16``, which some kernels and delegates rely on when they read weights in place.
    """
    import flatbuffers

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):  # noqa: N802 - the generated API's name
            data = None
            if self.data is not None:
                data = _aligned_bytes(builder, np.asarray(self.data, dtype=np.uint8).tobytes(), 16)
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    if any(buffer.offset > 1 for buffer in model.buffers):
        raise ValueError(
            "the model keeps its weights after the flatbuffer (buffer offsets, as in models over "
            "2 GB); embedding metadata would move them"
        )
    model.buffers = [
        AlignedBuffer(buffer.data, buffer.offset, buffer.size) for buffer in model.buffers
    ]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), _MODEL_FILE_IDENTIFIER)
    return bytes(b.Output())
