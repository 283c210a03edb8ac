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
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.runtime.base import Runner
from hrdeploy.serve.batching import Batching
from hrdeploy.serve.pipeline import PipelineConfig
from hrdeploy.serve.spec import ServeSpec

EXIT_TIMEOUT_S = 5  # how long tritonserver waits for in-flight requests and open connections when stopping
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 0}
# With several instances, PyTriton's Python-backend stubs start in parallel: instance 0 opens a handshake socket
# and the others connect to it within 1 s (pytriton.proxy.communication.get_config_from_handshake_server). On a
# busy CPU they can time out, or connect between the socket's bind and listen (ConnectionRefusedError); both fail
# inside that function, and a fresh start usually succeeds.
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
    try:
        import numpy as np
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy
    except ImportError as err:
        raise missing_dependency("nvidia-pytriton", "serve", f"hrdeploy serve; {PYTHON_NOTE}") from err
    from hrdeploy.runtime.factory import open_runner
    if instances < 1:
        raise UserError(f"--instances {instances}: give 1 or more")
    if pipeline_instances < 1:
        raise UserError(f"--pipeline-instances {pipeline_instances}: give 1 or more")
    logging.getLogger("pytriton").setLevel(logging.WARNING)

    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    check_ports_free(endpoints)
    previous = {s: signal.signal(s, on_signal) for s in _SIGNAL_EXIT}
    static = batching.max_batch_size == 0

    def tensor(t) -> Tensor:  # noqa: ANN001 - TensorSpec
        shape = spec.whole_shape(t) if static else t.dims
        return Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=tuple(shape))

    if static:
        config = ModelConfig(batching=False)
    else:
        config = ModelConfig(max_batch_size=batching.max_batch_size, batcher=DynamicBatcher(
            max_queue_delay_microseconds=batching.max_queue_delay_us, preferred_batch_size=list(batching.preferred)))
    try:
        with tempfile.TemporaryDirectory(prefix="hrdeploy-serve-") as work, contextlib.ExitStack() as stack:
            triton_config = TritonConfig(
                http_address=endpoints.host, http_port=endpoints.http_port, grpc_address=endpoints.host,
                grpc_port=endpoints.grpc_port, metrics_address=endpoints.host, metrics_port=endpoints.metrics_port,
                allow_gpu_metrics=False, exit_timeout_secs=EXIT_TIMEOUT_S,
                log_file=log_file or Path(work) / "tritonserver.log",
            )
            where = log_file or "rerun with --log-file FILE"
            # Runners first, so the stack stops tritonserver before it closes them.
            runners = [stack.enter_context(open_runner(spec.path, threads=threads)) for _ in range(instances)]

            def start(attempt: int) -> Triton:
                """Write the model into the model store (bind), then start tritonserver (run()), which loads it
                before it answers: its readiness (/v2/health/ready) then means the model is ready, so a
                readiness probe never routes traffic to a server without it. Stopped again on failure."""
                model_first = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
                triton = Triton(config=triton_config, workspace=Path(work) / f"pytriton-{attempt}",
                                triton_lifecycle_policy=model_first)
                try:
                    triton.bind(model_name=name, infer_func=[make_infer_func(spec, batching, r) for r in runners],
                                inputs=[tensor(spec.input)], outputs=[tensor(t) for t in spec.outputs],
                                config=config, strict=True)
                    if pipeline is not None:
                        from hrdeploy.serve.pipeline import BOXES, IMAGE, KEYPOINTS, pipeline_model_name

                        triton.bind(
                            model_name=pipeline_model_name(name),
                            infer_func=[make_pipeline_func(spec, pipeline, name, endpoints)
                                        for _ in range(pipeline_instances)],
                            inputs=[Tensor(name=IMAGE, dtype=np.bytes_, shape=(1,)),
                                    Tensor(name=BOXES, dtype=np.float32, shape=(-1, 4))],
                            outputs=[Tensor(name=KEYPOINTS, dtype=np.float32, shape=(-1, pipeline.num_keypoints, 3))],
                            config=ModelConfig(batching=False), strict=True)
                    if not stop.is_set():
                        triton.run()
                except BaseException:
                    triton.stop()
                    raise
                return triton

            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    triton = start(attempt)
                    break
                except Exception as err:  # PyTriton raises its own, tritonclient's and socket errors here
                    if HANDSHAKE_FAILURE in str(err) and attempt < START_ATTEMPTS and not stop.is_set():
                        logging.getLogger("hrdeploy.serve").warning(
                            "the Python backend's handshake with PyTriton failed (a race at start); retrying")
                        continue
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    raise UserError(f"tritonserver could not serve {name!r}: {first}; see its log ({where}); "
                                    f"{PYTHON_NOTE}") from err
            stack.callback(triton.stop)
            if not stop.is_set():
                on_ready(endpoints)
            while not stop.wait(0.5):
                if not triton.is_alive():
                    raise UserError(f"tritonserver stopped unexpectedly; see its log ({where})")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _SIGNAL_EXIT[received[0]]
