"""What is inside a .tflite file, read from its flatbuffer with the standard library only.

A board that runs .tflite models may have neither TensorFlow nor ai-edge-litert (only the older
tflite-runtime, which ships no schema), so ``edgeseg check`` reads the file itself: the operator
codes with their versions, the tensors (type, shape, quantisation, whether a buffer holds them)
and the operators of the main subgraph, and from the shapes the multiply-accumulates of each
operator. The field numbers are those of TFLite's schema.fbs (``tensorflow/compiler/mlir/lite/
schema/schema.fbs``); the operator names are its ``BuiltinOperator`` enum.

    graph = read_tflite("enet_int8.tflite")
    graph.operators[0].name, graph.operators[0].version, graph.operators[0].macs
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUILTIN_OPERATORS", "TENSOR_TYPES", "Operator", "Tensor", "TfliteGraph",
           "TfliteFileError", "read_tflite", "read_tflite_bytes"]

FILE_IDENTIFIER = b"TFL3"

BUILTIN_OPERATORS: tuple[str | None, ...] = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE",
    "DEQUANTIZE", "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP",
    "L2_NORMALIZATION", "L2_POOL_2D", "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC",
    "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU", "RELU_N1_TO_1", "RELU6", "RESHAPE",
    "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH", "CONCAT_EMBEDDINGS",
    "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND",
    "TRANSPOSE", "MEAN", "SUB", "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE",
    "BIDIRECTIONAL_SEQUENCE_RNN", "EXP", "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE",
    "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU", "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS",
    "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SELECT", "SLICE", "SIN",
    "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG",
    "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX",
    "PACK", "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN",
    "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE",
    "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS", "SPLIT_V",
    "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND", "COS", "WHERE", "RANK", "ELU",
    "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG", "ROUND", "HARD_SWISH", "IF",
    "WHILE", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2",
    "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL", "PLACEHOLDER_FOR_GREATER_OP_CODES", "CUMSUM",
    "CALL_ONCE", "BROADCAST_TO", "RFFT2D", "CONV_3D", "IMAG", "REAL", "COMPLEX_ABS", "HASHTABLE",
    "HASHTABLE_FIND", "HASHTABLE_IMPORT", "HASHTABLE_SIZE", "REDUCE_ALL", "CONV_3D_TRANSPOSE",
    "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "BROADCAST_ARGS", "RANDOM_STANDARD_NORMAL",
    "BUCKETIZE", "RANDOM_UNIFORM", "MULTINOMIAL", "GELU", "DYNAMIC_UPDATE_SLICE", "RELU_0_TO_1",
    "UNSORTED_SEGMENT_PROD", "UNSORTED_SEGMENT_MAX", "UNSORTED_SEGMENT_SUM", "ATAN2",
    "UNSORTED_SEGMENT_MIN", "SIGN", "BITCAST", "BITWISE_XOR", "RIGHT_SHIFT", "STABLEHLO_LOGISTIC",
    "STABLEHLO_ADD", "STABLEHLO_DIVIDE", "STABLEHLO_MULTIPLY", "STABLEHLO_MAXIMUM",
    "STABLEHLO_RESHAPE", "STABLEHLO_CLAMP", "STABLEHLO_CONCATENATE", "STABLEHLO_BROADCAST_IN_DIM",
    "STABLEHLO_CONVOLUTION", "STABLEHLO_SLICE", "STABLEHLO_CUSTOM_CALL", "STABLEHLO_REDUCE",
    "STABLEHLO_ABS", "STABLEHLO_AND", "STABLEHLO_COSINE", "STABLEHLO_EXPONENTIAL",
    "STABLEHLO_FLOOR", "STABLEHLO_LOG", "STABLEHLO_MINIMUM", "STABLEHLO_NEGATE", "STABLEHLO_OR",
    "STABLEHLO_POWER", "STABLEHLO_REMAINDER", "STABLEHLO_RSQRT", "STABLEHLO_SELECT",
    "STABLEHLO_SUBTRACT", "STABLEHLO_TANH", "STABLEHLO_SCATTER", "STABLEHLO_COMPARE",
    "STABLEHLO_CONVERT", "STABLEHLO_DYNAMIC_SLICE", "STABLEHLO_DYNAMIC_UPDATE_SLICE",
    "STABLEHLO_PAD", "STABLEHLO_IOTA", "STABLEHLO_DOT_GENERAL", "STABLEHLO_REDUCE_WINDOW",
    "STABLEHLO_SORT", "STABLEHLO_WHILE", "STABLEHLO_GATHER", "STABLEHLO_TRANSPOSE", "DILATE",
    "STABLEHLO_RNG_BIT_GENERATOR", "REDUCE_WINDOW", "STABLEHLO_COMPOSITE", "STABLEHLO_SHIFT_LEFT",
    "STABLEHLO_CBRT", "STABLEHLO_CASE",

)
"""``BuiltinOperator`` of the TFLite schema, by code (the schema of ai-edge-litert 2.3)."""

TENSOR_TYPES = ("FLOAT32", "FLOAT16", "INT32", "UINT8", "INT64", "STRING", "BOOL", "INT16",
                "COMPLEX64", "INT8", "FLOAT64", "COMPLEX128", "UINT64", "RESOURCE", "VARIANT",
                "UINT32", "UINT16", "INT4", "BFLOAT16", "INT2", "UINT4", "FLOAT8_E4M3FN",
                "FLOAT8_E5M2")
"""``TensorType`` of the TFLite schema, by code."""

_DEPRECATED_CODE_LIMIT = 127  # codes from 127 on live in OperatorCode.builtin_code only


class TfliteFileError(ValueError):
    """The bytes are not a TFLite flatbuffer this reader understands."""


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    type: str  # a TENSOR_TYPES name
    shape: tuple[int, ...]
    constant: bool  # its buffer holds data (weights, biases, constant shapes)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()


@dataclass(frozen=True)
class Operator:
    index: int
    name: str  # BUILTIN_OPERATORS name, or "CUSTOM:<code>"
    version: int
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    macs: int = 0


@dataclass
class TfliteGraph:
    """The main subgraph of a .tflite file."""

    path: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    schema_version: int
    subgraphs: int
    operator_codes: list[tuple[str, int]] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.operators)

    def input_types(self, op: Operator) -> tuple[str, ...]:
        return tuple(self.tensors[i].type if i >= 0 else "-" for i in op.inputs)

    def is_int8(self) -> bool:
        """Integer convolutions: the weights of a conv / depthwise / FC are int8 (or uint8) and
        its input too (dynamic-range models have int8 weights and float inputs)."""
        for op in self.operators:
            if op.name in _WEIGHTED and len(op.inputs) > 1:
                data, weights = (self.tensors[i].type for i in _data_and_weights(op))
                if weights in ("INT8", "UINT8") and data in ("INT8", "UINT8", "INT16"):
                    return True
        return False


def read_tflite(path: str | os.PathLike) -> TfliteGraph:
    """Reads a .tflite file; :class:`TfliteFileError` names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model {str(path)!r} does not exist")
    try:
        return read_tflite_bytes(path.read_bytes(), str(path))
    except TfliteFileError as e:
        raise TfliteFileError(f"{path}: {e}") from None


def read_tflite_bytes(data: bytes, path: str = "<bytes>") -> TfliteGraph:
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise TfliteFileError(
            f"not a TFLite flatbuffer: the file identifier is {bytes(data[4:8])!r}, not "
            f"{FILE_IDENTIFIER!r} (a .tflite written by the TFLite converter)")
    try:
        return _read(_Buffer(data), path)
    except (struct.error, IndexError) as e:
        raise TfliteFileError(f"a truncated or corrupt TFLite flatbuffer ({e})") from None


def _read(fb: _Buffer, path: str) -> TfliteGraph:
    model = fb.root()
    codes = []
    for code in fb.tables(model, 1):
        deprecated = fb.scalar(code, 0, "b", 0)
        builtin = fb.scalar(code, 3, "i", 0)
        number = max(deprecated, builtin)
        custom = fb.string(code, 1)
        if custom is not None and number == 32:  # BuiltinOperator.CUSTOM
            name = f"CUSTOM:{custom}"
        elif 0 <= number < len(BUILTIN_OPERATORS) and BUILTIN_OPERATORS[number]:
            name = BUILTIN_OPERATORS[number]
        else:
            name = f"BUILTIN_{number}"
        codes.append((name, fb.scalar(code, 2, "i", 1)))
    buffers = [fb.vector_length(b, 0) > 0 or fb.scalar(b, 1, "Q", 0) > 1 for b in fb.tables(model, 4)]
    subgraphs = fb.tables(model, 2)
    if not subgraphs:
        raise TfliteFileError("the model has no subgraph")
    graph = subgraphs[0]
    tensors = []
    for i, t in enumerate(fb.tables(graph, 0)):
        type_code = fb.scalar(t, 1, "b", 0)
        buffer = fb.scalar(t, 2, "I", 0)
        quant = fb.table(t, 4)
        scale = tuple(fb.vector(quant, 2, "f")) if quant else ()
        zero_point = tuple(fb.vector(quant, 3, "q")) if quant else ()
        tensors.append(Tensor(
            index=i, name=fb.string(t, 3) or "", shape=tuple(fb.vector(t, 0, "i")),
            type=TENSOR_TYPES[type_code] if 0 <= type_code < len(TENSOR_TYPES) else str(type_code),
            constant=0 < buffer < len(buffers) and buffers[buffer],
            scale=scale, zero_point=zero_point))
    operators = []
    for i, op in enumerate(fb.tables(graph, 3)):
        name, version = codes[fb.scalar(op, 0, "I", 0)]
        operator = Operator(index=i, name=name, version=version,
                            inputs=tuple(fb.vector(op, 1, "i")),
                            outputs=tuple(fb.vector(op, 2, "i")))
        operators.append(_with_macs(operator, tensors))
    return TfliteGraph(path=path, tensors=tensors, operators=operators,
                       inputs=list(fb.vector(graph, 1, "i")), outputs=list(fb.vector(graph, 2, "i")),
                       schema_version=fb.scalar(model, 0, "I", 0), subgraphs=len(subgraphs),
                       operator_codes=codes)


# --- multiply-accumulates from the shapes ---------------------------------------------------------

_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL",
             "CONV_3D")


def _data_and_weights(op: Operator) -> tuple[int, int]:
    if op.name == "TRANSPOSE_CONV":  # inputs: output shape, weights, data
        return op.inputs[2], op.inputs[1]
    return op.inputs[0], op.inputs[1]


def _product(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= max(int(v), 1)
    return result


def _with_macs(op: Operator, tensors: list[Tensor]) -> Operator:
    """The operator with its multiply-accumulates at batch 1: the output elements times the
    products each sums (0 for operators without weights)."""
    if op.name not in _WEIGHTED or len(op.inputs) < 2 or not op.outputs:
        return op
    out = tensors[op.outputs[0]].shape
    data_index, weights_index = _data_and_weights(op)
    weights = tensors[weights_index].shape
    data = tensors[data_index].shape
    if not out or not weights:
        return op
    if op.name == "CONV_2D":  # weights (Cout, kh, kw, Cin / groups)
        macs = _product(out) * _product(weights[1:])
    elif op.name == "CONV_3D":  # weights (kd, kh, kw, Cin, Cout)
        macs = _product(out) * _product(weights[:-1])
    elif op.name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, Cout)
        macs = _product(out) * _product(weights[1:3])
    elif op.name == "TRANSPOSE_CONV":  # every input pixel scatters a kh x kw x Cout patch
        macs = _product(data) * _product(weights[:3])
    elif op.name == "FULLY_CONNECTED":  # weights (units, in)
        macs = _product(out) * weights[-1]
    else:  # BATCH_MATMUL: every output element is a dot product along the lhs's last axis
        macs = _product(out) * (data[-1] if data else 1)
    return Operator(op.index, op.name, op.version, op.inputs, op.outputs, int(macs))


# --- a flatbuffer reader (the few accessors TFLite's tables need) --------------------------------


class _Buffer:
    """Flatbuffer tables read in place: a table is its offset; field ``n`` is vtable slot n."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def _u32(self, at: int) -> int:
        return struct.unpack_from("<I", self.data, at)[0]

    def root(self) -> int:
        return self._u32(0)

    def _field(self, table: int, n: int) -> int:
        """The absolute position of field ``n`` of ``table``, or 0 when it is absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * n
        if slot >= vtable_size:
            return 0
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else 0

    def scalar(self, table: int, n: int, fmt: str, default):
        at = self._field(table, n)
        return struct.unpack_from("<" + fmt, self.data, at)[0] if at else default

    def _indirect(self, table: int, n: int) -> int:
        at = self._field(table, n)
        return at + self._u32(at) if at else 0

    def table(self, table: int, n: int) -> int:
        return self._indirect(table, n)

    def string(self, table: int, n: int) -> str | None:
        at = self._indirect(table, n)
        if not at:
            return None
        length = self._u32(at)
        return bytes(self.data[at + 4:at + 4 + length]).decode("utf-8", "replace")

    def vector_length(self, table: int, n: int) -> int:
        at = self._indirect(table, n)
        return self._u32(at) if at else 0

    def vector(self, table: int, n: int, fmt: str) -> tuple:
        at = self._indirect(table, n)
        if not at:
            return ()
        length = self._u32(at)
        return struct.unpack_from(f"<{length}{fmt}", self.data, at + 4)

    def tables(self, table: int, n: int) -> list[int]:
        at = self._indirect(table, n)
        if not at:
            return []
        length = self._u32(at)
        return [at + 4 + 4 * i + self._u32(at + 4 + 4 * i) for i in range(length)]
