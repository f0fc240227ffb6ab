"""The .engine predictor (TensorRT) and the onnxruntime predictor's provider label.

No machine here has TensorRT. Everything up to it runs anyway: the ImportError without it, and
the predictor's buffers, batching, layouts and output types against a fake ``tensorrt`` module
and a fake GPU that store bytes and compute a known function with NumPy. The
``tensorrt``-marked test runs a real engine where TensorRT and a GPU are.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from edgeseg.converters import tensorrt_export
from edgeseg.runtime import engine as engine_module
from edgeseg.runtime import load_predictor
from edgeseg.runtime.predictor import EnginePredictor
from tests.helpers import random_images

NUM_CLASSES = 4
# The fake engine's function: logits = image @ WEIGHTS + BIAS per pixel (3 -> 4 channels).
WEIGHTS = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.5, -1.0, 2.0], [-0.75, 0.5, 2.5, -1.0]],
                   np.float32)
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def reference_logits(images_nhwc: np.ndarray) -> np.ndarray:
    return images_nhwc.astype(np.float32) @ WEIGHTS + BIAS


# --- a fake GPU and a fake tensorrt module ------------------------------------------------------


class FakeGpu:
    """Device memory as byte arrays, by pointer."""

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self.mallocs = 0
        self.next_pointer = 0x1000

    def read(self, pointer, dtype, shape):
        return self.memory[pointer].view(dtype).reshape(shape)

    def write(self, pointer, array):
        data = np.ascontiguousarray(array).view(np.uint8).ravel()
        assert data.nbytes == self.memory[pointer].nbytes, "buffer of the wrong size"
        self.memory[pointer][:] = data


def fake_cuda_class(gpu: FakeGpu):
    class FakeCuda:
        """CudaMemory's interface over the fake GPU: host arrays copied byte for byte."""

        def malloc(self, nbytes):
            gpu.mallocs += 1
            pointer = gpu.next_pointer
            gpu.next_pointer += 0x1000 + nbytes
            gpu.memory[pointer] = np.zeros(nbytes, np.uint8)
            return pointer

        def free(self, pointer):
            del gpu.memory[pointer]

        def to_device(self, pointer, host):
            gpu.write(pointer, host)

        def to_host(self, host, pointer):
            assert host.nbytes == gpu.memory[pointer].nbytes, "host array of the wrong size"
            host[...] = gpu.read(pointer, host.dtype, host.shape)

        def synchronize(self):
            pass

        def create_stream(self):
            return 7

        def destroy_stream(self, handle):
            assert handle == 7

        def device_name(self):
            return "Fake GPU 9000"

    return FakeCuda


class FakeContext:
    def __init__(self, engine, gpu):
        self.engine, self.gpu = engine, gpu
        self.addresses = {}
        self.executions = 0

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream):
        assert stream == 7
        spec = self.engine.spec
        x = self.gpu.read(self.addresses["image"], np.float32, spec["input"])
        nhwc = x.transpose(0, 2, 3, 1) if spec["layout"] == "NCHW" else x
        logits = reference_logits(nhwc)
        if spec["output"] == "mask":
            out = logits.argmax(-1).astype(np.uint8)
        else:
            out = logits.transpose(0, 3, 1, 2) if spec["layout"] == "NCHW" else logits
            out = out.astype(spec["output"])
        self.gpu.write(self.addresses["output"], out)
        self.executions += 1
        return True


class FakeEngine:
    def __init__(self, spec, gpu):
        self.spec, self.gpu = spec, gpu
        batch = spec["input"][0]
        height, width = (spec["input"][1:3] if spec["layout"] == "NHWC" else spec["input"][2:4])
        if spec["output"] == "mask":
            self.output_shape, self.output_dtype = (batch, height, width), np.dtype(np.uint8)
        elif spec["layout"] == "NCHW":
            self.output_shape = (batch, NUM_CLASSES, height, width)
            self.output_dtype = np.dtype(spec["output"])
        else:
            self.output_shape = (batch, height, width, NUM_CLASSES)
            self.output_dtype = np.dtype(spec["output"])
        self.num_io_tensors = 2
        self.contexts = []

    def get_tensor_name(self, index):
        return ("image", "output")[index]

    def get_tensor_mode(self, name):
        return "input" if name == "image" else "output"

    def get_tensor_shape(self, name):
        return list(self.spec["input"]) if name == "image" else list(self.output_shape)

    def get_tensor_dtype(self, name):
        return np.dtype(np.float32) if name == "image" else self.output_dtype

    def create_execution_context(self):
        self.contexts.append(FakeContext(self, self.gpu))
        return self.contexts[-1]


def fake_tensorrt(gpu: FakeGpu, version: str = "10.3.0"):
    """The calls of ``tensorrt`` that edgeseg makes. An engine file is ``FAKE <version>`` and a
    JSON spec; one of another version does not deserialise, as with TensorRT."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.engines = []

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, level):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            header, _, spec = bytes(blob).partition(b"\n")
            if header != f"FAKE {version}".encode():
                return None  # TensorRT logs the version mismatch and returns None
            trt.engines.append(FakeEngine(json.loads(spec), gpu))
            return trt.engines[-1]

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = np.dtype
    return trt


@pytest.fixture
def gpu(monkeypatch):
    gpu = FakeGpu()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(gpu))
    monkeypatch.setattr(engine_module, "CudaMemory", fake_cuda_class(gpu))
    return gpu


def write_engine_file(path, input_shape, layout="NHWC", output="float32", version="10.3.0"):
    spec = {"input": list(input_shape), "layout": layout, "output": output}
    path.write_bytes(f"FAKE {version}\n".encode() + json.dumps(spec).encode())
    return path


# --- the predictor on the fake TensorRT ---------------------------------------------------------


def test_engine_predictor_runs_batches_of_the_engine_batch_with_buffers_allocated_once(
        tmp_path, gpu):
    path = write_engine_file(tmp_path / "enet.engine", (2, 6, 7, 3))
    predictor = load_predictor(path)
    assert isinstance(predictor, EnginePredictor)
    assert predictor.format == "engine"
    assert predictor.input_size == (7, 6) and predictor.batch == 2
    assert predictor.layout == "NHWC"
    assert predictor.runtime == "tensorrt 10.3.0 (Fake GPU 9000)"
    assert predictor.artifact.format == "engine" and predictor.task == "semantic"
    assert gpu.mallocs == 2  # one input and one output buffer

    images = random_images(5, 6, 7, seed=1)  # 2 + 2 + a last batch filled up
    got = predictor(images)
    assert got.dtype == np.float32 and got.shape == (5, 6, 7, NUM_CLASSES)
    np.testing.assert_allclose(got, reference_logits(images), rtol=1e-6, atol=1e-6)
    one = predictor(images[3:4])
    np.testing.assert_allclose(one, reference_logits(images[3:4]), rtol=1e-6, atol=1e-6)
    context = predictor.engine.context
    assert context.executions == 4
    assert gpu.mallocs == 2  # nothing allocated per call

    predictor.close()
    assert gpu.memory == {}


def test_nchw_engine_with_fp16_output_returns_nhwc_float32(tmp_path, gpu):
    path = write_engine_file(tmp_path / "unet.engine", (1, 3, 6, 7), layout="NCHW",
                             output="float16")
    predictor = load_predictor(path)
    assert predictor.layout == "NCHW" and predictor.input_size == (7, 6)
    images = random_images(3, 6, 7, seed=2)
    got = predictor(images)
    assert got.dtype == np.float32 and got.shape == (3, 6, 7, NUM_CLASSES)
    want = reference_logits(images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())


def test_mask_output_comes_back_as_uint8(tmp_path, gpu):
    path = write_engine_file(tmp_path / "enet.engine", (1, 6, 7, 3), output="mask")
    images = random_images(2, 6, 7, seed=3)
    got = load_predictor(path)(images)
    assert got.dtype == np.uint8 and got.shape == (2, 6, 7)
    np.testing.assert_array_equal(got, reference_logits(images).argmax(-1))


def test_images_of_another_size_are_rejected(tmp_path, gpu):
    predictor = load_predictor(write_engine_file(tmp_path / "enet.engine", (1, 6, 7, 3)))
    with pytest.raises(ValueError, match=r"takes 7x6 images \(W x H\), got a batch of 6x7"):
        predictor(random_images(1, 7, 6))


def test_engine_of_another_tensorrt_says_so(tmp_path, gpu):
    path = write_engine_file(tmp_path / "enet.engine", (1, 6, 7, 3), version="8.6.1")
    with pytest.raises(RuntimeError, match="another TensorRT or for another") as error:
        load_predictor(path)
    assert "TensorRT 10.3.0 could not deserialise" in str(error.value)
    assert gpu.memory == {}


def test_engines_run_at_their_precision(tmp_path, gpu):
    path = write_engine_file(tmp_path / "enet.engine", (1, 6, 7, 3))
    with pytest.raises(ValueError, match="precision 'fp16' applies to .keras models"):
        load_predictor(path, precision="fp16")


def test_run_engine_uses_the_same_runner(tmp_path, gpu):
    path = write_engine_file(tmp_path / "enet.engine", (2, 6, 7, 3))
    images = random_images(4, 6, 7, seed=4)
    got = tensorrt_export.run_engine(path, images)
    np.testing.assert_allclose(got, reference_logits(images), rtol=1e-6, atol=1e-6)
    assert gpu.memory == {}  # freed on the way out
    with pytest.raises(ValueError, match="batches of 2 images, got 3"):
        tensorrt_export.run_engine(path, images[:3])


# --- without TensorRT ---------------------------------------------------------------------------


def test_engine_without_tensorrt_names_the_install_and_the_onnx_beside_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    path = write_engine_file(tmp_path / "enet.engine", (1, 6, 7, 3))
    with pytest.raises(ImportError, match="pip install tensorrt") as error:
        load_predictor(path)
    assert "JetPack" in str(error.value) and "edgeseg export --format onnx" in str(error.value)

    (tmp_path / "enet.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(ImportError, match=f"run {tmp_path / 'enet.onnx'} beside it"):
        load_predictor(path)


def test_importing_the_runtime_imports_neither_tensorrt_nor_tensorflow():
    code = ("import sys, edgeseg.runtime, edgeseg.runtime.engine; "
            "print(sorted(m for m in ('tensorrt', 'tensorflow', 'cuda', 'pycuda') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- onnxruntime's providers --------------------------------------------------------------------


def test_onnx_runtime_label_names_the_providers_the_session_uses(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["output"])],
        "pixelwise",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 6, 7, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 6, 7, NUM_CLASSES])],
        initializer=[numpy_helper.from_array(WEIGHTS, "w"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pixelwise.onnx"
    onnx.save(model, path)

    predictor = load_predictor(path)
    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                          "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(path), providers=wanted)
    assert predictor.providers == session.get_providers()
    assert predictor.runtime == f"onnxruntime {ort.__version__} ({', '.join(session.get_providers())})"
    images = random_images(2, 6, 7, seed=5)
    np.testing.assert_allclose(predictor(images), reference_logits(images), rtol=1e-5, atol=1e-5)


# --- a real engine --------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
def test_engine_predictor_matches_keras(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    pytest.importorskip("tf2onnx")
    from edgeseg.converters.onnx_export import convert_keras_to_onnx
    from edgeseg.converters.tensorrt_export import build_engine
    from edgeseg.io import write_bytes_atomic
    from edgeseg.models import build
    from tests.helpers import SMALL_MODELS, keras_predict

    model = build("unet", 5, (45, 61, 3), **SMALL_MODELS["unet"])
    onnx_path = write_bytes_atomic(tmp_path / "unet.onnx",
                                   convert_keras_to_onnx(model, batch=2).SerializeToString())
    engine = build_engine(onnx_path, tmp_path / "unet.engine", "fp32")
    predictor = load_predictor(engine)
    assert predictor.input_size == (61, 45) and predictor.batch == 2
    assert predictor.runtime.startswith("tensorrt ")
    x = random_images(3, 45, 61, seed=6)  # a batch of 2, then one filled up
    np.testing.assert_allclose(predictor(x), keras_predict(model, x), atol=1e-3, rtol=0)
