"""`hrdeploy build`: --print-trtexec without TensorRT, error paths, and the build flow around TensorRT.

The TensorRT calls themselves run only on a GPU host (tests/test_gpu_tensorrt.py); here they are replaced
by fakes so that what hrdeploy does around them (plan, precision ONNX, atomic engine write, engine.json,
manifest record, the Polygraphy configuration it asks for) is checked on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_bundles import tiny_bundle

import hrdeploy.engine.builder as builder
import hrdeploy.engine.device as device_mod
from hrdeploy.bundle import Bundle
from hrdeploy.cli import cli
from hrdeploy.engine.device import DeviceInfo
from hrdeploy.engine.plan import BuildOptions, describe_source, make_plan
from hrdeploy.engine.version import installed_tensorrt_version
from hrdeploy.io import sha256

GPU = DeviceInfo(0, "NVIDIA GeForce RTX 3090", "8.6", 24 << 30)
no_trt = pytest.mark.skipif(installed_tensorrt_version() is not None, reason="tensorrt is installed on this host")


@pytest.fixture
def bundle(tmp_path) -> Path:
    return tiny_bundle(tmp_path / "tiny")


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ --print-trtexec


@no_trt
def test_print_trtexec_prints_both_generations_without_tensorrt(bundle, cli_runner):
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp16", "--max-batch", "8", "--print-trtexec"])
    assert res.exit_code == 0, res.output
    commands = [line for line in res.output.splitlines() if line.startswith("trtexec ")]
    assert len(commands) == 2
    trt10, trt11 = commands
    for cmd in commands:
        assert f"--saveEngine={bundle}/model.fp16.engine" in cmd
        assert "--minShapes=input:1x3x64x48" in cmd and "--optShapes=input:4x3x64x48" in cmd
        assert "--maxShapes=input:8x3x64x48" in cmd
    assert f"--onnx={bundle}/model.onnx " in trt10 and " --fp16" in trt10
    assert f"--onnx={bundle}/model.fp16.onnx " in trt11 and "--fp16" not in trt11
    assert f"# first: hrdeploy quantize {bundle} --precision fp16" in res.output
    assert not (bundle / "model.fp16.engine").exists()


def test_print_trtexec_for_one_generation_and_dla(bundle, cli_runner):
    res = cli_runner.invoke(cli, ["build", str(bundle), "--trt", "10", "--dla-core", "0", "--gpu-fallback",
                                  "--timing-cache", "t.cache", "--print-trtexec"])
    assert res.exit_code == 0, res.output
    (cmd,) = [line for line in res.output.splitlines() if line.startswith("trtexec ")]
    assert "--useDLACore=0 --allowGPUFallback" in cmd and "--timingCacheFile=t.cache" in cmd
    assert "# TensorRT 11" not in res.output


@no_trt
def test_print_trtexec_reports_a_generation_that_cannot_do_it(bundle, cli_runner):
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision-from", "flags", "--print-trtexec"])
    assert res.exit_code == 0
    assert "# TensorRT 11.x: not possible: TensorRT 11 removed the precision builder flags" in res.output
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp32", "--dla-core", "0", "--print-trtexec"])
    assert res.exit_code == 2 and "DLA runs FP16 and INT8 only" in res.output


def test_bad_build_inputs_exit_2_with_one_line(tmp_path, bundle, cli_runner):
    cases = [
        (["build", str(tmp_path / "missing"), "--print-trtexec"], "does not exist"),
        (["build", str(bundle), "--gpu-fallback", "--print-trtexec", "--trt", "10"], "only applies to DLA builds"),
        (["build", str(bundle), "--trt", "11", "--precision-from", "flags", "--print-trtexec"],
         "removed the precision"),
    ]
    static = tiny_bundle(tmp_path / "static", dynamic_batch=False)
    cases.append((["build", str(static), "--max-batch", "8", "--print-trtexec", "--trt", "10"], "static batch of 1"))
    for args, fragment in cases:
        res = cli_runner.invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        assert fragment in res.output and len(_lines(res.output)) == 1 and res.output.startswith("error: ")


# ------------------------------------------------------------------------------------------ missing TensorRT / GPU


@no_trt
def test_build_without_tensorrt_says_how_to_get_it(bundle, cli_runner):
    res = cli_runner.invoke(cli, ["build", str(bundle)])
    assert res.exit_code == 2
    (line,) = _lines(res.output)
    assert line.startswith("error: tensorrt is not installed") and "pip install 'hrdeploy[tensorrt]'" in line
    assert "CUDA host" in line


def test_build_with_tensorrt_but_no_gpu_says_a_cuda_host_is_needed(bundle, cli_runner, monkeypatch):
    monkeypatch.setattr(builder, "require_tensorrt", lambda purpose="": SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(device_mod, "cuda_devices", lambda: [])
    res = cli_runner.invoke(cli, ["build", str(bundle)])
    assert res.exit_code == 2
    (line,) = _lines(res.output)
    assert "no CUDA GPU found" in line and "--print-trtexec" in line
    res = cli_runner.invoke(cli, ["build", str(bundle), "--trt", "11"])
    assert res.exit_code == 2 and "--trt 11 was asked but the installed TensorRT is 10.8.0.43" in res.output


@no_trt
def test_running_an_engine_without_tensorrt_is_a_one_line_error(tmp_path):
    from hrdeploy.errors import UserError
    from hrdeploy.runtime.factory import open_runner

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(UserError, match="tensorrt is not installed .*running TensorRT engines"):
        open_runner(engine)


def test_commands_and_plans_import_no_heavy_modules():
    code = ("import sys, hrdeploy.cli, hrdeploy.commands.build_cmd, hrdeploy.commands.doctor_cmd, "
            "hrdeploy.engine.trtexec, hrdeploy.engine.engine_info;"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'polygraphy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ build flow (faked TRT)


@pytest.fixture
def fake_trt_host(monkeypatch):
    """A host where check_build_host passes and the TensorRT build returns fixed bytes."""
    state = {"version": "10.8.0.43", "built": []}

    def host(generation=None):
        return SimpleNamespace(__version__=state["version"]), state["version"], GPU

    def serialize(plan, trt):
        state["built"].append(plan)
        return b"FAKE-SERIALIZED-ENGINE"

    monkeypatch.setattr(builder, "check_build_host", host)
    monkeypatch.setattr(builder, "build_serialized", serialize)
    return state


def test_build_writes_engine_metadata_and_manifest(bundle, cli_runner, fake_trt_host):
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp16", "--max-batch", "4"])
    assert res.exit_code == 0, res.output
    engine = bundle / "model.fp16.engine"
    assert engine.read_bytes() == b"FAKE-SERIALIZED-ENGINE"
    meta = json.loads((bundle / "model.fp16.engine.json").read_text())
    assert (meta["tensorrt"], meta["gpu"], meta["compute_capability"]) == ("10.8.0.43", GPU.name, "8.6")
    assert meta["flags"] == ["FP16"] and meta["precision"] == "fp16" and meta["build_seconds"] >= 0
    assert meta["profiles"] == [{"input": "input", "min": [1, 3, 64, 48], "opt": [2, 3, 64, 48],
                                 "max": [4, 3, 64, 48]}]
    assert meta["onnx"] == {"file": "model.onnx", "sha256": sha256(bundle / "model.onnx")}
    assert meta["sha256"] == sha256(engine) and meta["trtexec"].startswith("trtexec --onnx=")
    entry = Bundle.open(bundle).artifacts["engine_fp16"].info
    assert entry.file == "model.fp16.engine" and entry.sha256 == sha256(engine)
    assert entry.tensorrt == "10.8.0.43" and entry.metadata == "model.fp16.engine.json"
    assert str(engine) in res.output and "TensorRT 10.8.0.43" in res.output
    assert not [p for p in bundle.iterdir() if p.name.endswith(".tmp")]  # atomic write left no temp file


def test_build_opens_the_bundle_once_and_records_under_its_lock(bundle, cli_runner, fake_trt_host, monkeypatch):
    real_open = Bundle.open
    opened = []

    def counting_open(cls, path):
        opened.append(Path(path))
        return real_open(path)

    def serialize(plan, trt):  # another writer changes the manifest while the engine builds
        real_open(bundle).record_section("eval", {"passed": True})
        return b"FAKE-SERIALIZED-ENGINE"

    monkeypatch.setattr(Bundle, "open", classmethod(counting_open))
    monkeypatch.setattr(builder, "build_serialized", serialize)
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp16", "--max-batch", "4"])
    assert res.exit_code == 0, res.output
    assert opened == [bundle]
    after = real_open(bundle)
    assert after.artifacts["engine_fp16"].info.sha256 == sha256(bundle / "model.fp16.engine")
    assert after.section("eval") == {"passed": True}  # recording re-read the manifest under the lock


def test_trt11_makes_the_missing_precision_onnx_first(bundle, cli_runner, fake_trt_host, monkeypatch):
    fake_trt_host["version"] = "11.1.0.5"
    monkeypatch.setattr(builder, "_quantize_function", lambda: None)
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp16"])
    assert res.exit_code == 2
    assert f"run `hrdeploy quantize {bundle} --precision fp16` first" in res.output
    assert fake_trt_host["built"] == []

    calls = []

    def quantize_bundle(b, precision, log=None):  # given the Bundle the build opened, it records through it
        calls.append((b.root, precision))
        (b.root / "model.fp16.onnx").write_bytes((b.root / "model.onnx").read_bytes())
        b.record_artifact("fp16", "model.fp16.onnx", precision="fp16")

    monkeypatch.setattr(builder, "_quantize_function", lambda: quantize_bundle)
    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    assert calls == [(bundle, "fp16")] and "making it first" in res.output
    (plan,) = fake_trt_host["built"]
    assert plan.onnx == bundle / "model.fp16.onnx" and plan.builder_flags == () and plan.strongly_typed
    assert json.loads((bundle / "model.fp16.engine.json").read_text())["generation"] == 11

    res = cli_runner.invoke(cli, ["build", str(bundle), "--precision", "int8"])  # no Q/DQ ONNX, no photos
    assert res.exit_code == 2 and "--precision int8 --calib-dir PHOTOS" in res.output
    assert len(fake_trt_host["built"]) == 1


def test_polygraphy_configuration_follows_the_plan(bundle, monkeypatch):
    """build_serialized asks Polygraphy for exactly what the plan says (fake loaders record the calls)."""
    seen = {}

    class Profile(dict):
        def add(self, name, min, opt, max):  # noqa: A002 - Polygraphy's parameter names
            self[name] = (min, opt, max)
            return self

    def network(path, strongly_typed):
        seen["network"] = (path, strongly_typed)
        return "network"

    def config(**kw):
        seen["config"] = kw
        return "config"

    def postprocess(cfg, func):
        seen["post"] = func
        return "post-config"

    def engine_bytes(net, config, save_timing_cache):
        seen["engine"] = (net, config, save_timing_cache)
        return lambda: b"ENGINE"

    fake = SimpleNamespace(Profile=Profile, NetworkFromOnnxPath=network, CreateConfig=config,
                           PostprocessConfig=postprocess, EngineBytesFromNetwork=engine_bytes)
    monkeypatch.setattr(builder, "_polygraphy", lambda: fake)
    trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="WS"),
                          HardwareCompatibilityLevel=SimpleNamespace(AMPERE_PLUS="AP", SAME_COMPUTE_CAPABILITY="SCC"))
    opts = BuildOptions(precision="int8", max_batch=2, workspace_gib=1, timing_cache=bundle / "t.cache",
                        builder_opt_level=5, dla_core=1, gpu_fallback=True)
    Bundle.open(bundle).record_artifact("int8", "model.onnx", precision="int8")  # stand-in Q/DQ artifact
    plan = make_plan(describe_source(bundle), opts, 10, "10.8.0.43")
    assert builder.build_serialized(plan, trt) == b"ENGINE"
    assert seen["network"] == (str(bundle / "model.onnx"), False)
    cfg = seen["config"]
    assert (cfg["fp16"], cfg["int8"], cfg["use_dla"], cfg["allow_gpu_fallback"]) == (True, True, True, True)
    assert cfg["memory_pool_limits"] == {"WS": 1 << 30} and cfg["builder_optimization_level"] == 5
    assert cfg["load_timing_cache"] is None  # no cache file yet: start empty, save after the build
    assert cfg["profiles"][0]["input"] == ((1, 3, 64, 48), (1, 3, 64, 48), (2, 3, 64, 48))
    assert seen["engine"] == ("network", "post-config", str(bundle / "t.cache"))
    dla_config = SimpleNamespace(DLA_core=0)
    seen["post"](None, None, dla_config)
    assert dla_config.DLA_core == 1

    plan11 = make_plan(describe_source(bundle), BuildOptions(precision="int8", hardware_compat="ampere+"), 11)
    builder.build_serialized(plan11, trt)
    assert seen["network"][1] is False  # 11.x: strongly typed always, the flag is not passed
    assert (seen["config"]["fp16"], seen["config"]["int8"]) == (False, False)
    assert seen["config"]["hardware_compatibility_level"] == "AP"
