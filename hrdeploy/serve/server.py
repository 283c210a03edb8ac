"""Serve one artifact on a real Triton Inference Server through NVIDIA PyTriton.

PyTriton starts `tritonserver` (HTTP, gRPC, Prometheus metrics, health endpoints, Triton's dynamic batcher)
with a Python-backend model that hands each batch to hrdeploy's runner in this process: onnxruntime for ONNX
artifacts, TensorRT for engines. One runner per model instance.

With a keypoint pipeline (hrdeploy.serve.pipeline) a second model, NAME_pipeline, takes a photo and its person
boxes: each of its instances decodes and crops one request in this process, sends the crops to the network
model through Triton over gRPC (so Triton's dynamic batcher puts crops of several requests into one network
run, as in the ensemble of `triton-repo --pipeline`) and decodes the heatmaps into keypoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.runtime.base import Runner
from hrdeploy.serve.batching import Batching
from hrdeploy.serve.pipeline import BOXES, IMAGE, KEYPOINTS, PipelineConfig, pipeline_model_name
from hrdeploy.serve.spec import ServeSpec

if TYPE_CHECKING:
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig

EXIT_TIMEOUT_S = 5  # how long tritonserver waits for in-flight requests and open connections when stopping
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 0}
# With several instances, PyTriton's Python-backend stubs start in parallel: instance 0 opens a handshake socket
# and the others connect to it within 1 s (pytriton.proxy.communication.get_config_from_handshake_server). On a
# busy CPU they can time out, or connect between the socket's bind and listen (ConnectionRefusedError); both fail
# inside that function (named in PyTriton's error, or only in tritonserver's log when tritonserver exits on the
# failed model load and PyTriton's wait for it times out), and a fresh start usually succeeds.
HANDSHAKE_FAILURE = "get_config_from_handshake_server"
START_ATTEMPTS = 5
PYTHON_NOTE = ("PyTriton's Python backend needs a venv made with Debian's /usr/bin/python3.11, "
               "e.g. `make setup-serve` (.venv-serve)")


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def check_ports_free(endpoints: Endpoints) -> None:
    """UserError naming the first HTTP/gRPC/metrics port that something on `host` already uses."""
    ports = (("HTTP", "--port", endpoints.http_port), ("gRPC", "--grpc-port", endpoints.grpc_port),
             ("metrics", "--metrics-port", endpoints.metrics_port))
    if len({p for _, _, p in ports}) < len(ports):
        raise UserError(f"the HTTP, gRPC and metrics ports must differ (got {', '.join(str(p) for *_, p in ports)})")
    for what, option, port in ports:
        with socket.socket(socket.AF_INET6 if ":" in endpoints.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds: TIME_WAIT is fine
            try:
                s.bind((endpoints.host, port))
            except OSError as err:
                raise UserError(f"cannot listen on {endpoints.host}:{port} for {what} ({err.strerror}); "
                                f"pick a free port with {option}") from err


def make_infer_func(spec: ServeSpec, batching: Batching, runner: Runner) -> Callable:
    """A PyTriton inference callable that runs `runner` on each batch Triton forms (or each whole request)."""
    from pytriton.decorators import batch

    in_name = spec.input.name

    if batching.max_batch_size > 0:
        @batch
        def infer(**inputs):  # noqa: ANN003, ANN202 - PyTriton passes one stacked array per input name
            return runner.run(inputs[in_name])

        return infer

    def infer_static(requests):  # noqa: ANN001, ANN202 - list of pytriton Request, each a whole fixed-shape tensor
        return [runner.run(r[in_name]) for r in requests]

    return infer_static


def _loopback(host: str) -> str:
    """An address of this server to connect to: a wildcard listen address becomes loopback."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def make_pipeline_func(spec: ServeSpec, cfg: PipelineConfig, network: str, endpoints: Endpoints) -> Callable:
    """A PyTriton inference callable for the keypoint pipeline (one per instance, one request per call).

    Decode and crop (hrdeploy.pose), then the crops go to model `network` on this server over gRPC, so that
    Triton's dynamic batcher batches them with other requests' crops, then decode the heatmaps.
    """
    import tritonclient.grpc as grpcclient

    from hrdeploy.serve.loadtest import Target
    from hrdeploy.serve.pipeline import BOXES, IMAGE, KEYPOINTS, postprocess_request, preprocess_request

    address = Target("grpc", _loopback(endpoints.host), endpoints.grpc_port).address
    in_name, out_name = spec.input.name, spec.outputs[0].name
    local = threading.local()  # a gRPC client per calling thread

    def heatmaps(crops) -> object:  # noqa: ANN001 - float32 [N, 3, H, W]
        if getattr(local, "client", None) is None:
            local.client = grpcclient.InferenceServerClient(address)
        x = grpcclient.InferInput(in_name, list(crops.shape), "FP32")
        x.set_data_from_numpy(crops)
        return local.client.infer(network, [x], outputs=[grpcclient.InferRequestedOutput(out_name)]).as_numpy(out_name)

    def infer(requests):  # noqa: ANN001, ANN202 - list of pytriton Request (no batching: one per call)
        answers = []
        for r in requests:
            crops, transforms = preprocess_request(r[IMAGE], r[BOXES], cfg)
            answers.append({KEYPOINTS: postprocess_request(heatmaps(crops), transforms, cfg)})
        return answers

    return infer


def serve(
    spec: ServeSpec,
    name: str,
    batching: Batching,
    endpoints: Endpoints,
    *,
    instances: int = 1,
    threads: int | None = None,
    log_file: Path | None = None,
    on_ready: Callable[[Endpoints], None] = lambda e: None,
    pipeline: PipelineConfig | None = None,
    pipeline_instances: int = 4,
) -> int:
    """Serve until SIGINT (returns 130) or SIGTERM (returns 0); tritonserver is always stopped.

    With `pipeline`, also serve the keypoint pipeline as NAME_pipeline with `pipeline_instances` instances
    (requests in flight to the network at once). A UserError when PyTriton is missing or tritonserver dies
    while serving.
    """
    _require_pytriton()
    from hrdeploy.runtime.factory import open_runner

    if instances < 1:
        raise UserError(f"--instances {instances}: give 1 or more")
    if pipeline_instances < 1:
        raise UserError(f"--pipeline-instances {pipeline_instances}: give 1 or more")
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    check_ports_free(endpoints)
    with _StopSignals() as signals, tempfile.TemporaryDirectory(prefix="hrdeploy-serve-") as work, \
            contextlib.ExitStack() as stack:
        # Runners first, so the stack stops tritonserver before it closes them.
        runners = [stack.enter_context(open_runner(spec.path, threads=threads)) for _ in range(instances)]
        models = _Models(spec, name, batching, endpoints, runners, pipeline, pipeline_instances)
        launch = _Launch(models, Path(work), log_file, signals.stop)
        stack.callback(kill_strays, Path(work))  # after tritonserver stops: a Python-backend stub can outlive it
        triton = launch.start()
        stack.callback(triton.stop)
        if not signals.stop.is_set():
            on_ready(endpoints)
        launch.watch(triton)
    return signals.exit_code


def kill_strays(folder: Path) -> list[int]:
    """SIGKILL the processes running a program from `folder` (a work folder of ours): Python-backend stubs still
    running after tritonserver stopped or exited on a failed model load. Returns their pids. Reads Linux's
    /proc, as tritonserver runs only there (psutil would be a dependency for this one scan)."""
    prefix = os.fsencode(folder.resolve()) + b"/"
    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            program = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
            if program.startswith(prefix):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return killed


def _require_pytriton() -> None:
    """A UserError saying how to install the serve extra when PyTriton is missing."""
    try:
        import pytriton.model_config  # noqa: F401
        import pytriton.triton  # noqa: F401
    except ImportError as err:
        raise missing_dependency("nvidia-pytriton", "serve", f"hrdeploy serve; {PYTHON_NOTE}") from err


class _StopSignals:
    """While entered, SIGINT and SIGTERM set `stop` instead of interrupting; the previous handlers come back on
    exit. `exit_code` is that of the first signal received."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
        self._previous = {s: signal.signal(s, self._on_signal) for s in _SIGNAL_EXIT}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        self.stop.set()

    @property
    def exit_code(self) -> int:
        return _SIGNAL_EXIT[self.received[0]]


def _network_config(batching: Batching) -> ModelConfig:
    """The network model's config: Triton's dynamic batcher as planned, or no batching for a static batch."""
    from pytriton.model_config import DynamicBatcher, ModelConfig

    if batching.max_batch_size == 0:
        return ModelConfig(batching=False)
    return ModelConfig(max_batch_size=batching.max_batch_size, batcher=DynamicBatcher(
        max_queue_delay_microseconds=batching.max_queue_delay_us, preferred_batch_size=list(batching.preferred)))


@dataclass(frozen=True)
class _Models:
    """What tritonserver serves: the network model `name` (one runner per instance) and, with `pipeline`, the
    keypoint pipeline NAME_pipeline with `pipeline_instances` instances."""

    spec: ServeSpec
    name: str
    batching: Batching
    endpoints: Endpoints
    runners: list[Runner]
    pipeline: PipelineConfig | None
    pipeline_instances: int

    def bind(self, triton: Triton) -> None:
        """Write the models into `triton`'s model store (strict: their configs must be what it loads)."""
        from pytriton.model_config import ModelConfig, Tensor

        static = self.batching.max_batch_size == 0

        def tensor(t) -> Tensor:  # noqa: ANN001 - TensorSpec
            shape = self.spec.whole_shape(t) if static else t.dims
            return Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=tuple(shape))

        triton.bind(model_name=self.name,
                    infer_func=[make_infer_func(self.spec, self.batching, r) for r in self.runners],
                    inputs=[tensor(self.spec.input)], outputs=[tensor(t) for t in self.spec.outputs],
                    config=_network_config(self.batching), strict=True)
        if self.pipeline is not None:
            triton.bind(
                model_name=pipeline_model_name(self.name),
                infer_func=[make_pipeline_func(self.spec, self.pipeline, self.name, self.endpoints)
                            for _ in range(self.pipeline_instances)],
                inputs=[Tensor(name=IMAGE, dtype=np.bytes_, shape=(1,)),
                        Tensor(name=BOXES, dtype=np.float32, shape=(-1, 4))],
                outputs=[Tensor(name=KEYPOINTS, dtype=np.float32, shape=(-1, self.pipeline.num_keypoints, 3))],
                config=ModelConfig(batching=False), strict=True)


@dataclass(frozen=True)
class _Launch:
    """Starting tritonserver for `models` in the work folder `work`, and watching it until `stop` is set."""

    models: _Models
    work: Path
    log_file: Path | None
    stop: threading.Event

    @property
    def where(self) -> Path | str:
        """Where tritonserver's log is, for error messages."""
        return self.log_file or "rerun with --log-file FILE"

    def start(self) -> Triton:
        """A running tritonserver; a start that fails in the Python backend's handshake race is tried again."""
        attempt = 1
        while True:
            logged = self._log_size()
            try:
                return self._start_once(attempt)
            except Exception as err:  # PyTriton raises its own, tritonclient's and socket errors here
                if not self.handshake_failed(err, logged) or attempt >= START_ATTEMPTS or self.stop.is_set():
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    raise UserError(f"tritonserver could not serve {self.models.name!r}: {first}; see its log "
                                    f"({self.where}); {PYTHON_NOTE}") from err
            logging.getLogger("hrdeploy.serve").warning(
                "the Python backend's handshake with PyTriton failed (a race at start); retrying")
            attempt += 1

    @property
    def log(self) -> Path:
        """tritonserver's log: --log-file, else one in the work folder."""
        return self.log_file or self.work / "tritonserver.log"

    def _log_size(self) -> int:
        return self.log.stat().st_size if self.log.is_file() else 0

    def handshake_failed(self, err: BaseException, logged: int = 0) -> bool:
        """Whether a failed start is PyTriton's handshake race: named in the error, or in what tritonserver logged
        after the first `logged` bytes, when it gave up loading the model and exited (PyTriton then only reports
        its wait timing out)."""
        if HANDSHAKE_FAILURE in str(err):
            return True
        if not self.log.is_file():
            return False
        with self.log.open("rb") as f:
            f.seek(logged if logged <= self._log_size() else 0)  # a log started afresh is read whole
            return HANDSHAKE_FAILURE.encode() in f.read()

    def _start_once(self, attempt: int) -> Triton:
        """Write the models into the model store (bind), then start tritonserver (run()), which loads them
        before it answers: its readiness (/v2/health/ready) then means the model is ready, so a readiness
        probe never routes traffic to a server without it. Stopped again on failure."""
        from pytriton.triton import Triton, TritonLifecyclePolicy

        model_first = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        triton = Triton(config=self._config(), workspace=self.work / f"pytriton-{attempt}",
                        triton_lifecycle_policy=model_first)
        try:
            self.models.bind(triton)
            if not self.stop.is_set():
                triton.run()
        except BaseException:
            triton.stop()
            kill_strays(self.work / f"pytriton-{attempt}")
            raise
        return triton

    def _config(self) -> TritonConfig:
        """tritonserver's listen addresses and ports, its stop timeout and its log file."""
        from pytriton.triton import TritonConfig

        e = self.models.endpoints
        return TritonConfig(
            http_address=e.host, http_port=e.http_port, grpc_address=e.host, grpc_port=e.grpc_port,
            metrics_address=e.host, metrics_port=e.metrics_port, allow_gpu_metrics=False,
            exit_timeout_secs=EXIT_TIMEOUT_S, log_file=self.log,
        )

    def watch(self, triton: Triton) -> None:
        """Return once `stop` is set; a UserError if tritonserver dies before."""
        while not self.stop.wait(0.5):
            if not triton.is_alive():
                raise UserError(f"tritonserver stopped unexpectedly; see its log ({self.where})")
