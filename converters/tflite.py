"""Keras model -> TFLite flatbuffer, with builtin operators only.

Quantisation modes (https://ai.google.dev/edge/litert/models/post_training_quantization):
``none`` (fp32), ``fp16`` (fp16 weights), ``dynamic`` (int8 weights, float activations) and
``int8`` (full integer with a representative dataset; input / output float32, uint8 or int8).
``supported_ops`` is always ``TFLITE_BUILTINS`` (``TFLITE_BUILTINS_INT8`` for full int8), so a
graph that would need Flex (select TF) ops fails to convert here rather than on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

QUANT_MODES = ("none", "fp16", "dynamic", "int8")
IO_TYPES = ("float32", "uint8", "int8")


def convert_keras_to_tflite(
    model,
    quant: str = "none",
    representative_data: Callable[[], Iterable[np.ndarray]] | None = None,
    io_type: str = "float32",
    per_tensor_dense: bool = False,
) -> bytes:
    """Converts a Keras 3 model with one image input to a TFLite flatbuffer (batch size 1).

    Args:
        quant: one of ``QUANT_MODES``.
        representative_data: for ``int8``, a callable returning an iterable of float32 images
            (H, W, C) or batches (1, H, W, C) in the model's input range; 100-500 images is usual.
        io_type: input / output type of a full-int8 model; other modes take float32 only.
        per_tensor_dense: quantise dense layers' weights per tensor, not per output channel.
            A ``dynamic`` export's per-channel hybrid FULLY_CONNECTED is version 12, which
            older runtimes (tflite-runtime 2.14) have no kernel for; per tensor it is version 9.
            ``edgeseg export --runtime`` falls back to it (:data:`RUNTIME_FORMS`).
    """

    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {', '.join(QUANT_MODES)}; got {quant!r}")
    if io_type not in IO_TYPES:
        raise ValueError(f"io_type must be one of {', '.join(IO_TYPES)}; got {io_type!r}")
    if io_type != "float32" and quant != "int8":
        raise ValueError(f"io_type {io_type!r} needs quant 'int8' (got quant {quant!r})")
    if quant == "int8" and representative_data is None:
        raise ValueError("quant 'int8' needs representative_data (calibration images)")

    import tempfile

    from edgeseg.models.layers import deployable

    # The same function with operators XNNPACK runs fast (see edgeseg.models.layers.deployable).
    model = deployable(model, integer=quant == "int8")
    with tempfile.TemporaryDirectory(prefix="edgeseg-tflite-") as saved_model_dir:
        converter = _saved_model_converter(model, saved_model_dir)
        _configure(converter, quant, representative_data, io_type)
        if per_tensor_dense:
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        return run_converter(converter)


def run_converter(converter) -> bytes:
    """``converter.convert()`` without the lines the converter writes on every run
    (``edgeseg.quiet.CONVERTER_NOISE``); its real warnings and errors still show."""
    from edgeseg.quiet import CONVERTER_NOISE, filtered_native_stderr

    with filtered_native_stderr(CONVERTER_NOISE):
        return converter.convert()


def _saved_model_converter(model, saved_model_dir: str):
    """A TFLiteConverter over ``model`` written as a SavedModel into ``saved_model_dir``.

    Keras 3's own path to TFLite: an export archive (a SavedModel whose variables the converter
    freezes into constants, so that batch norms fold into the convolutions), then the converter.
    """
    import functools

    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        functools.partial(model.__call__, training=False),
        input_signature=[tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32,
                                       name="image")],
    )
    archive.write_out(saved_model_dir, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)


def convert_selective_int8(
    model,
    representative_data: Callable[[], Iterable[np.ndarray]],
    keep_float: Callable[[str], bool] = lambda name: False,
    max_layer_error: float | None = None,
    float_outputs: bool = False,
) -> tuple[bytes, list[str], list[str]]:
    """Int8 kernels everywhere except where int8 cannot hold the values: float I/O, builtin ops.

    Selective quantisation (https://ai.google.dev/edge/litert/models/quantization_debugger):
    the graph is calibrated once on ``representative_data``; the ops whose output tensor name
    ``keep_float`` accepts stay float, and with ``max_layer_error`` so do those whose int8 output
    differs from the float op on the same input by more than that many quantisation steps
    (root-mean-square error / scale; 0.29 is pure rounding, 1/sqrt(12)), measured over the
    same images. ``float_outputs`` keeps the ops that write the graph's outputs float too (the
    converter names those tensors after the signature, not after their layer).

    The quantiser still gives an int8 scale to the value-moving ops (reshape, gather, select,
    minimum / maximum, comparisons, top-k, softmax) that read a float tensor with calibration
    statistics, kept float or not: a graph that must stay exact there writes such steps as
    integer ops or arithmetic (as the Mask R-CNN's proposal, detection and ROIAlign layers do).

    Returns:
        (flatbuffer, the names of the tensors left float, those of them left float for their
        int8 error), the names in graph order.
    """
    import csv
    import io
    import tempfile

    import tensorflow as tf

    from edgeseg.models.layers import deployable
    from edgeseg.runtime_tflite import load_interpreter

    model = deployable(model, integer=True)

    def dataset():
        for image in representative_data():
            batch = np.asarray(image, dtype=np.float32)
            yield [batch[None] if batch.ndim == 3 else batch]

    with tempfile.TemporaryDirectory(prefix="edgeseg-tflite-") as saved_model_dir:
        converter = _saved_model_converter(model, saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        debug = tf.lite.experimental
        debugger = debug.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    calibrated = load_interpreter(model_content=debugger.calibrated_model)
    names = [t["name"] for t in calibrated.get_tensor_details()]
    outputs = {t["name"] for t in calibrated.get_output_details()} if float_outputs else set()
    denied = [name for name in names if keep_float(name) or name in outputs]
    chosen, noisy = set(denied), set()
    if max_layer_error is not None and len(denied) < len(names):
        # The debug graph again, with the chosen ops float: each int8 op's output is compared
        # with the float op's on the same (dequantised) input, image by image.
        debugger.options = debug.QuantizationDebugOptions(denylisted_nodes=denied or None)
        debugger.run()
        table = io.StringIO()
        debugger.layer_statistics_dump(table)
        table.seek(0)
        noisy = {row["tensor_name"] for row in csv.DictReader(table)
                 if float(row["scale"]) > 0 and np.sqrt(float(row["mean_squared_error"]))
                 / float(row["scale"]) > max_layer_error}
        denied = [name for name in names if name in noisy or name in denied]
    # What QuantizationDebugger.get_nondebug_quantized_model does, with this denylist.
    from tensorflow.lite.python.convert import mlir_quantize

    blob = mlir_quantize(debugger.calibrated_model, fully_quantize=False,
                         denylisted_nodes=denied or None)
    return blob, denied, [name for name in denied if name in noisy and name not in chosen]


def _configure(converter, quant, representative_data, io_type) -> None:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

        def representative_dataset():
            for image in representative_data():
                batch = np.asarray(image, dtype=np.float32)
                if batch.ndim == 3:
                    batch = batch[None]
                yield [batch]

        converter.representative_dataset = representative_dataset
        if io_type != "float32":
            converter.inference_input_type = getattr(tf, io_type)
            converter.inference_output_type = getattr(tf, io_type)


def tflite_op_names(model_content: bytes) -> list[str]:
    """The operator names in a TFLite flatbuffer (e.g. CONV_2D, FlexMaxPoolWithArgmax)."""
    from edgeseg.runtime_tflite import load_interpreter

    interpreter = load_interpreter(model_content=model_content)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def non_builtin_ops(model_content: bytes) -> list[str]:
    """Operators that are not TFLite builtins: Flex (select TF) ops and custom ops."""
    from edgeseg.runtime_tflite import load_interpreter

    interpreter = load_interpreter(model_content=model_content)
    found = set()
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name.startswith("Flex") or name == "CUSTOM" or not name.isupper():
            found.add(name)
    return sorted(found)


# --- the formats table's entries (edgeseg.converters.formats) ------------------------------------


def write_tflite(job, path) -> str:
    """Converts ``job.model`` (a semantic model) to ``path``; returns the quantisation mode.

    ``qat`` fine-tunes on ``job.train_spec`` first (``edgeseg.converters.qat``); ``int8``
    calibrates on ``job.calibration``.
    """
    if job.quant == "qat":
        from edgeseg.converters.qat import qat_export_tflite

        blob = qat_export_tflite(job.model, job.train_spec, job.calibration, job.io,
                                 epochs=job.qat_epochs)
    else:
        representative = (lambda: iter(job.calibration)) if job.quant == "int8" else None
        blob = convert_keras_to_tflite(job.model, job.quant, representative, io_type=job.io,
                                       **job.forms)
    Path(path).write_bytes(blob)
    return job.quant


RUNTIME_FORMS: tuple[dict, ...] = ({}, {"per_tensor_dense": True})
"""The converter options ``edgeseg export --runtime`` tries in turn until the file loads on the
target runtime: as edgeseg's exports are by default, then with the operator forms older
runtimes have (measured by ``python -m edgeseg.converters.probe_runtimes``: tflite-runtime 2.14
lacks the per-channel hybrid FULLY_CONNECTED version 12 of a ``dynamic`` Mask R-CNN)."""


class RuntimeTargetError(RuntimeError):
    """The export uses an operator that the target runtime (``--runtime``) cannot load."""


def check_runtimes(path, runtime: str | None = None) -> dict[str, dict]:
    """The written .tflite checked against every runtime edgeseg has probed
    (``edgeseg.runtimes``): ``{"tflite-runtime==2.14.0": {"loads", "xnnpack_nodes",
    "xnnpack_macs", "int8_without_xnnpack"}}``, for the sidecar.

    With ``runtime`` (a requirement such as ``tflite-runtime==2.14.0``), a file that will not
    load there raises :class:`RuntimeTargetError` naming the operators (so the export writes
    nothing), and an int8 graph that would run without XNNPACK there is kept with an
    ``Int8WithoutXNNPACKWarning`` saying what it costs and what to export instead.
    """
    import warnings

    from edgeseg.runtime_tflite import INT8_WITHOUT_XNNPACK_COST, Int8WithoutXNNPACKWarning
    from edgeseg.runtimes import check_graph, known_runtimes, runtime_support
    from edgeseg.tflite_file import read_tflite

    graph = read_tflite(path)
    tables = known_runtimes()
    if runtime:
        target = runtime_support(runtime)
        tables = [t for t in tables if t.requirement != target.requirement] + [target]
    reports = {table.requirement: check_graph(graph, table) for table in tables}
    if runtime:
        report = reports[target.requirement]
        if report.loads is not True:
            from edgeseg.runtimes import readable_signature

            problems = [f"{readable_signature(k)}: not in {target.requirement}" for k in report.missing]
            problems += [f"{readable_signature(k)}: never probed on {target.requirement}"
                         for k in report.unknown]
            raise RuntimeTargetError(
                f"--runtime {runtime}: the export would use operators that runtime cannot load "
                f"({'; '.join(problems)}); nothing was written. Export for a newer runtime "
                "(ai-edge-litert), or in another --quant mode")
        if report.int8_without_xnnpack:
            warnings.warn(
                f"--runtime {runtime}: this int8 export loads there, but XNNPACK takes none of "
                f"its int8 convolutions ({report.xnnpack_macs / max(report.macs, 1):.0%} of its "
                f"MACs), so it runs on TFLite's reference int8 kernels, slower than the fp32 "
                f"export ({INT8_WITHOUT_XNNPACK_COST}). For that runtime export "
                "--quant none or fp16; keep int8 for ai-edge-litert",
                Int8WithoutXNNPACKWarning, stacklevel=2)
    return {
        name: {"loads": r.loads, "xnnpack_nodes": f"{r.xnnpack_nodes}/{r.nodes}",
               "xnnpack_macs": round(r.xnnpack_macs / r.macs, 4) if r.macs else None,
               "int8_without_xnnpack": r.int8_without_xnnpack}
        for name, r in sorted(reports.items())
    }


def require_builtin_ops(path) -> None:
    """Refuses a written .tflite file whose graph needs Flex or custom operators."""
    bad = non_builtin_ops(Path(path).read_bytes())
    if bad:
        raise RuntimeError(f"the TFLite graph needs non-builtin ops {bad}; refusing to write it")
