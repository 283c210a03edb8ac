"""Helpers shared by the serving tests: one-line CLI errors, free ports, an `hrdeploy serve` subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# `hrdeploy serve` ready within this: a start that loses PyTriton's instance handshake race can first wait out
# PyTriton's own 120 s startup timeout before hrdeploy starts tritonserver again.
START_TIMEOUT_S = 300.0


def one_line_error(result, *needles: str) -> None:  # noqa: ANN001 - a click.testing.Result
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def need_serve_extra() -> None:
    for module in ("pytriton", "tritonclient.grpc", "tritonclient.http"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed (the serve extra; `make test-serve` sets up .venv-serve)")


@contextlib.contextmanager
def running(server):  # noqa: ANN001, ANN201 - a Server or BundledTriton
    """`server` once ready; stopped when the block ends, however it ends."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hrdeploy serve BUNDLE` on free loopback ports in a subprocess; `wait_ready` waits for `model`."""

    def __init__(self, bundle: Path, *extra: str, model: str = "lite_hrnet_18") -> None:
        self.model = model
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.log = bundle.parent / f"tritonserver-{self.http}.log"
        cmd = [sys.executable, "-m", "hrdeploy.cli", "serve", os.fspath(bundle), "--host", "127.0.0.1",
               "--port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               "--threads", "1", "--log-file", os.fspath(self.log), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        ready = f"http://127.0.0.1:{self.http}/v2/models/{self.model}/ready"  # the model, not only the server
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text()[-3000:] if self.log.is_file() else ""
                raise AssertionError(f"hrdeploy serve exited {self.proc.returncode}: {self.proc.stdout.read()}\n{log}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("hrdeploy serve was not ready in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


class BundledTriton:
    """PyTriton's own tritonserver binary (Python backend only) serving a model repository in a subprocess.

    PyTriton ships tritonserver with its Python backend and one stub per Python version; like PyTriton, copy
    the server and this Python's stub into `work`, and let the stub import this environment's packages and
    hrdeploy (PYTHONPATH: site-packages does not run the editable install's .pth there).
    """

    def __init__(self, repo: Path, work: Path) -> None:
        import shutil

        import pytriton

        import hrdeploy

        root = Path(pytriton.__file__).parent
        dist = work / "tritonserver"
        shutil.copytree(root / "tritonserver", dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy(root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                    dist / "backends" / "python")
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.log = work / "tritonserver.log"
        env = dict(os.environ, LD_LIBRARY_PATH=os.fspath(root.parent / "nvidia_pytriton.libs"),
                   PYTHONPATH=os.pathsep.join([os.fspath(root.parent), os.fspath(Path(hrdeploy.__file__).parents[1])]),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        cmd = [os.fspath(dist / "bin" / "tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={dist / 'backends'}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
               "--metrics-address=127.0.0.1", f"--http-port={self.http}", f"--grpc-port={self.grpc}",
               f"--metrics-port={self.metrics}", "--allow-gpu-metrics=false", "--exit-timeout-secs=5"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tritonserver exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"tritonserver was not ready in time: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
