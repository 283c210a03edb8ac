"""Serving on Triton: the model repository config, a real PyTriton server, bad requests, load, shutdown.

Tests marked `serve` need the serve extra (nvidia-pytriton, tritonclient) and run in .venv-serve
(`make test-serve`, part of `make test`); the others run everywhere.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import Server, free_port, need_serve_extra, one_line_error, running
from tiny_bundles import tiny_bundle

from hrdeploy.cli import cli
from hrdeploy.errors import UserError
from hrdeploy.serve.batching import plan_batching, preferred_batch_sizes
from hrdeploy.serve.loadtest import average_batch, parse_target, run_load
from hrdeploy.serve.spec import ServeSpec, TensorSpec, serve_spec
from hrdeploy.serve.triton_repo import config_pbtxt

SIZE = (64, 64)  # lite_hrnet_18's smallest input (a multiple of its stride 32): heatmaps 16x16
MAX_BATCH = 4


def _spec(batch_range=(1, None), static_batch=None) -> ServeSpec:  # noqa: ANN001
    return ServeSpec(
        bundle=Path("b"), model="m", key="onnx", path=Path("b/model.onnx"), kind="onnx", precision="fp32",
        input=TensorSpec("input", "float32", (3, 64, 48)), outputs=(TensorSpec("heatmaps", "float32", (17, 16, 12)),),
        batch_range=batch_range, static_batch=static_batch,
    )


# ------------------------------------------------------------------------------------------ everywhere


def test_preferred_batch_sizes_are_powers_of_two_up_to_the_max() -> None:
    assert preferred_batch_sizes(8) == (2, 4, 8)
    assert preferred_batch_sizes(6) == (2, 4, 6)
    assert preferred_batch_sizes(1) == ()


def test_batching_follows_the_artifact_batch_range() -> None:
    assert plan_batching(_spec(), None, 100).max_batch_size == 8  # unbounded ONNX: the default
    assert plan_batching(_spec((1, 16)), None, 100).max_batch_size == 16  # an engine profile's max
    with pytest.raises(UserError, match="over the onnx profile's max batch 16"):
        plan_batching(_spec((1, 16)), 32, 100)
    with pytest.raises(UserError, match="rebuild the engine with --min-batch 1"):
        plan_batching(_spec((2, 8)), None, 100)
    static = _spec(None, 2)
    assert plan_batching(static, None, 100).max_batch_size == 0
    with pytest.raises(UserError, match="static batch of 2.*--dynamic-batch"):
        plan_batching(static, 4, 100)


def test_static_batch_config_has_the_full_shape_and_no_batcher() -> None:
    spec = _spec(None, 2)
    text = config_pbtxt(spec, "m", plan_batching(spec, None, 100), 1, "gpu")
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text
    assert "dims: [ 2, 3, 64, 48 ]" in text and "dims: [ 2, 17, 16, 12 ]" in text


def test_serve_spec_reads_the_bundle(tmp_path: Path) -> None:
    dyn = serve_spec(tiny_bundle(tmp_path / "dyn", with_fp16=True), "fp16")
    assert (dyn.model, dyn.key, dyn.kind, dyn.precision, dyn.path.name) == ("tiny", "fp16", "onnx", "fp16",
                                                                            "model.fp16.onnx")
    assert dyn.input == TensorSpec("input", "float32", (3, 64, 48))  # the fp16 graph keeps float32 I/O
    assert dyn.outputs == (TensorSpec("heatmaps", "float32", (17, 16, 12)),)
    assert (dyn.batch_range, dyn.static_batch) == ((1, None), None)
    static = serve_spec(tiny_bundle(tmp_path / "static", dynamic_batch=False))
    assert (static.batch_range, static.static_batch) == (None, 1)


def test_triton_repo_writes_config_and_model(cli_runner, tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "b", with_fp16=True)
    repo = tmp_path / "repo"
    result = cli_runner.invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(repo), "--artifact", "fp16",
                                     "--max-batch", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = (repo / "tiny_fp16" / "config.pbtxt").read_text()
    for line in ('name: "tiny_fp16"', 'backend: "onnxruntime"', "max_batch_size: 6", "data_type: TYPE_FP32",
                 "dims: [ 3, 64, 48 ]", "dims: [ 17, 16, 12 ]", "preferred_batch_size: [ 2, 4, 6 ]", "kind: KIND_CPU"):
        assert line in text, line
    assert (repo / "tiny_fp16" / "1" / "model.onnx").read_bytes() == (bundle / "model.fp16.onnx").read_bytes()
    assert sorted(p.name for p in (repo / "tiny_fp16").rglob("*")) == ["1", "config.pbtxt", "model.onnx"]


def test_triton_repo_for_an_engine_uses_its_profile(cli_runner, tmp_path: Path) -> None:
    from hrdeploy.bundle import Bundle

    bundle = tiny_bundle(tmp_path / "b")
    (bundle / "model.fp16.engine").write_bytes(b"plan bytes")  # triton-repo copies it; nothing here parses it
    profile = {"input": "input", "min": [1, 3, 64, 48], "opt": [4, 3, 64, 48], "max": [8, 3, 64, 48]}
    Bundle.open(bundle).record_artifact("engine_fp16", "model.fp16.engine", precision="fp16", profiles=[profile])
    repo = tmp_path / "repo"
    result = cli_runner.invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(repo), "--artifact",
                                     "engine_fp16"])
    assert result.exit_code == 0, result.output
    text = (repo / "tiny_engine_fp16" / "config.pbtxt").read_text()
    for line in ('backend: "tensorrt"', 'default_model_filename: "model.plan"', "max_batch_size: 8",
                 "preferred_batch_size: [ 2, 4, 8 ]", "kind: KIND_GPU"):
        assert line in text, line
    assert (repo / "tiny_engine_fp16" / "1" / "model.plan").read_bytes() == b"plan bytes"
    over = cli_runner.invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(tmp_path / "r2"), "--artifact",
                                   "engine_fp16", "--max-batch", "16"])
    one_line_error(over, "over the engine_fp16 profile's max batch 8")
    cpu = cli_runner.invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(tmp_path / "r3"), "--artifact",
                                  "engine_fp16", "--device", "cpu"])
    one_line_error(cpu, "runs on a GPU only")


@pytest.mark.parametrize(("args", "message"), [
    (["triton-repo", "{static}", "-o", "{tmp}/r", "--max-batch", "4"], "static batch of 1, so Triton cannot batch"),
    (["triton-repo", "{dyn}", "-o", "{tmp}/r", "--artifact", "int8"], r"has no .int8. artifact \(it has: onnx\)"),
    (["triton-repo", "{dyn}", "-o", "{tmp}/r", "--name", "../x"], "a Triton model name is a directory name"),
    (["triton-repo", "{dyn}", "-o", "{tmp}/r", "--instances", "0"], "--instances 0"),
    (["triton-repo", "{dyn}", "-o", "{tmp}/r", "--max-batch", "0"], "--max-batch 0"),
    (["triton-repo", "{tmp}/nope", "-o", "{tmp}/r"], "does not exist|not a bundle"),
    (["serve", "{static}", "--max-batch", "4"], "static batch of 1, so Triton cannot batch"),
    (["serve", "{dyn}", "--max-queue-delay-us", "-1"], "--max-queue-delay-us -1"),
])
def test_repo_and_serve_refuse_bad_input(cli_runner, tmp_path: Path, args: list[str], message: str) -> None:
    import re

    paths = {"static": tiny_bundle(tmp_path / "static", dynamic_batch=False), "dyn": tiny_bundle(tmp_path / "dyn"),
             "tmp": tmp_path}
    result = cli_runner.invoke(cli, [a.format(**paths) for a in args])
    one_line_error(result)
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "grpc://example.com:8001", "http://0.0.0.0:8000"])
def test_loadtest_refuses_hosts_that_are_not_loopback(cli_runner, url: str) -> None:
    result = cli_runner.invoke(cli, ["loadtest", url, "--model", "m", "--requests", "1"])
    one_line_error(result, "is not loopback")


@pytest.fixture
def metrics_server():  # noqa: ANN201
    """A loopback HTTP server with Triton-like /metrics and redirects; yields (base URL, paths it was asked)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            moves = {"/out": "http://10.255.255.1:8002/metrics", "/in": "/metrics",
                     "/file": "file:///etc/passwd"}
            if self.path in moves:
                self.send_response(302)
                self.send_header("Location", moves[self.path])
                self.end_headers()
                return
            body = b'nv_inference_exec_count{model="m",version="1"} 3\nnv_inference_count{model="m",version="1"} 6\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_follow_only_loopback_redirects_and_no_proxy(metrics_server, monkeypatch) -> None:
    """The loopback rule holds for every connection: a redirect off loopback is refused before it is
    followed, and an HTTP proxy from the environment is not used."""
    from hrdeploy.serve.loadtest import scrape_metrics

    base, asked = metrics_server
    want = {"nv_inference_exec_count": 3.0, "nv_inference_count": 6.0}
    assert scrape_metrics(f"{base}/metrics", "m") == want
    assert scrape_metrics(f"{base}/in", "m") == want  # a redirect that stays on loopback is followed
    for path, message in (("/out", "host '10.255.255.1' is not loopback"), ("/file", "is not (http|allowed)")):
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=message):
            scrape_metrics(f"{base}{path}", "m")
        assert time.perf_counter() - t0 < 2  # refused, not tried
    with pytest.raises(UserError, match="is not http"):
        scrape_metrics("file:///etc/passwd", "m")
    monkeypatch.setenv("http_proxy", base + "/proxy")
    monkeypatch.setenv("no_proxy", "")
    asked.clear()
    assert scrape_metrics(f"{base}/metrics", "m") == want and asked == ["/metrics"]  # straight, not via a proxy


@pytest.mark.serve
@pytest.mark.parametrize("kind", ["answers 200 to anything", "a file server (404)"])
def test_loadtest_of_a_plain_http_server_says_it_is_not_triton(metrics_server, cli_runner, tmp_path: Path,
                                                                 kind: str) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    need_serve_extra()
    files = None
    if kind.startswith("a file server"):
        (tmp_path / "www").mkdir()

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "www")))
        threading.Thread(target=files.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{files.server_address[1]}"
    else:
        base, _ = metrics_server
    try:
        result = cli_runner.invoke(cli, ["loadtest", base, "--model", "m", "--requests", "1",
                                         "--json", str(tmp_path / "load.json")])
    finally:
        if files is not None:
            files.shutdown()
            files.server_close()
    one_line_error(result, "answers, but not as a Triton server")
    assert "not ready yet" not in result.stderr and not (tmp_path / "load.json").exists()


def test_serve_without_the_extra_says_how_to_get_it(cli_runner, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("nvidia-pytriton is installed here; this checks the message without it")
    result = cli_runner.invoke(cli, ["serve", os.fspath(tiny_bundle(tmp_path / "b"))])
    one_line_error(result, "nvidia-pytriton is not installed", "hrdeploy[serve]", "/usr/bin/python3.11")


def test_loadtest_needs_exactly_one_budget(cli_runner) -> None:
    result = cli_runner.invoke(cli, ["loadtest", "http://127.0.0.1:9", "--model", "m"])
    one_line_error(result, "exactly one of --requests N or --duration SECONDS")
    assert parse_target("[::1]:8001").address == "[::1]:8001"


def test_run_load_counts_requests_failures_and_latency() -> None:
    calls = itertools.count(1)  # next() is atomic under the GIL

    def make_call():  # noqa: ANN202
        def call() -> None:
            n = next(calls)
            time.sleep(0.001)
            if n % 3 == 0:
                raise RuntimeError("every third call fails")
        return call

    r = run_load(make_call, 3, requests=30, warmup=0)
    assert (r.requests, r.failures) == (30, 10)
    assert r.errors == ["RuntimeError: every third call fails"]
    assert r.p50_ms is not None and r.p50_ms >= 1.0 and r.p99_ms >= r.p50_ms
    assert r.throughput_rps == pytest.approx(20 / r.seconds, rel=0.01)


def test_average_batch_is_requests_per_execution() -> None:
    before = {"nv_inference_exec_count": 10.0, "nv_inference_request_success": 10.0}
    after = {"nv_inference_exec_count": 30.0, "nv_inference_request_success": 70.0}
    assert average_batch(before, after) == 3.0
    assert average_batch(after, after) is None


# ------------------------------------------------------------------------------------------ serve extra


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lite_hrnet_18 at 64x64 with a dynamic batch (torchscript exporter: the quickest export)."""
    need_serve_extra()
    from hrdeploy.export import export_bundle

    out = tmp_path_factory.mktemp("serve") / "lite_hrnet_18"
    assert export_bundle("lite_hrnet_18", out, input_size=SIZE, dynamic_batch=True, exporter="torchscript").passed
    return out


@pytest.fixture(scope="module")
def server(small_bundle: Path):
    with running(Server(small_bundle, "--max-batch", str(MAX_BATCH), "--max-queue-delay-us", "2000",
                        "--instances", "2")) as s:
        yield s


@pytest.mark.serve
def test_server_is_ready_only_once_the_model_is(small_bundle: Path) -> None:
    """A readiness probe (GET /v2/health/ready) must not route traffic before the model can answer."""
    s = Server(small_bundle)
    base = f"http://127.0.0.1:{s.http}/v2"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert s.proc.poll() is None, s.proc.stdout.read()
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as r:
                    server_ready = r.status == 200
            except OSError:  # not listening yet, or 400 while it loads
                server_ready = False
            if server_ready:
                with urllib.request.urlopen(f"{base}/models/lite_hrnet_18/ready", timeout=2) as r:
                    assert r.status == 200
                break
            time.sleep(0.01)
        else:
            raise AssertionError("hrdeploy serve was not ready in time")
    finally:
        s.stop()


@pytest.mark.serve
def test_serve_refuses_a_port_in_use(small_bundle: Path, cli_runner) -> None:
    need_serve_extra()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli_runner.invoke(cli, ["serve", os.fspath(small_bundle), "--port", str(free_port()),
                                         "--grpc-port", str(port), "--metrics-port", str(free_port())])
    one_line_error(result, f"cannot listen on 127.0.0.1:{port} for gRPC", "--grpc-port")


@pytest.mark.serve
def test_repo_config_parses_and_matches_the_bundle(small_bundle: Path, cli_runner, tmp_path: Path) -> None:
    need_serve_extra()
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from hrdeploy.bundle import Bundle

    b = Bundle.open(small_bundle)
    repo = tmp_path / "repo"
    result = cli_runner.invoke(cli, ["triton-repo", os.fspath(small_bundle), "-o", os.fspath(repo), "--instances", "2",
                                     "--max-queue-delay-us", "500"])
    assert result.exit_code == 0, result.output
    config = text_format.Parse((repo / "lite_hrnet_18" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("lite_hrnet_18", "onnxruntime", 8)
    fp32 = model_config_pb2.DataType.Value("TYPE_FP32")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [(b.input.name, fp32, [3, *SIZE])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        (o.name, fp32, [o.channels, SIZE[0] // o.stride, SIZE[1] // o.stride]) for o in b.outputs]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    model_file = repo / "lite_hrnet_18" / "1" / "model.onnx"
    assert model_file.read_bytes() == b.artifact("onnx").path.read_bytes()
    again = cli_runner.invoke(cli, ["triton-repo", os.fspath(small_bundle), "-o", os.fspath(repo)])
    one_line_error(again, "exists; pass --force")


def _infer(client_mod, port: int, x: np.ndarray, datatype: str = "FP32"):  # noqa: ANN001, ANN202
    client = client_mod.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        inp = client_mod.InferInput("input", list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        return client.infer("lite_hrnet_18", [inp]).as_numpy("heatmaps")
    finally:
        client.close()


@pytest.mark.serve
def test_served_heatmaps_equal_onnxruntime_and_config_matches(server: Server, small_bundle: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from hrdeploy.runtime.onnxruntime import OrtRunner

    x = np.random.default_rng(0).standard_normal((3, 3, *SIZE)).astype(np.float32)
    want = OrtRunner(small_bundle / "model.onnx", threads=1).run(x)["heatmaps"]
    for client_mod, port in ((httpclient, server.http), (grpcclient, server.grpc)):
        got = _infer(client_mod, port, x)
        assert got.shape == want.shape == (3, 17, SIZE[0] // 4, SIZE[1] // 4)
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
    try:
        config = client.get_model_config("lite_hrnet_18")
    finally:
        client.close()
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["dims"] == [3, *SIZE] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]


@pytest.mark.serve
@pytest.mark.parametrize("shape,datatype,needle", [
    ((1, 3, 32, 32), "FP32", "unexpected shape for input 'input'"),
    ((1, 3, *SIZE), "FP64", "data-type is 'FP64', but model 'lite_hrnet_18' expects 'FP32'"),
    ((MAX_BATCH + 1, 3, *SIZE), "FP32", f"must be <= {MAX_BATCH}"),
])
def test_bad_requests_get_triton_errors_and_the_server_keeps_serving(
    server: Server, shape: tuple[int, ...], datatype: str, needle: str
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    x = np.zeros(shape, dtype=np.float64 if datatype == "FP64" else np.float32)
    with pytest.raises(InferenceServerException) as err:
        _infer(httpclient, server.http, x, datatype)
    assert needle in err.value.message(), err.value.message()
    ok = _infer(httpclient, server.http, np.zeros((1, 3, *SIZE), np.float32))
    assert ok.shape == (1, 17, SIZE[0] // 4, SIZE[1] // 4) and np.isfinite(ok).all()


@pytest.mark.serve
def test_short_load_test_has_no_failed_requests(server: Server, cli_runner, tmp_path: Path) -> None:
    out = tmp_path / "lt.json"
    result = cli_runner.invoke(cli, [
        "loadtest", f"grpc://127.0.0.1:{server.grpc}", "--model", "lite_hrnet_18", "--concurrency", "1,4",
        "--requests", "24", "--metrics-url", f"http://127.0.0.1:{server.metrics}/metrics", "--json", os.fspath(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [(r["concurrency"], r["requests"], r["failures"]) for r in report["results"]] == [(1, 24, 0), (4, 24, 0)]
    first = report["results"][0]
    assert first["avg_batch"] == 1.0  # one client waits for each answer: nothing to batch with
    assert 1.0 <= report["results"][1]["avg_batch"] <= MAX_BATCH
    assert first["p50_ms"] <= first["p99_ms"] and first["throughput_rps"] > 0
    assert "| 4 | 24 | 0 |" in out.with_suffix(".md").read_text()
    over = cli_runner.invoke(cli, ["loadtest", f"http://127.0.0.1:{server.http}", "--model", "lite_hrnet_18",
                                   "--batch", str(MAX_BATCH + 1), "--requests", "1", "--json", os.fspath(out)])
    one_line_error(over, f"--batch {MAX_BATCH + 1} is over the model's max_batch_size {MAX_BATCH}")
    closed = cli_runner.invoke(cli, ["loadtest", f"grpc://127.0.0.1:{free_port()}", "--model", "lite_hrnet_18",
                                     "--requests", "1", "--json", os.fspath(out)])
    one_line_error(closed, "cannot reach grpc://127.0.0.1:")


@pytest.mark.serve
def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    code, out = server.stop(signal.SIGTERM)
    assert code == 0, out
    assert "stopped" in out
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/health/live", timeout=2)


@pytest.mark.serve
def test_static_batch_bundle_is_served_whole_and_ctrl_c_exits_130(tmp_path: Path) -> None:
    need_serve_extra()
    import tritonclient.http as httpclient

    from hrdeploy.runtime.onnxruntime import OrtRunner

    bundle = tiny_bundle(tmp_path / "static", name="lite_hrnet_18", dynamic_batch=False)
    s = Server(bundle)
    try:
        s.wait_ready()
        x = np.random.default_rng(1).standard_normal((1, 3, 64, 48)).astype(np.float32)
        got = _infer(httpclient, s.http, x)
        want = OrtRunner(bundle / "model.onnx", threads=1).run(x)["heatmaps"]
        assert got.shape == want.shape == (1, 17, 16, 12)
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
    finally:
        code, out = s.stop(signal.SIGINT)
    assert code == 130, out
    assert "static batch 1, no batching" in out and "stopped" in out


def test_a_start_is_retried_when_tritonserver_logged_the_handshake_race(tmp_path: Path) -> None:
    """The race shows in the error, or only in tritonserver's log when it exited while loading the model."""
    import threading

    from hrdeploy.serve.server import HANDSHAKE_FAILURE, _Launch

    log = tmp_path / "tritonserver.log"
    launch = _Launch(None, tmp_path, log, threading.Event())  # type: ignore[arg-type]  # models: not used here
    timeout = TimeoutError("Triton Inference Server is not ready after timeout.")
    assert not launch.handshake_failed(timeout)  # no log yet
    assert launch.handshake_failed(RuntimeError(f"Model initialize error: in {HANDSHAKE_FAILURE}"))
    log.write_text('E1206 failed to load: ConnectionRefusedError: [Errno 111] Connection refused\n')
    assert not launch.handshake_failed(timeout)
    log.write_text(f'I1206 "Failed to initialize Python stub: ... line 550, in {HANDSHAKE_FAILURE}\\n"\n')
    assert launch.handshake_failed(timeout)
    assert not launch.handshake_failed(timeout, logged=log.stat().st_size)  # logged by an earlier attempt
    work = tmp_path / "work"  # without --log-file, tritonserver logs into the work folder
    work.mkdir()
    default = _Launch(None, work, None, threading.Event())  # type: ignore[arg-type]
    assert not default.handshake_failed(timeout)
    (work / "tritonserver.log").write_text(log.read_text())
    assert default.handshake_failed(timeout)


def test_kill_strays_stops_only_programs_run_from_the_folder(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from hrdeploy.serve.server import kill_strays

    ours, other = tmp_path / "work", tmp_path / "elsewhere"
    procs = []
    for folder in (ours, other):
        folder.mkdir()
        program = folder / "sleeper"
        shutil.copy("/bin/sleep", program)
        procs.append(subprocess.Popen([program, "60"]))
    try:
        assert kill_strays(ours) == [procs[0].pid]
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
        assert procs[1].poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
