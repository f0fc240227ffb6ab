"""Loads the LiteRT (TFLite) interpreter without importing TensorFlow.

``ai_edge_litert`` is the LiteRT package; older device images have ``tflite_runtime``, which has
the same ``Interpreter`` API and is used as a fallback.
"""

from __future__ import annotations

import os


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
        "XNNPACK" or None, "outside": {operator: count} run by the runtime's own kernels}``.
    """
    from collections import Counter

    wrapper = interpreter._interpreter
    nodes = []
    for i in range(wrapper.NumNodes()):
        nodes.append((wrapper.NodeName(i), [t for t in wrapper.NodeInputs(i) if t >= 0],
                      [t for t in wrapper.NodeOutputs(i) if t >= 0]))
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
    }
