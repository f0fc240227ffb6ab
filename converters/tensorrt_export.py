"""ONNX -> TensorRT engine: an operator / type check, an INT8 calibrator, the builder and trtexec.

Two ways to build an engine, with the same result:

- ``build_engine`` uses TensorRT's Python API (``tensorrt`` and a CUDA GPU on the machine that
  builds; an engine only runs on the GPU model and TensorRT version that built it, so build it
  on the device).
- ``trtexec_command`` writes the equivalent ``trtexec`` line, for Jetson images that ship
  TensorRT without its Python bindings. An INT8 build there reads the calibration cache that
  ``EntropyCalibrator`` wrote where the Python API is available (caches are portable across
  GPUs, not always across TensorRT versions).

``check_tensorrt_compatibility`` needs only ``onnx`` and runs anywhere, so an export that
TensorRT's ONNX parser would reject fails in CI rather than on the device.

The engines keep the ONNX model's interface: float32 NHWC images in [0, 1] in, logits or a uint8
mask out (see ``edgeseg.converters.onnx_export``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.converters.onnx_export import default_opset, iter_nodes, onnx_op_types
from edgeseg.io import write_bytes_atomic
from edgeseg.runtime.engine import TENSORRT_INSTALL_HINT, EngineRunner, import_tensorrt
from edgeseg.runtime.engine import CudaMemory as _Cuda  # the calibrator's GPU buffer

PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("NHWC", "NCHW")
# The opsets TensorRT 10.0's ONNX parser accepts (later 10.x releases accept newer ones).
TENSORRT_OPSETS = (9, 20)

# Operators that TensorRT 10's ONNX parser converts natively ("Y" in onnx-tensorrt's
# docs/operators.md, release/10.x). Operators added only in late 10.x releases for language
# models (Attention, RotaryEmbedding, RMSNormalization, TensorScatter) and DeformConv are left
# out, so that the check also holds for the TensorRT 10.3 of JetPack 6. The table also lists
# restrictions (e.g. 2D / 3D Conv and pooling only, static ``axes``) that are not checked here;
# the parser reports those when it builds.
TENSORRT_ONNX_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan",
        "Atanh", "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike",
        "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
        "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div",
        "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten",
        "Floor", "GRU", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
        "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
        "GridSample", "GroupNormalization", "HammingWindow", "HannWindow", "HardSigmoid",
        "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
        "IsInf", "IsNaN", "LRN", "LSTM", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "MatMul",
        "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
        "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "PRelu", "Pad",
        "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
        "ReverseSequence", "RoiAlign", "Round", "STFT", "ScaledTanh", "Scan", "Scatter",
        "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin",
        "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split",
        "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
        "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    }
)  # fmt: skip

# ONNX element types TensorRT 10 has (UINT8 for network inputs and outputs only). Older onnx
# packages lack the newest names, which are then skipped.
_TENSORRT_TYPES = (
    "FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "FLOAT8E4M3FN",
    "INT4", "FLOAT4E2M1",
)  # fmt: skip

# Inputs that ONNX requires to be int64 and that TensorRT reads as shapes, not as data: int64
# there is expected and harmless. Keys are op types, values the input positions.
_SHAPE_INPUTS = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Expand": {1}, "Tile": {1},
    "Unsqueeze": {1}, "Squeeze": {1}, "Resize": {3}, "ConstantOfShape": {0}, "Split": {1},
    "TopK": {1}, "OneHot": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceMean": {1},
    "ReduceSum": {1}, "ReduceProd": {1}, "ReduceL1": {1}, "ReduceL2": {1},
    "ReduceLogSum": {1}, "ReduceLogSumExp": {1}, "ReduceSumSquare": {1},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Compatibility check (onnx only)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRTCheck:
    """What in an ONNX model TensorRT's parser would reject, and what deserves a look."""

    unsupported_ops: list[str] = field(default_factory=list)
    unsupported_types: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unsupported_ops or self.unsupported_types)


def unsupported_tensorrt_ops(proto) -> list[str]:
    """The operators of ``proto`` (subgraphs included) that TensorRT's ONNX parser lacks, sorted.

    Operators of other domains (``com.microsoft:FusedConv``) are always reported: they need a
    TensorRT plugin.
    """
    return sorted(op for op in onnx_op_types(proto) if op not in TENSORRT_ONNX_OPS)


def tensorrt_type_issues(proto) -> tuple[list[str], list[str]]:
    """Tensor element types that TensorRT cannot take, and int64 data worth a warning.

    Returns:
        ``(unsupported, warnings)``. Unsupported: float64 tensors (TensorRT clamps them to
        float32), types it has no equivalent for (strings, complex, int16, unsigned other than
        uint8) and uint8 anywhere but a network input or output. Warnings: int64 graph inputs and
        outputs, Casts to int64 and int64 initializers used as data rather than as shapes,
        axes or pads: TensorRT 10 computes int64, TensorRT 8.x casts it down to int32.
    """
    onnx = _import_onnx()
    tensor_proto = onnx.TensorProto
    supported = {
        getattr(tensor_proto, name) for name in _TENSORRT_TYPES if hasattr(tensor_proto, name)
    }

    def type_name(elem_type: int) -> str:
        return tensor_proto.DataType.Name(elem_type)

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # an invalid graph: check what the file itself declares
        inferred = proto
    graph = inferred.graph
    io_names = {value.name for value in (*graph.input, *graph.output)}
    typed: dict[str, tuple[str, int]] = {}  # tensor name -> (what it is, element type)
    for kind, values in (
        ("input", graph.input),
        ("output", graph.output),
        ("tensor", graph.value_info),
    ):
        for value in values:
            if value.type.HasField("tensor_type"):
                typed.setdefault(value.name, (kind, value.type.tensor_type.elem_type))
    for initializer in graph.initializer:
        typed[initializer.name] = ("initializer", initializer.data_type)

    unsupported: list[str] = []
    warnings: list[str] = []
    for name, (kind, elem_type) in sorted(typed.items()):
        if elem_type == tensor_proto.DOUBLE:
            unsupported.append(f"{kind} {name!r} is DOUBLE (float64): export float32")
        elif elem_type == tensor_proto.UINT8 and name not in io_names:
            unsupported.append(
                f"{kind} {name!r} is UINT8, which TensorRT takes only as a network input or output"
            )
        elif elem_type not in supported and elem_type != tensor_proto.UNDEFINED:
            unsupported.append(
                f"{kind} {name!r} is {type_name(elem_type)}, which TensorRT does not have"
            )

    shape_uses: dict[str, bool] = {}  # tensor name -> used only as a shape / axes / pads input
    for node in iter_nodes(graph):
        for position, name in enumerate(node.input):
            as_shape = position in _SHAPE_INPUTS.get(node.op_type, ())
            shape_uses[name] = shape_uses.get(name, True) and as_shape
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == tensor_proto.DOUBLE:
                    unsupported.append(f"Cast {node.name or node.output[0]!r} to DOUBLE (float64)")
                elif attribute.name == "to" and attribute.i == tensor_proto.INT64:
                    warnings.append(f"Cast {node.name or node.output[0]!r} to INT64")
    for name, (kind, elem_type) in sorted(typed.items()):
        if elem_type != tensor_proto.INT64:
            continue
        if kind in ("input", "output") or (
            kind == "initializer" and not shape_uses.get(name, True)
        ):
            warnings.append(f"{kind} {name!r} is INT64 data")
    return unsupported, warnings


def check_tensorrt_compatibility(proto) -> TensorRTCheck:
    """Operators, element types and opset of an ONNX model, against TensorRT 10's parser."""
    unsupported_types, warnings = tensorrt_type_issues(proto)
    low, high = TENSORRT_OPSETS
    opset = default_opset(proto)
    if not low <= opset <= high:
        warnings.append(f"opset {opset} is outside {low}-{high}, the range TensorRT 10.0 parses")
    return TensorRTCheck(unsupported_tensorrt_ops(proto), unsupported_types, warnings)


def _import_onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            f'checking an ONNX model needs the onnx package ({error}): pip install "edgeseg[onnx]"'
        ) from error
    return onnx


# ---------------------------------------------------------------------------------------------
# INT8 calibration
# ---------------------------------------------------------------------------------------------


def _calibrator_base() -> type:
    # The calibrator must subclass TensorRT's interface for the builder to call it; without
    # TensorRT it is a plain class, so that its batching and cache can be used and tested.
    try:
        import tensorrt
    except (ImportError, OSError):
        return object
    return tensorrt.IInt8EntropyCalibrator2


class EntropyCalibrator(_calibrator_base()):
    """INT8 entropy calibrator (TensorRT's ``IInt8EntropyCalibrator2``) fed with images.

    Images are grouped into batches of exactly ``batch_size`` in the engine's input layout. A
    last, partial batch is dropped, as TensorRT's samples do: the builder expects every batch
    at the input's full shape, and padding it with zeros or repeats would skew the activation
    histograms. ``images_used`` counts the images that went into batches.

    The calibration table is written to ``cache_path`` (atomically); when that file exists,
    TensorRT reads it and skips calibration, and ``trtexec --int8 --calib=cache_path`` can use
    it. Implicit-quantisation calibrators are deprecated since TensorRT 10.1 in favour of
    explicit Q/DQ models but still supported.

    Args:
        images: float images (H, W, C) or batches (N, H, W, C) in the model's input range, e.g.
            a (N, H, W, C) array or a generator over a data set; 500 or so is typical. May be
            None when ``cache_path`` already holds a calibration table.
        batch_size: images per batch; must equal the engine input's batch dimension (the
            ``batch`` the ONNX model was exported with).
        cache_path: where the calibration table is read from and written to; None for no cache.
        layout: the engine input's layout. edgeseg's ONNX models take NHWC; "NCHW" transposes
            the images for models exported channels-first.
        value_range: images outside this range raise an error (a 0-255 image fed to a model
            that takes [0, 1] would calibrate the wrong ranges); None to skip the check.
    """

    def __init__(
        self,
        images: Iterable[np.ndarray] | None,
        batch_size: int,
        cache_path: str | os.PathLike | None = None,
        *,
        layout: str = "NHWC",
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        if images is None and (cache_path is None or not Path(cache_path).is_file()):
            raise ValueError(
                "the calibrator needs images, or a cache_path that holds a calibration table; "
                f"got images=None and cache_path={cache_path!r}"
            )
        self.batch_size = batch_size
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.layout = layout
        self.value_range = value_range
        self.images_used = 0
        self._images = self._single_images(images if images is not None else [])
        self._image_shape: tuple[int, ...] | None = None
        self._cuda: _Cuda | None = None
        self._device_pointer: int | None = None

    @staticmethod
    def _single_images(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for item in images:
            item = np.asarray(item)
            if item.ndim == 4:
                yield from item
            else:
                yield item

    def _checked(self, image: np.ndarray, index: int) -> np.ndarray:
        if image.ndim != 3:
            raise ValueError(
                f"calibration image {index} has shape {image.shape}; expected (H, W, C) images "
                "or (N, H, W, C) batches"
            )
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(
                f"calibration image {index} is {image.dtype}; the calibrator takes float images "
                "in the model's input range (edgeseg models: float32 in [0, 1])"
            )
        if self._image_shape is None:
            self._image_shape = image.shape
        elif image.shape != self._image_shape:
            raise ValueError(
                f"calibration image {index} has shape {image.shape}, the earlier ones "
                f"{self._image_shape}"
            )
        if self.value_range is not None and image.size:
            low, high = self.value_range
            found = float(image.min()), float(image.max())
            if found[0] < low or found[1] > high:
                raise ValueError(
                    f"calibration image {index} has values in [{found[0]:g}, {found[1]:g}], "
                    f"outside the model's input range [{low:g}, {high:g}]"
                )
        return image.astype(np.float32, copy=False)

    def next_batch(self) -> np.ndarray | None:
        """The next batch as a C-contiguous float32 array in ``layout``, or None when done.

        Raises ``ValueError`` when there were fewer than ``batch_size`` images in all.
        """
        batch = []
        for image in self._images:
            batch.append(self._checked(image, self.images_used + len(batch)))
            if len(batch) == self.batch_size:
                break
        if len(batch) < self.batch_size:
            if self.images_used == 0:
                raise ValueError(
                    f"calibration needs at least batch_size={self.batch_size} images, got "
                    f"{len(batch)}"
                )
            return None
        self.images_used += len(batch)
        stacked = np.stack(batch)
        if self.layout == "NCHW":
            stacked = stacked.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(stacked, dtype=np.float32)

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: list[str]) -> list[int] | None:
        """Copies the next batch to the GPU and returns its device pointer (TensorRT calls this)."""
        if len(names) != 1:
            raise ValueError(f"the calibrator feeds one input, TensorRT asked for {list(names)}")
        batch = self.next_batch()
        if batch is None:
            return None
        if self._cuda is None:
            self._cuda = _Cuda()
            self._device_pointer = self._cuda.malloc(batch.nbytes)
        self._cuda.to_device(self._device_pointer, batch)
        return [self._device_pointer]

    def read_calibration_cache(self) -> bytes | None:
        if self.cache_path is not None and self.cache_path.is_file():
            return self.cache_path.read_bytes()
        return None

    def write_calibration_cache(self, cache) -> None:
        if self.cache_path is not None:
            write_bytes_atomic(self.cache_path, bytes(cache))

    def close(self) -> None:
        """Frees the GPU buffer (if one was allocated)."""
        if self._cuda is not None and self._device_pointer is not None:
            self._cuda.free(self._device_pointer)
        self._device_pointer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# ---------------------------------------------------------------------------------------------
# Engine building and running
# ---------------------------------------------------------------------------------------------


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def default_calibration_cache(engine_path: str | os.PathLike) -> Path:
    """Where ``trtexec_command`` looks for the INT8 calibration table: ``<engine_path>.calib``."""
    return Path(f"{os.fspath(engine_path)}.calib")


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str,
    calib_cache: str | os.PathLike | None = None,
    workspace_mb: int = 2048,
) -> str:
    """The ``trtexec`` line that builds the same engine as ``build_engine`` (for Jetson images
    with TensorRT but no Python bindings).

    INT8 also enables FP16, as ``build_engine`` does, so that layers without an INT8 kernel run
    in half rather than single precision. It reads the calibration table ``calib_cache``
    (default: ``<engine_path>.calib``), which an ``EntropyCalibrator`` with that ``cache_path``
    writes; the file must exist when trtexec runs.
    """
    _check_precision(precision)
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise ValueError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    if precision == "int8" and calib_cache is None:
        # Never leave --calib out: trtexec would then use placeholder ranges (for timing only).
        calib_cache = default_calibration_cache(engine_path)
    parts = [
        "trtexec",
        f"--onnx={shlex.quote(os.fspath(onnx_path))}",
        f"--saveEngine={shlex.quote(os.fspath(engine_path))}",
        f"--memPoolSize=workspace:{workspace_mb}M",
    ]
    if precision in ("fp16", "int8"):
        parts.append("--fp16")
    if precision == "int8":
        parts += ["--int8", f"--calib={shlex.quote(os.fspath(calib_cache))}"]
    return " ".join(parts)


def _import_tensorrt(purpose: str, alternative: str):
    return import_tensorrt(purpose, alternative)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str = "fp16",
    calibrator=None,
    workspace_gb: float = 2,
    *,
    final_path: str | os.PathLike | None = None,
) -> Path:
    """Builds a serialized TensorRT engine from an ONNX model with TensorRT's Python API.

    Args:
        onnx_path: the ONNX model (e.g. from ``convert_keras_to_onnx``).
        engine_path: where the engine is written (atomically).
        precision: "fp32", "fp16" or "int8" (INT8 with FP16 fallback for layers without INT8
            kernels).
        calibrator: for "int8", an ``EntropyCalibrator`` (or any TensorRT INT8 calibrator)
            whose batch size equals the model's batch dimension.
        workspace_gb: the builder's workspace memory pool limit, in GiB.
        final_path: where the engine will be renamed to when ``engine_path`` is a temporary
            name, for the ``trtexec`` line in error messages (default ``engine_path``).
    Returns:
        ``engine_path``.
    Raises:
        ImportError: TensorRT is not installed; RuntimeError: no usable GPU, or the parser or
        builder failed. Both messages give the equivalent ``trtexec`` command.
    """
    _check_precision(precision)
    if precision == "int8" and calibrator is None:
        raise ValueError("precision 'int8' needs a calibrator (e.g. EntropyCalibrator)")
    if not workspace_gb > 0:
        raise ValueError(f"workspace_gb must be positive, got {workspace_gb!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist")
    command = trtexec_command(
        onnx_path,
        final_path or engine_path,
        precision,
        calib_cache=getattr(calibrator, "cache_path", None),
        workspace_mb=max(1, round(workspace_gb * 1024)),
    )
    trt = _import_tensorrt("building a TensorRT engine", f"build it with trtexec:\n  {command}")

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as error:  # TensorRT raises TypeError / RuntimeError without a CUDA device
        raise RuntimeError(
            f"TensorRT could not create a builder ({error}); it needs an NVIDIA GPU with a "
            f"working CUDA driver. On the device, build with trtexec:\n  {command}"
        ) from error
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise RuntimeError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}\n"
            "check_tensorrt_compatibility(onnx.load(path)) lists unsupported operators and types"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        network_batch = network.get_input(0).shape[0]
        calibrator_batch = calibrator.get_batch_size()
        if network_batch > 0 and calibrator_batch != network_batch:
            raise ValueError(
                f"the calibrator's batch size is {calibrator_batch} but the model's input batch "
                f"is {network_batch}; export the ONNX model with batch={calibrator_batch} or "
                f"use EntropyCalibrator(..., batch_size={network_batch})"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} (see its log above); "
            f"the trtexec equivalent is:\n  {command}"
        )
    return write_bytes_atomic(engine_path, bytes(serialized))


class TensorRTUnavailableError(ImportError):
    """``edgeseg export --format tensorrt`` without TensorRT's Python package: the ONNX graph
    was written (``onnx_path``) but no engine; the message holds the ``trtexec`` line
    (``command``) that builds it where TensorRT is."""

    def __init__(self, message: str, onnx_path: Path, engine_path: Path, command: str):
        super().__init__(message)
        self.onnx_path = onnx_path
        self.engine_path = engine_path
        self.command = command


def tensorrt_fallback(onnx_path: Path, engine_path: Path, precision: str,
                      reason: str) -> TensorRTUnavailableError:
    """The error ``write_engine`` raises without TensorRT: what was written, and the trtexec
    line that builds the engine from it, as printed (paths quoted for a POSIX shell).

    An INT8 engine needs a calibration table, which only TensorRT's Python API writes (trtexec
    reads one, it does not calibrate from images); without one the line builds an FP16 engine
    (named ``*_fp16.engine``) and the message says how to get the INT8 one.
    """
    lines = [
        f"no engine written: TensorRT's Python package could not be imported ({reason}).",
        f"The ONNX graph is in {onnx_path}; build the engine from it on the device (trtexec is "
        "in /usr/src/tensorrt/bin on JetPack):",
    ]
    if precision == "int8":
        stem = engine_path.stem.removesuffix("_int8")
        fp16_path = engine_path.with_name(f"{stem}_fp16{engine_path.suffix}")
        command = trtexec_command(onnx_path, fp16_path, "fp16")
        calib = default_calibration_cache(engine_path)
        lines[1:] = [
            f"The ONNX graph is in {onnx_path}. An INT8 engine also needs a calibration table, "
            "which only TensorRT's Python API writes (trtexec reads one but does not "
            "calibrate), and there is none; this builds an FP16 engine from the graph (trtexec "
            "is in /usr/src/tensorrt/bin on JetPack):",
            f"  {command}",
            f"For INT8, run this export where TensorRT's Python package is (a desktop GPU will "
            f"do: the table it writes, {calib}, serves other GPUs with the same TensorRT "
            f"version), or install it here; trtexec "
            f"then builds the INT8 engine with: "
            f"{trtexec_command(onnx_path, engine_path, 'int8', calib_cache=calib)}",
        ]
    else:
        command = trtexec_command(onnx_path, engine_path, precision)
        lines.append(f"  {command}")
        lines.append(f"or {TENSORRT_INSTALL_HINT} and export again.")
    return TensorRTUnavailableError("\n".join(lines), onnx_path, engine_path, command)


def write_engine(job, path: str | os.PathLike) -> str:
    """The formats table's TensorRT converter (see ``edgeseg.converters.formats``).

    The ONNX graph is written beside the engine's destination under the same name
    (``<name>.onnx``); then the engine is built at ``path`` and the ``trtexec`` line that builds
    the same engine on a device without TensorRT's Python package is printed. ``int8``
    calibrates on ``job.calibration`` and writes the table to ``<engine>.calib`` for that line.
    Returns ``job.quant``.

    Without TensorRT's Python package nothing is built: the ONNX graph stays and a
    :class:`TensorRTUnavailableError` (an ImportError) gives the trtexec line that builds the
    engine from it (:func:`tensorrt_fallback`).
    """
    from edgeseg.converters.onnx_export import convert_keras_to_onnx

    destination = Path(job.destination or path)
    onnx_path = write_bytes_atomic(destination.with_suffix(".onnx"),
                                   convert_keras_to_onnx(job.model).SerializeToString())
    cache = default_calibration_cache(destination)
    if job.quant == "int8":
        # A table left by an earlier export belongs to other weights: TensorRT would reuse it.
        cache.unlink(missing_ok=True)
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as error:
        raise tensorrt_fallback(onnx_path, destination, job.quant, str(error)) from error
    calibrator = None
    if job.quant == "int8":
        calibrator = EntropyCalibrator(job.calibration, batch_size=1, cache_path=str(cache))
    build_engine(onnx_path, path, job.quant, calibrator, final_path=destination)
    print("to build the same engine with trtexec (TensorRT without its Python package):\n  "
          + trtexec_command(onnx_path, destination, job.quant,
                            calib_cache=cache if job.quant == "int8" else None))
    return job.quant


def run_engine(engine_path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Runs a TensorRT engine (one input, first output returned) on float32 images.

    Args:
        x: images (N, H, W, C) or one image (H, W, C), in the engine input's layout. With an
            engine built for batch B, N must be a multiple of B; the images run B at a time.
    """
    with EngineRunner(engine_path, alternative="run the ONNX model with run_onnx") as runner:
        x = np.asarray(x)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.shape[1:] != runner.input_shape[1:]:
            raise ValueError(
                f"the engine takes images of shape {runner.input_shape[1:]}, got {x.shape[1:]}"
            )
        if x.shape[0] % runner.batch:
            raise ValueError(f"the engine takes batches of {runner.batch} images, got {x.shape[0]}")
        y = runner.run(x)[runner.output_names[0]]
    return y[0] if single else y
