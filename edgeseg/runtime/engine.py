"""TensorRT engines at run time: deserialised once, their GPU buffers allocated once.

:class:`EngineRunner` holds what running an engine takes (TensorRT's runtime, the engine, an
execution context, one device buffer per input and output, host arrays for the outputs) and
runs any number of images through an engine built for a fixed batch. The runtime's ``.engine``
predictor (``edgeseg.runtime.predictor.EnginePredictor``) and
``edgeseg.converters.tensorrt_export.run_engine`` both run engines through it. GPU memory goes
through cuda-python or pycuda (:class:`CudaMemory`, which the INT8 calibrator uses too).

TensorRT and the CUDA bindings are imported when an engine is opened, never at import time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

TENSORRT_INSTALL_HINT = (
    "install TensorRT's Python package (pip install tensorrt on x86-64 Linux; part of JetPack "
    "on Jetson)"
)


def import_tensorrt(purpose: str, alternative: str):
    """The ``tensorrt`` module, or an ImportError saying what needs it, how to install it and
    ``alternative`` (what to do without it)."""
    try:
        import tensorrt
    except (ImportError, OSError) as error:
        raise ImportError(
            f"{purpose} needs TensorRT's Python package, which could not be imported ({error}); "
            f"{TENSORRT_INSTALL_HINT}, or {alternative}"
        ) from error
    return tensorrt


class CudaMemory:
    """The few CUDA runtime calls that feeding TensorRT needs, through cuda-python or pycuda.

    Copies are synchronous, on the legacy default stream; work queued on a stream from
    :meth:`create_stream` (a blocking stream) is ordered with them, so a copy back after
    ``execute_async_v3`` on that stream reads the finished outputs.
    """

    def __init__(self):
        self._cudart = self._driver = None
        self._pycuda_allocations = {}
        self._streams = {}
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # older cuda-python
            except ImportError:
                cudart = None
        if cudart is not None:
            self._cudart = cudart
            return
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context pycuda uses)
            import pycuda.driver as driver
        except ImportError as error:
            raise ImportError(
                "moving data to the GPU for TensorRT needs cuda-python or pycuda "
                f"({error}): pip install cuda-python"
            ) from error
        self._driver = driver

    def _check(self, result):
        error, *values = result
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA call failed: {self._cudart.cudaGetErrorString(error)[1]}")
        return values[0] if len(values) == 1 else values

    def malloc(self, nbytes: int) -> int:
        if self._cudart is not None:
            return int(self._check(self._cudart.cudaMalloc(nbytes)))
        allocation = self._driver.mem_alloc(nbytes)
        self._pycuda_allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        if self._cudart is not None:
            self._check(self._cudart.cudaFree(pointer))
        else:
            self._pycuda_allocations.pop(pointer).free()

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self._cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, kind))
        else:
            self._driver.memcpy_htod(pointer, host)

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self._cudart.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, kind))
        else:
            self._driver.memcpy_dtoh(host, pointer)

    def synchronize(self) -> None:
        if self._cudart is not None:
            self._check(self._cudart.cudaDeviceSynchronize())
        else:
            self._driver.Context.synchronize()

    def create_stream(self) -> int:
        """A new CUDA stream's handle, for ``execute_async_v3`` (TensorRT warns about, and
        synchronises around, the default stream)."""
        if self._cudart is not None:
            stream = self._check(self._cudart.cudaStreamCreate())
        else:
            stream = self._driver.Stream()
        handle = int(stream) if self._cudart is not None else int(stream.handle)
        self._streams[handle] = stream
        return handle

    def destroy_stream(self, handle: int) -> None:
        stream = self._streams.pop(handle)
        if self._cudart is not None:
            self._check(self._cudart.cudaStreamDestroy(stream))

    def device_name(self) -> str | None:
        """The current GPU's name ("NVIDIA H200", "Orin"), None where CUDA does not say."""
        try:
            if self._cudart is not None:
                device = self._check(self._cudart.cudaGetDevice())
                name = self._check(self._cudart.cudaGetDeviceProperties(device)).name
            else:
                name = self._driver.Context.get_device().name()
        except Exception:  # a name is a label; running does not depend on it
            return None
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip() or None


class EngineRunner:
    """A TensorRT engine ready to run: one input of a static shape, any number of outputs.

    The engine is deserialised, its execution context created and one device buffer per input
    and output allocated here, once; :meth:`run` copies images in, runs and copies every output
    back. ``close()`` (or leaving a ``with`` block) frees the GPU memory.

    Attributes:
        input_name, input_shape, input_dtype: the input tensor (``input_shape[0]`` is the batch
            the engine was built for, ``batch``).
        output_names, output_shapes, output_dtypes: the outputs, in the engine's order.
        tensorrt_version: TensorRT's version ("10.3.0").

    Raises:
        ImportError: no TensorRT (``purpose`` and ``alternative`` make the message).
        RuntimeError: TensorRT cannot start (no GPU) or cannot deserialise the file (an engine
            built by another TensorRT version or for another GPU model).
        ValueError: not one input, or an input shape with dynamic dimensions.
    """

    def __init__(self, engine_path: str | os.PathLike, *,
                 purpose: str = "running a TensorRT engine",
                 alternative: str = "run the ONNX model the engine was built from"):
        self.path = Path(engine_path)
        self._pointers: dict[str, int] = {}
        self._stream: int | None = None
        self.cuda: CudaMemory | None = None
        trt = import_tensorrt(f"{purpose} ({self.path})", alternative)
        self.tensorrt_version = str(trt.__version__)
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        except Exception as error:  # TensorRT raises TypeError / RuntimeError without a GPU
            raise RuntimeError(
                f"TensorRT {self.tensorrt_version} could not start ({error}); it needs an "
                "NVIDIA GPU with a working CUDA driver"
            ) from error
        try:
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except (RuntimeError, TypeError, ValueError):
            engine = None
        if engine is None:
            raise RuntimeError(
                f"TensorRT {self.tensorrt_version} could not deserialise {self.path} (its log "
                "above says why): an engine runs only with the TensorRT version and on the GPU "
                "model that built it, so this one was built by another TensorRT or for another "
                "GPU (or is not an engine). Build it again here, from its .onnx: edgeseg export "
                "--format tensorrt, or trtexec --onnx=MODEL.onnx --saveEngine=MODEL.engine"
            )
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ValueError(f"edgeseg runs engines with one input; {self.path} has {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self.input_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in self.input_shape):
            raise ValueError(
                f"{self.path}: edgeseg runs engines with a static input shape; this one has "
                f"{self.input_shape} (-1: dynamic). Export the ONNX model at a fixed size"
            )
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n))
                              for n in self.output_names}
        self.output_dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
                              for n in self.output_names}
        self.batch = self.input_shape[0]
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.path}")

        self._host_outputs = {n: np.empty(self.output_shapes[n], self.output_dtypes[n])
                              for n in self.output_names}
        self.cuda = CudaMemory()
        try:
            input_bytes = int(np.prod(self.input_shape)) * self.input_dtype.itemsize
            self._pointers[self.input_name] = self.cuda.malloc(input_bytes)
            for name, host in self._host_outputs.items():
                self._pointers[name] = self.cuda.malloc(host.nbytes)
            for name, pointer in self._pointers.items():
                self.context.set_tensor_address(name, pointer)
            self._stream = self.cuda.create_stream()
        except BaseException:
            self.close()
            raise

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for images ``x`` (N, *input_shape[1:]), N >= 1, by output name.

        The images run ``batch`` at a time; a last, partial batch is filled up with copies of
        its last image, whose results are dropped. Outputs keep the engine's dtypes.
        """
        if self._stream is None:
            raise RuntimeError(f"the engine runner of {self.path} is closed")
        x = np.asarray(x, self.input_dtype)
        if x.ndim != len(self.input_shape) or x.shape[1:] != self.input_shape[1:] or not len(x):
            raise ValueError(
                f"{self.path.name} takes inputs of shape (N, {', '.join(map(str, self.input_shape[1:]))}), "
                f"got {x.shape}"
            )
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            count = len(chunk)
            if count < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - count, 0)])
            self.cuda.to_device(self._pointers[self.input_name], chunk)
            if not self.context.execute_async_v3(self._stream):
                raise RuntimeError(f"TensorRT failed to run {self.path} (see its log above)")
            self.cuda.synchronize()
            for name, host in self._host_outputs.items():
                self.cuda.to_host(host, self._pointers[name])
                parts[name].append(host[:count].copy() if count < self.batch else host.copy())
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def close(self) -> None:
        """Frees the device buffers and the stream (running again raises)."""
        if self.cuda is not None:
            for pointer in self._pointers.values():
                self.cuda.free(pointer)
            if self._stream is not None:
                self.cuda.destroy_stream(self._stream)
        self._pointers = {}
        self._stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may be gone already
            self.close()
