"""TensorRT export: the operator / type check, the INT8 calibrator, trtexec lines and errors.

Everything but the ``tensorrt``-marked tests runs without TensorRT or a GPU.
"""

from __future__ import annotations

import os
import shlex
import sys

import numpy as np
import pytest

from edgeseg.converters import tensorrt_export
from edgeseg.converters.tensorrt_export import (
    TENSORRT_ONNX_OPS,
    EntropyCalibrator,
    build_engine,
    check_tensorrt_compatibility,
    run_engine,
    tensorrt_type_issues,
    trtexec_command,
    unsupported_tensorrt_ops,
)
from tests.helpers import random_images

# The operators the ONNX-TensorRT table marks "Y" that segmentation models commonly use.
COMMON_OPS = {
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "Div",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND",
    "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid",
    "Identity", "If", "InstanceNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "Loop", "LRN", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "Not", "OneHot", "Or", "Pad", "Pow", "PRelu", "QuantizeLinear",
    "DequantizeLinear", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu",
    "Reshape", "Resize", "RoiAlign", "Round", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze",
    "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Upsample", "Where", "Xor",
}  # fmt: skip
# Marked "N" (no native support) in the table.
REJECTED_OPS = ["MaxUnpool", "Unique", "Compress", "BitShift", "MatMulInteger", "QLinearConv"]


def test_operator_table_has_the_common_operators_and_not_the_rejected_ones():
    assert set(COMMON_OPS) <= TENSORRT_ONNX_OPS
    assert not set(REJECTED_OPS) & TENSORRT_ONNX_OPS


def model_with_unsupported_ops():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxUnpool", ["r", "indices"], ["u"], kernel_shape=[2, 2]),
        helper.make_node("FusedConv", ["u", "w"], ["y"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 1, 2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    onnx.checker.check_model(model)
    return model


def test_unsupported_operators_are_reported():
    proto = model_with_unsupported_ops()
    assert unsupported_tensorrt_ops(proto) == ["MaxUnpool", "com.microsoft:FusedConv"]
    check = check_tensorrt_compatibility(proto)
    assert not check.ok
    assert check.unsupported_ops == ["MaxUnpool", "com.microsoft:FusedConv"]
    assert check.warnings == ["input 'indices' is INT64 data"]


def model_with_type_problems():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["d"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "shape"], ["r"]),  # int64 shape: expected, no warning
        helper.make_node("Cast", ["r"], ["as_int64"], to=TensorProto.INT64, name="to_int64"),
        helper.make_node("Add", ["as_int64", "offset"], ["total"]),
        helper.make_node("Cast", ["r"], ["small"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["small"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["back"], ["wide"], to=TensorProto.DOUBLE, name="to_double"),
        helper.make_node("Relu", ["wide"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "types",
        [helper.make_tensor_value_info("d", TensorProto.DOUBLE, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 2]),
            helper.make_tensor_value_info("total", TensorProto.INT64, [3, 2]),
        ],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [3, 2]),
            helper.make_tensor("offset", TensorProto.INT64, [1], [7]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float64_and_inner_uint8_are_unsupported_and_int64_data_is_a_warning():
    unsupported, warnings = tensorrt_type_issues(model_with_type_problems())
    assert unsupported == [
        "input 'd' is DOUBLE (float64): export float32",
        "tensor 'small' is UINT8, which TensorRT takes only as a network input or output",
        "tensor 'wide' is DOUBLE (float64): export float32",
        "output 'y' is DOUBLE (float64): export float32",
        "Cast 'to_double' to DOUBLE (float64)",
    ]
    assert warnings == [
        "Cast 'to_int64' to INT64",
        "initializer 'offset' is INT64 data",
        "output 'total' is INT64 data",
    ]


# --- INT8 calibrator ---------------------------------------------------------------------------


def all_batches(calibrator):
    batches = []
    while (batch := calibrator.next_batch()) is not None:
        batches.append(batch)
    return batches


@pytest.mark.parametrize(
    "feed",
    [
        lambda x: x,  # one (N, H, W, C) array
        lambda x: iter(list(x)),  # a generator of (H, W, C) images
        lambda x: [x[:3], x[3:]],  # batches of another size
    ],
    ids=["array", "images", "chunks"],
)
def test_calibrator_gives_full_batches_and_drops_the_partial_one(feed):
    images = random_images(10, 6, 7, seed=1)
    calibrator = EntropyCalibrator(feed(images), batch_size=4)
    assert calibrator.get_batch_size() == 4
    batches = all_batches(calibrator)
    assert [b.shape for b in batches] == [(4, 6, 7, 3), (4, 6, 7, 3)]
    for batch in batches:
        assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate(batches), images[:8])
    assert calibrator.images_used == 8
    assert calibrator.next_batch() is None  # stays exhausted


def test_calibrator_converts_to_float32_and_nchw():
    images = random_images(4, 6, 7, seed=2).astype(np.float64)
    batch = EntropyCalibrator(images, batch_size=2, layout="NCHW").next_batch()
    assert batch.shape == (2, 3, 6, 7)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, images[:2].transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (random_images(3, 6, 7), r"at least batch_size=4 images, got 3"),
        ((random_images(4, 6, 7) * 255).astype(np.uint8), r"image 0 is uint8"),
        (random_images(4, 6, 7) * 255, r"image 0 has values in \[.*\], outside .*\[0, 1\]"),
        ([*random_images(2, 6, 7), *random_images(2, 6, 8)], r"image 2 has shape \(6, 8, 3\)"),
    ],
    ids=["too-few", "integer", "0-255", "mixed-sizes"],
)
def test_calibrator_rejects_bad_images_with_the_reason(images, message):
    with pytest.raises(ValueError, match=message):
        EntropyCalibrator(images, batch_size=4).next_batch()


def test_calibrator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        EntropyCalibrator(random_images(4, 6, 7), batch_size=0)
    with pytest.raises(ValueError, match="layout must be one of NHWC, NCHW; got 'HWC'"):
        EntropyCalibrator(random_images(4, 6, 7), batch_size=2, layout="HWC")
    with pytest.raises(ValueError, match="needs images, or a cache_path"):
        EntropyCalibrator(None, batch_size=2, cache_path=tmp_path / "missing.cache")


def test_calibration_cache_round_trip(tmp_path):
    cache = tmp_path / "unet.calib"
    calibrator = EntropyCalibrator(random_images(4, 6, 7), batch_size=2, cache_path=cache)
    assert calibrator.read_calibration_cache() is None
    table = b"TRT-10x-EntropyCalibration2\ninput: 3c010a14\n"
    calibrator.write_calibration_cache(memoryview(table))  # TensorRT passes a buffer
    assert cache.read_bytes() == table
    assert os.listdir(tmp_path) == ["unet.calib"]  # no temporary file left
    # A later build can calibrate from the cache alone.
    assert EntropyCalibrator(None, batch_size=2, cache_path=cache).read_calibration_cache() == table
    # Without a cache path nothing is read or written.
    no_cache = EntropyCalibrator(random_images(4, 6, 7), batch_size=2)
    no_cache.write_calibration_cache(table)
    assert no_cache.read_calibration_cache() is None


class FakeCuda:
    """Stands in for the GPU: records what get_batch copies to "device memory"."""

    def __init__(self):
        self.memory = {}

    def malloc(self, nbytes):
        pointer = 0x1000 * (len(self.memory) + 1)
        self.memory[pointer] = np.zeros(nbytes, np.uint8)
        return pointer

    def to_device(self, pointer, host):
        self.memory[pointer] = host.copy()

    def free(self, pointer):
        del self.memory[pointer]


def test_get_batch_copies_each_batch_to_one_device_buffer(monkeypatch):
    monkeypatch.setattr(tensorrt_export, "_Cuda", FakeCuda)
    images = random_images(5, 6, 7, seed=3)
    with EntropyCalibrator(images, batch_size=2) as calibrator:
        first = calibrator.get_batch(["image"])
        np.testing.assert_array_equal(calibrator._cuda.memory[first[0]], images[:2])
        second = calibrator.get_batch(["image"])
        assert second == first  # the buffer is reused
        np.testing.assert_array_equal(calibrator._cuda.memory[first[0]], images[2:4])
        assert calibrator.get_batch(["image"]) is None  # the fifth image is dropped
        cuda = calibrator._cuda
    assert cuda.memory == {}  # closing frees the buffer


def test_get_batch_without_cuda_bindings_says_what_to_install(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.cudart", "pycuda", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    calibrator = EntropyCalibrator(random_images(2, 6, 7), batch_size=2)
    with pytest.raises(ImportError, match="pip install cuda-python"):
        calibrator.get_batch(["image"])
    assert calibrator.get_batch(["image"]) is None  # exhausted: no GPU needed to say so


# --- trtexec and the builder without TensorRT -------------------------------------------------


def test_trtexec_command_for_each_precision():
    assert trtexec_command("unet.onnx", "unet.engine", "fp16") == (
        "trtexec --onnx=unet.onnx --saveEngine=unet.engine --memPoolSize=workspace:2048M --fp16"
    )
    assert trtexec_command("unet.onnx", "unet.engine", "fp32", workspace_mb=512) == (
        "trtexec --onnx=unet.onnx --saveEngine=unet.engine --memPoolSize=workspace:512M"
    )
    assert trtexec_command("unet.onnx", "unet.engine", "int8", calib_cache="unet.calib") == (
        "trtexec --onnx=unet.onnx --saveEngine=unet.engine --memPoolSize=workspace:2048M "
        "--fp16 --int8 --calib=unet.calib"
    )


def test_trtexec_command_quotes_paths_and_checks_arguments():
    command = trtexec_command("my models/unet.onnx", "out/unet.engine", "fp16")
    assert shlex.split(command)[1] == "--onnx=my models/unet.onnx"
    # Without a cache path, --calib still names one: trtexec would otherwise use fake ranges.
    assert trtexec_command("unet.onnx", "out/unet.engine", "int8").endswith(
        "--int8 --calib=out/unet.engine.calib"
    )
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8; got 'int4'"):
        trtexec_command("unet.onnx", "unet.engine", "int4")


@pytest.fixture
def without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def test_build_engine_without_tensorrt_names_trtexec(tmp_path, without_tensorrt):
    onnx_path = tmp_path / "unet.onnx"
    onnx_path.write_bytes(b"not read before TensorRT is imported")
    engine_path = tmp_path / "unet.engine"
    with pytest.raises(ImportError, match="tensorrt") as error:
        build_engine(onnx_path, engine_path, "fp16")
    assert trtexec_command(onnx_path, engine_path, "fp16") in str(error.value)
    assert not engine_path.exists()

    calibrator = EntropyCalibrator(random_images(2, 6, 7), 1, cache_path=tmp_path / "unet.calib")
    with pytest.raises(ImportError, match=r"--int8 --calib=\S*unet\.calib"):
        build_engine(onnx_path, engine_path, "int8", calibrator=calibrator)


def test_build_engine_checks_its_arguments_first(tmp_path, without_tensorrt):
    onnx_path = tmp_path / "unet.onnx"
    onnx_path.write_bytes(b"")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_engine(onnx_path, tmp_path / "e", "int4")
    with pytest.raises(ValueError, match="'int8' needs a calibrator"):
        build_engine(onnx_path, tmp_path / "e", "int8")
    with pytest.raises(FileNotFoundError, match="missing.onnx does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e")


def test_run_engine_without_tensorrt_points_to_onnxruntime(tmp_path, without_tensorrt):
    with pytest.raises(ImportError, match="run_onnx"):
        run_engine(tmp_path / "unet.engine", random_images(1, 6, 7))


# --- with TensorRT and a GPU --------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
def test_engines_match_keras(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    pytest.importorskip("tf2onnx")
    from edgeseg.converters.onnx_export import convert_keras_to_onnx
    from edgeseg.io import write_bytes_atomic
    from edgeseg.models import build
    from tests.helpers import SMALL_MODELS, keras_predict

    model = build("unet", 5, (45, 61, 3), **SMALL_MODELS["unet"])
    onnx_path = write_bytes_atomic(tmp_path / "unet.onnx",
                                   convert_keras_to_onnx(model).SerializeToString())
    x = random_images(2, 45, 61, seed=4)
    want = keras_predict(model, x)

    for precision, atol in (("fp32", 1e-3), ("fp16", 3e-2)):
        engine = build_engine(onnx_path, tmp_path / f"unet-{precision}.engine", precision)
        np.testing.assert_allclose(run_engine(engine, x), want, atol=atol, rtol=0)

    cache = tmp_path / "unet.calib"
    calibrator = EntropyCalibrator(random_images(16, 45, 61, seed=5), 1, cache_path=cache)
    engine = build_engine(onnx_path, tmp_path / "unet-int8.engine", "int8", calibrator)
    assert cache.stat().st_size > 0
    got = run_engine(engine, x)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.5


# --- the export's fallback without TensorRT ------------------------------------------------------


def tiny_keras_model():
    pytest.importorskip("tf2onnx")
    from tests.bench.small_models import conv_stack

    return conv_stack()


def trtexec_lines(message: str) -> list[list[str]]:
    """The lines of a message that are commands (indented, starting with trtexec), split as a
    POSIX shell splits them."""
    return [shlex.split(line) for line in message.splitlines() if line.startswith("  trtexec")]


def test_export_without_tensorrt_writes_the_onnx_and_a_trtexec_line_that_runs(
        tmp_path, without_tensorrt):
    from edgeseg.converters.formats import ConversionJob

    out = tmp_path / "my models" / "enet.engine"  # a space: the paths must be quoted
    out.parent.mkdir()
    job = ConversionJob(model=tiny_keras_model(), quant="fp16", destination=out)
    with pytest.raises(tensorrt_export.TensorRTUnavailableError) as error:
        tensorrt_export.write_engine(job, out.with_name(".enet-tmp.engine"))
    onnx_path = out.with_suffix(".onnx")
    assert isinstance(error.value, ImportError)
    assert sorted(p.name for p in out.parent.iterdir()) == ["enet.onnx"]  # visible, and alone
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load(onnx_path))

    message = str(error.value)
    assert message.startswith("no engine written: TensorRT's Python package could not be imported")
    (argv,) = trtexec_lines(message)
    assert argv == ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={out}",
                    "--memPoolSize=workspace:2048M", "--fp16"]
    assert error.value.command == trtexec_command(onnx_path, out, "fp16")
    assert error.value.onnx_path == onnx_path


def test_int8_export_without_tensorrt_gives_the_fp16_line_and_says_why(tmp_path, without_tensorrt):
    from edgeseg.converters.formats import ConversionJob

    out = tmp_path / "enet_int8.engine"
    stale = tensorrt_export.default_calibration_cache(out)
    stale.write_bytes(b"a table of other weights")
    job = ConversionJob(model=tiny_keras_model(), quant="int8",
                        calibration=random_images(2, 16, 24), destination=out)
    with pytest.raises(tensorrt_export.TensorRTUnavailableError) as error:
        tensorrt_export.write_engine(job, tmp_path / ".enet_int8-tmp.engine")
    message = str(error.value)
    assert not stale.exists()  # never reused for the new weights
    assert "An INT8 engine also needs a calibration table" in message
    (argv,) = trtexec_lines(message)  # the one line that runs as printed
    assert argv == ["trtexec", f"--onnx={tmp_path / 'enet_int8.onnx'}",
                    f"--saveEngine={tmp_path / 'enet_fp16.engine'}",
                    "--memPoolSize=workspace:2048M", "--fp16"]
    assert (tmp_path / "enet_int8.onnx").is_file()
    assert f"--int8 --calib={stale}" in message  # what to run once the table exists


def test_cli_export_without_tensorrt_ends_with_the_message_not_a_traceback(
        tmp_path, without_tensorrt, capsys):
    pytest.importorskip("tf2onnx")
    from edgeseg.cli import main
    from edgeseg.models import build
    from tests.helpers import SMALL_MODELS

    source = tmp_path / "unet.keras"
    build("unet", 3, (32, 48, 3), **SMALL_MODELS["unet"]).save(source)
    out = tmp_path / "out" / "unet.engine"
    code = main(["export", str(source), "--format", "tensorrt", "--quant", "fp16",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert captured.err.startswith("edgeseg export: error: no engine written")
    (argv,) = trtexec_lines(captured.err)
    assert argv[1:3] == [f"--onnx={out.with_suffix('.onnx')}", f"--saveEngine={out}"]
    assert out.with_suffix(".onnx").is_file() and not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet.onnx"]
