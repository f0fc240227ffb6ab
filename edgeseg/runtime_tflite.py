"""Loads the LiteRT (TFLite) interpreter without importing TensorFlow.

``ai_edge_litert`` is the LiteRT package; older device images have ``tflite_runtime``, which has
the same ``Interpreter`` API and is used as a fallback. :func:`interpreter_identity` says which
one runs; :func:`delegation` how it runs a graph; :func:`warn_if_int8_without_xnnpack` warns
when an int8 model's convolutions are left to the runtime's own int8 kernels (tflite-runtime
2.14's XNNPACK delegate takes no int8 operator), which costs up to 21x the fp32 export's
latency.
"""

from __future__ import annotations

import functools
import os
import warnings

CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")
"""The operators that hold a model's compute; their weights are input 1 in each."""

INT8_WITHOUT_XNNPACK_COST = (
    "measured on tflite-runtime 2.14.0, 2 cores, 480x320: int8 took 1.1x (FCN-8s) to 21x (ENet: "
    "417 ms against 19 ms) its fp32 export's time"
)
"""The measured cost quoted by the warning (benchmarks/results/runtimes_cpu.md)."""


class Int8WithoutXNNPACKWarning(UserWarning):
    """An int8 model whose convolutions run on the runtime's own int8 kernels, not XNNPACK."""


_warned_models: set[str] = set()


def interpreter_class():
    """LiteRT's ``Interpreter`` class (ai-edge-litert, else tflite-runtime)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError(
                "running .tflite models needs the LiteRT interpreter: pip install ai-edge-litert "
                "(or tflite-runtime on older device images)"
            ) from None
    return Interpreter


@functools.cache
def interpreter_identity() -> dict[str, str | None]:
    """The runtime whose ``Interpreter`` :func:`interpreter_class` returns, as pip names it:
    ``{"name": "ai-edge-litert", "version": "2.3.0"}`` or ``{"name": "tflite-runtime",
    "version": "2.14.0"}`` (``pip install NAME==VERSION`` installs it again).

    The distribution is the one whose files hold the imported package (a nightly build has its
    own name); a package imported from outside any distribution is named after its import name,
    with its ``__version__``.
    """
    import importlib.metadata
    import re
    import sys
    from pathlib import Path

    package = interpreter_class().__module__.partition(".")[0]
    module = sys.modules[package]
    folder = Path(module.__file__).resolve().parent
    dashed = package.replace("_", "-")

    def owner(names):
        for name in names:
            try:
                distribution = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            if Path(distribution.locate_file(package)).resolve() == folder:
                return distribution
        return None

    # The usual names first: listing every installed distribution's files takes tens of ms.
    distribution = owner((dashed, f"{dashed}-nightly")) or owner(
        importlib.metadata.packages_distributions().get(package, ()))
    if distribution is None:
        return {"name": dashed, "version": getattr(module, "__version__", None)}
    name = re.sub(r"[-_.]+", "-", distribution.metadata["Name"]).lower()
    return {"name": name, "version": distribution.version}


def runtime_label() -> str:
    """The interpreter's runtime in a few words: "ai-edge-litert 2.3.0"."""
    identity = interpreter_identity()
    return " ".join(part for part in (identity["name"], identity["version"]) if part)


def load_interpreter(
    model_path: str | os.PathLike | None = None,
    model_content: bytes | None = None,
    num_threads: int | None = None,
):
    """A LiteRT interpreter with its tensors allocated, from a file or from bytes."""
    interpreter_class_ = interpreter_class()
    if model_path is not None:
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"TFLite model {model_path!r} does not exist")
    interpreter = interpreter_class_(
        model_path=model_path, model_content=model_content, num_threads=num_threads
    )
    interpreter.allocate_tensors()
    return interpreter


def set_input(interpreter, image) -> None:
    """Sets the interpreter's first input from a float array, quantising it if the input is
    integer."""
    import numpy as np

    input_detail = interpreter.get_input_details()[0]
    x = np.asarray(image, dtype=np.float32)
    if input_detail["dtype"] != np.float32:
        scale, zero_point = input_detail["quantization"]
        info = np.iinfo(input_detail["dtype"])
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    interpreter.set_tensor(input_detail["index"], x.astype(input_detail["dtype"]))


def read_output(interpreter, output_detail):
    """One output of the invoked interpreter, dequantised if it is int8 / uint8 with a scale."""
    import numpy as np

    y = interpreter.get_tensor(output_detail["index"])
    scale, zero_point = output_detail["quantization"]
    if y.dtype in (np.int8, np.uint8) and scale:
        y = (y.astype(np.float32) - zero_point) * scale
    return y


def run_interpreter(interpreter, image):
    """Runs one input through the interpreter, quantising / dequantising as its tensors need.

    ``image`` is a float array (1, H, W, C) in the model's input range.
    """
    set_input(interpreter, image)
    interpreter.invoke()
    return read_output(interpreter, interpreter.get_output_details()[0])


def delegation(interpreter) -> dict:
    """How the interpreter's execution plan runs the graph: the delegate partitions and the
    operators left to the runtime's own kernels.

    LiteRT appends one node per delegate partition (``TfLiteXNNPackDelegate`` for XNNPACK, the
    CPU delegate applied by default) after the model's own nodes; the nodes a partition replaced
    are those between its inputs and its outputs. Call after ``allocate_tensors`` (the default
    delegate is applied then).

    Returns:
        ``{"nodes": the model's operators, "partitions": delegate partitions, "delegate":
        "XNNPACK" or None, "outside": {operator: count} run by the runtime's own kernels,
        "int8_convolutions": the convolutions (:data:`CONVOLUTIONS`) with int8 / uint8 weights,
        "int8_convolutions_outside": those of them run by the runtime's own kernels,
        "outside_nodes": the sorted indices of the model's nodes run by the runtime's own
        kernels (the operator indices of the file's main subgraph)}``.
    """
    from collections import Counter

    import numpy as np

    wrapper = interpreter._interpreter
    nodes = []
    for i in range(wrapper.NumNodes()):
        nodes.append((wrapper.NodeName(i), [t for t in wrapper.NodeInputs(i) if t >= 0],
                      [t for t in wrapper.NodeOutputs(i) if t >= 0]))
    int8_weights = {
        i for i, (name, inputs, _) in enumerate(nodes)
        if name in CONVOLUTIONS and len(inputs) > 1
        and wrapper.TensorType(inputs[1], 0) in (np.int8, np.uint8)
    }
    del wrapper  # the interpreter refuses to invoke while a reference to its internals lives
    delegate_nodes = [i for i, (name, _, _) in enumerate(nodes) if "delegate" in name.lower()]
    own = [i for i in range(len(nodes)) if i not in set(delegate_nodes)]
    producer = {tensor: i for i in own for tensor in nodes[i][2]}
    replaced: set[int] = set()
    for d in delegate_nodes:
        boundary = set(nodes[d][1])
        stack = list(nodes[d][2])
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in replaced:
                continue
            replaced.add(node)
            stack.extend(nodes[node][1])
    outside = Counter(nodes[i][0] for i in own if i not in replaced)
    return {
        "nodes": len(own),
        "partitions": len(delegate_nodes),
        # The Python interpreter applies one delegate by default: XNNPACK (named "DELEGATE").
        "delegate": "XNNPACK" if delegate_nodes else None,
        "outside": dict(sorted(outside.items())),
        "int8_convolutions": len(int8_weights),
        "int8_convolutions_outside": len(int8_weights - replaced),
        "outside_nodes": [i for i in own if i not in replaced],
    }


def xnnpack_ran_graph(graph: dict) -> bool:
    """Whether XNNPACK ran a graph's compute: a :func:`delegation` with at least one partition
    and no convolution (:data:`CONVOLUTIONS`) left outside it."""
    return graph["partitions"] >= 1 and not any(op in CONVOLUTIONS for op in graph["outside"])


def delegation_summary(partitions: int, outside: dict[str, int]) -> str:
    """A delegation in a few words: "1 XNNPACK partition, outside: PRELU x1"."""
    text = f"{partitions} XNNPACK partition{'' if partitions == 1 else 's'}"
    if outside:
        text += ", outside: " + ", ".join(f"{op} x{count}" for op, count in outside.items())
    return text


def int8_without_xnnpack_message(graph: dict, model: str | os.PathLike | None = None) -> str | None:
    """What :func:`warn_if_int8_without_xnnpack` says of a model's :func:`delegation`: None
    unless some of its int8 convolutions run on the runtime's own kernels."""
    outside = graph.get("int8_convolutions_outside", 0)
    if not outside:
        return None
    name = os.path.basename(os.fspath(model)) if model is not None else "this int8 model"
    suggestion = "Use the fp32 or fp16 export on this runtime"
    if interpreter_identity()["name"] != "ai-edge-litert":
        suggestion += ", or install ai-edge-litert (a newer runtime) where the platform has it"
    return (
        f"{name}: {runtime_label()} runs {outside} of its {graph['int8_convolutions']} int8 "
        f"convolutions on TFLite's own int8 kernels, not XNNPACK: expect it slower than the "
        f"fp32 export ({INT8_WITHOUT_XNNPACK_COST}). {suggestion}."
    )


def warn_if_int8_without_xnnpack(graph: dict, model: str | os.PathLike | None = None) -> bool:
    """Warns (:class:`Int8WithoutXNNPACKWarning`), once per model file in a process, when an
    int8 model's convolutions run on the runtime's own int8 kernels instead of XNNPACK's, as
    every int8 operator does on tflite-runtime 2.14: slower than the fp32 export, up to 21x.

    Args:
        graph: the model's :func:`delegation`.
        model: its file (the warning names it, and is given once per file); None: a model
            from bytes, warned about once per message.

    Returns:
        whether the model's int8 convolutions run outside XNNPACK (warned now or before).
    """
    message = int8_without_xnnpack_message(graph, model)
    if message is None:
        return False
    warn_once(message, model, stacklevel=2)
    return True


def warn_once(message: str, model: str | os.PathLike | None = None, stacklevel: int = 1) -> None:
    """Gives an :class:`Int8WithoutXNNPACKWarning` unless one was given for ``model`` (for
    None: for this message) in this process, whatever the warning filters say (a benchmark
    loads a model once per size). ``stacklevel`` as ``warnings.warn``'s, from the caller."""
    key = os.path.realpath(model) if model is not None else message
    if key not in _warned_models:
        _warned_models.add(key)
        warnings.warn(message, Int8WithoutXNNPACKWarning, stacklevel=stacklevel + 1)
