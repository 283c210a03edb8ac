"""TrtRunner's logic (binding by name, profiles, CUDA-graph capture, metadata checks) against a fake TensorRT.

The fake engine computes 2*x on host arrays that stand in for device buffers; the real thing runs in
tests/test_gpu_tensorrt.py on a GPU host.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import hrdeploy.runtime.tensorrt as trt_runtime
from hrdeploy.engine.device import DeviceInfo
from hrdeploy.engine.engine_info import FORMAT
from hrdeploy.errors import UserError

GPU = DeviceInfo(0, "NVIDIA A10", "8.6")
INPUT, OUTPUT = "input", "heatmaps"


class FakeMemory:
    def __init__(self) -> None:
        self.by_ptr: dict[int, np.ndarray] = {}
        self.stream_handle = 1234
        self.events: list[str] = []
        self.graph = None

    def empty(self, shape, dtype):
        buf = np.zeros(shape, dtype)
        self.by_ptr[id(buf)] = buf
        return buf

    @staticmethod
    def ptr(buf):
        return id(buf)

    def upload(self, buf, host):
        buf[...] = host

    def download(self, buf):
        return buf.copy()

    def synchronize(self):
        self.events.append("sync")

    def capture(self, enqueue):
        self.events.append("capture")
        self.graph = enqueue

    def replay(self):
        self.events.append("replay")
        self.graph()

    def free(self, buf):
        self.by_ptr.pop(id(buf), None)


class FakeContext:
    def __init__(self, memory: FakeMemory) -> None:
        self.memory, self.shape, self.addresses, self.enqueues = memory, None, {}, 0

    def set_input_shape(self, name, shape):
        assert name == INPUT
        self.shape = tuple(shape)

    def get_tensor_shape(self, name):
        return self.shape if name == INPUT else (self.shape[0], 2, self.shape[2] // 2, self.shape[3] // 2)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        assert stream == self.memory.stream_handle
        self.enqueues += 1
        self.memory.events.append("enqueue")
        x = self.memory.by_ptr[self.addresses[INPUT]]
        self.memory.by_ptr[self.addresses[OUTPUT]][...] = 2 * x[:, :2, ::2, ::2]
        return True


def _fake_trt(memory: FakeMemory, version="10.8.0.43"):
    modes = SimpleNamespace(INPUT="in", OUTPUT="out")

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return [OUTPUT, INPUT][i]  # engines need not list the input first

        def get_tensor_mode(self, name):
            return modes.INPUT if name == INPUT else modes.OUTPUT

        def get_tensor_dtype(self, name):
            return "f32"

        def get_tensor_profile_shape(self, name, index):
            return (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)

        def create_execution_context(self):
            self.context = FakeContext(memory)
            return self.context

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"ENGINE" else None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, TensorIOMode=modes,
                           nptype=lambda dtype: np.float32)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    memory = FakeMemory()
    monkeypatch.setattr(trt_runtime, "require_tensorrt", lambda purpose="": _fake_trt(memory))
    monkeypatch.setattr(trt_runtime, "require_gpu", lambda index=0, purpose="": GPU)
    monkeypatch.setattr(trt_runtime.TrtRunner, "_memory", staticmethod(lambda kind, device: memory))
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"ENGINE")
    return SimpleNamespace(memory=memory, engine=engine)


def test_runs_by_tensor_name_and_reallocates_only_for_new_shapes(fake):
    runner = trt_runtime.TrtRunner(fake.engine)
    assert (runner.input_name, runner.output_names, runner.name) == (INPUT, [OUTPUT], "trt")
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float64).reshape(2, 3, 8, 8)
    out = runner.run(x)[OUTPUT]
    assert out.dtype == np.float32 and out.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(out, 2 * x[:, :2, ::2, ::2].astype(np.float32))
    buffers = dict(runner._buffers)
    runner.run(x + 1)
    assert runner._buffers == buffers  # same shape: same buffers
    assert runner.run(np.ones((3, 3, 8, 8), np.float32))[OUTPUT].shape == (3, 2, 4, 4)


def test_shapes_outside_the_profile_are_user_errors(fake):
    runner = trt_runtime.TrtRunner(fake.engine)
    with pytest.raises(UserError, match=r"outside the engine's profile \[1, 3, 8, 8\]..\[4, 3, 8, 8\]"):
        runner.run(np.zeros((5, 3, 8, 8), np.float32))
    with pytest.raises(UserError, match="outside"):
        runner.run(np.zeros((1, 3, 16, 16), np.float32))


def test_cuda_graph_captures_after_one_plain_enqueue_then_replays(fake):
    runner = trt_runtime.TrtRunner(fake.engine, cuda_graph=True)
    x = np.ones((2, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(runner.run(x)[OUTPUT], 2 * np.ones((2, 2, 4, 4)))
    np.testing.assert_array_equal(runner.run(3 * x)[OUTPUT], 6 * np.ones((2, 2, 4, 4)))
    assert fake.memory.events == ["enqueue", "sync", "capture", "replay", "enqueue", "replay", "enqueue"]


def test_metadata_mismatch_and_undeserializable_engines(fake):
    meta = {"format": FORMAT, "engine": fake.engine.name, "tensorrt": "10.3.0.26", "gpu": GPU.name,
            "compute_capability": "8.6", "precision": "fp32"}
    sidecar = fake.engine.with_name(fake.engine.name + ".json")
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="built with TensorRT 10.3.0.26 and this host has TensorRT 10.8.0.43"):
        trt_runtime.TrtRunner(fake.engine)
    assert trt_runtime.TrtRunner(fake.engine, check_metadata=False).metadata == meta
    sidecar.unlink()
    fake.engine.write_bytes(b"garbage")
    with pytest.raises(UserError, match="could not load model.fp32.engine.*rebuild it here"):
        trt_runtime.TrtRunner(fake.engine)
    with pytest.raises(UserError, match="does not exist"):
        trt_runtime.TrtRunner(fake.engine.with_name("nope.engine"))
