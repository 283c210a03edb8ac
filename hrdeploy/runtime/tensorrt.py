"""TensorRT runner: deserialize an engine and run it with the TensorRT 10+/11 name-based API.

Tensors are bound by name (`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Device memory
comes from torch's CUDA allocator when torch has CUDA, else from cuda-python (pycuda is never needed).
`cuda_graph=True` captures the enqueue in a CUDA graph per input shape and replays it.

Not built on Polygraphy's TrtRunner: it allocates through Polygraphy's own ctypes CUDA wrapper and has no
CUDA-graph mode; here memory must come from torch or cuda-python and graphs are an option. Engines are
loaded directly with `trt.Runtime` so a failure can be explained with the engine's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hrdeploy.engine.device import DeviceInfo, cudart, require_gpu
from hrdeploy.engine.engine_info import check_compatibility, read_engine_metadata
from hrdeploy.engine.version import require_tensorrt
from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file
from hrdeploy.runtime.base import RunnerBase


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


class _TorchMemory:
    """Buffers and stream from torch.cuda."""

    def __init__(self, device: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self.device)
        self.graph: Any = None

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        tdtype = self.torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return self.torch.empty(shape, dtype=tdtype, device=self.device)

    @staticmethod
    def ptr(buf: Any) -> int:
        return buf.data_ptr()

    def upload(self, buf: Any, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(host), non_blocking=False)

    def download(self, buf: Any) -> np.ndarray:
        self.stream.synchronize()
        return buf.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue: Any) -> None:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=self.stream):
            enqueue()
        self.graph = graph

    def replay(self) -> None:
        with self.torch.cuda.stream(self.stream):
            self.graph.replay()

    def free(self, buf: Any) -> None:
        del buf


class _CudaPythonMemory:
    """Buffers and stream from cuda-python's runtime API."""

    def __init__(self, device: int) -> None:
        self.rt = cudart()
        _check(self.rt.cudaSetDevice(device))
        self.stream = _check(self.rt.cudaStreamCreate())
        self.graph_exec: Any = None

    @property
    def stream_handle(self) -> Any:
        return self.stream

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, tuple[int, ...], np.dtype]:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return (_check(self.rt.cudaMalloc(max(nbytes, 1))), shape, np.dtype(dtype))

    @staticmethod
    def ptr(buf: tuple) -> int:
        return int(buf[0])

    def upload(self, buf: tuple, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=buf[2])
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt.cudaMemcpyAsync(buf[0], host.ctypes.data, host.nbytes, kind, self.stream))
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def download(self, buf: tuple) -> np.ndarray:
        out = np.empty(buf[1], dtype=buf[2])
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt.cudaMemcpyAsync(out.ctypes.data, buf[0], out.nbytes, kind, self.stream))
        _check(self.rt.cudaStreamSynchronize(self.stream))
        return out

    def synchronize(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def capture(self, enqueue: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _check(self.rt.cudaStreamBeginCapture(self.stream, mode))
        enqueue()
        graph = _check(self.rt.cudaStreamEndCapture(self.stream))
        self.graph_exec = _check(self.rt.cudaGraphInstantiate(graph, 0))

    def replay(self) -> None:
        _check(self.rt.cudaGraphLaunch(self.graph_exec, self.stream))

    def free(self, buf: tuple) -> None:
        self.rt.cudaFree(buf[0])


class TrtRunner(RunnerBase):
    """Run a serialized TensorRT engine on float32 NCHW numpy batches (the Runner protocol). Unlike the other
    runners it deserializes the engine when constructed; close() releases it for good."""

    name = "trt"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: int = 0,
        cuda_graph: bool = False,
        memory: str = "auto",
        check_metadata: bool = True,
    ) -> None:
        trt = require_tensorrt("running TensorRT engines")
        self.trt = trt
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} {not_a_file(self.path)}; build it with `hrdeploy build BUNDLE`")
        self.device_info: DeviceInfo = require_gpu(device, "running a TensorRT engine")
        meta = read_engine_metadata(self.path)
        if check_metadata:
            check_compatibility(meta, trt_version=str(trt.__version__), device=self.device_info)
        self.metadata = meta
        self.memory = self._memory(memory, device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if meta and meta.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # version-compatible engines embed the lean runtime
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            built = f" (built with TensorRT {meta['tensorrt']} on {meta['gpu']})" if meta else ""
            raise UserError(
                f"TensorRT {trt.__version__} could not load {self.path.name}{built}: engines load only in the "
                f"TensorRT version and on the GPU model that built them; rebuild it here with `hrdeploy build`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if len(self.input_names) != 1:
            raise UserError(f"{self.path.name} has inputs {self.input_names}; hrdeploy runs single-input engines")
        self.input_name = self.input_names[0]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.cuda_graph = cuda_graph
        self._shape: tuple[int, ...] | None = None
        self._buffers: dict[str, Any] = {}
        self.active = True  # loaded when opened: a stage skips an engine this host cannot run before any work

    @staticmethod
    def _memory(kind: str, device: int) -> _TorchMemory | _CudaPythonMemory:
        if kind in ("auto", "torch"):
            try:
                import torch

                if torch.cuda.is_available():
                    return _TorchMemory(device)
            except ImportError:
                pass
            if kind == "torch":
                raise UserError("torch has no CUDA here; use memory='cuda-python' or install a CUDA build of torch")
        if cudart() is None:
            raise UserError("TensorRT needs device memory from torch (CUDA build) or cuda-python; "
                            "pip install 'hrdeploy[tensorrt]' (brings cuda-python)")
        return _CudaPythonMemory(device)

    def profile_range(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min shape, max shape) of the input in optimization profile 0."""
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return tuple(lo), tuple(hi)

    def _prepare(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        lo, hi = self.profile_range()
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise UserError(
                f"input shape {list(shape)} is outside the engine's profile {list(lo)}..{list(hi)}; rebuild with "
                "wider --min-batch/--max-batch"
            )
        for buf in self._buffers.values():
            self.memory.free(buf)
        self._buffers = {}
        self.context.set_input_shape(self.input_name, shape)
        for name in [self.input_name, *self.output_names]:
            tshape = tuple(self.context.get_tensor_shape(name))
            self._buffers[name] = self.memory.empty(tshape, self.dtypes[name])
            self.context.set_tensor_address(name, self.memory.ptr(self._buffers[name]))
        self._shape = shape
        if self.cuda_graph:
            # one plain enqueue first: TensorRT does its shape-dependent setup outside the capture
            self._enqueue()
            self.memory.synchronize()
            self.memory.capture(self._enqueue)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError(f"TensorRT failed to enqueue {self.path.name}")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=self.dtypes[self.input_name])
        self._prepare(tuple(int(d) for d in x.shape))
        self.memory.upload(self._buffers[self.input_name], x)
        if self.cuda_graph:
            self.memory.replay()
        else:
            self._enqueue()
        return {n: self.memory.download(self._buffers[n]).astype(np.float32, copy=False) for n in self.output_names}

    def _deactivate(self) -> None:
        for buf in self._buffers.values():
            self.memory.free(buf)
        self._buffers = {}
        self._shape = None
        self.context = None
        self.engine = None
