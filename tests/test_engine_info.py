"""engine.json and the check that an engine suits this host's TensorRT version and GPU."""

from __future__ import annotations

import json

import pytest

from hrdeploy.engine.device import DeviceInfo
from hrdeploy.engine.engine_info import (
    FORMAT,
    check_compatibility,
    compatibility_problem,
    engine_metadata,
    metadata_path,
    read_engine_metadata,
)
from hrdeploy.engine.plan import BuildOptions, OnnxInput, Source, make_plan
from hrdeploy.engine.version import generation_of, parse_version
from hrdeploy.errors import UserError

RTX3090 = DeviceInfo(0, "NVIDIA GeForce RTX 3090", "8.6")
A10 = DeviceInfo(0, "NVIDIA A10", "8.6")
L4 = DeviceInfo(0, "NVIDIA L4", "8.9")
T4 = DeviceInfo(0, "Tesla T4", "7.5")


def _meta(**kw):
    meta = {"format": FORMAT, "engine": "model.fp16.engine", "tensorrt": "10.8.0.43", "gpu": RTX3090.name,
            "compute_capability": "8.6", "precision": "fp16", "version_compatible": False,
            "hardware_compatibility": None}
    meta.update(kw)
    return meta


def test_versions_and_generations():
    assert parse_version("10.8.0.43") == (10, 8, 0, 43) and parse_version("11.0.0rc1") == (11, 0, 0)
    assert generation_of("10.3.0") == 10 and generation_of("11.4.1") == 11
    with pytest.raises(UserError, match="too old"):
        generation_of("8.6.1")


def test_same_version_and_gpu_loads():
    assert compatibility_problem(_meta(), trt_version="10.8.0.43", device=RTX3090) is None


def test_other_tensorrt_version_is_a_clear_message():
    msg = compatibility_problem(_meta(), trt_version="10.9.0.34", device=RTX3090)
    assert "built with TensorRT 10.8.0.43" in msg and "this host has TensorRT 10.9.0.34" in msg
    assert "hrdeploy build" in msg and "--version-compatible" in msg
    with pytest.raises(UserError, match="built with TensorRT 10.8.0.43"):
        check_compatibility(_meta(), trt_version="11.0.0", device=RTX3090)


def test_version_compatible_engines_load_in_later_versions_only():
    vc = _meta(version_compatible=True)
    assert compatibility_problem(vc, trt_version="10.12.0", device=RTX3090) is None
    assert compatibility_problem(vc, trt_version="11.1.0", device=RTX3090) is None
    assert "runs on 10.8.0.43 and later" in compatibility_problem(vc, trt_version="10.3.0", device=RTX3090)


def test_other_gpu_needs_hardware_compatibility():
    msg = compatibility_problem(_meta(), trt_version="10.8.0.43", device=L4)
    assert "RTX 3090 (sm_86)" in msg and "NVIDIA L4 (sm_89)" in msg and "--hardware-compat" in msg
    assert compatibility_problem(_meta(), trt_version="10.8.0.43", device=A10) is not None  # same cc, other model
    assert compatibility_problem(_meta(hardware_compatibility="same-cc"), trt_version="10.8.0.43", device=A10) is None
    assert compatibility_problem(_meta(hardware_compatibility="ampere+"), trt_version="10.8.0.43", device=L4) is None
    assert "ampere+" in compatibility_problem(_meta(hardware_compatibility="ampere+"), trt_version="10.8.0.43",
                                              device=T4)


def test_metadata_round_trip_and_bad_files(tmp_path):
    src = Source(path=tmp_path, bundle=tmp_path, inputs=(OnnxInput("input", ("batch", 3, 64, 48)),),
                 onnx_files={"fp32": tmp_path / "model.onnx"}, size=(64, 48))
    plan = make_plan(src, BuildOptions(precision="fp16", max_batch=4), 10, "10.8.0.43")
    meta = engine_metadata(plan, trt_version="10.8.0.43", device=RTX3090, build_seconds=12.345, onnx_sha256="ab",
                           engine_sha256="cd", engine_bytes=10)
    assert meta["profiles"] == [{"input": "input", "min": [1, 3, 64, 48], "opt": [2, 3, 64, 48],
                                 "max": [4, 3, 64, 48]}]
    assert (meta["flags"], meta["build_seconds"], meta["compute_capability"]) == (["FP16"], 12.35, "8.6")
    path = metadata_path(plan.engine)
    assert path == tmp_path / "model.fp16.engine.json"
    assert read_engine_metadata(plan.engine) is None
    path.write_text(json.dumps(meta))
    assert read_engine_metadata(plan.engine) == meta
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_engine_metadata(plan.engine)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not hrdeploy engine metadata"):
        read_engine_metadata(plan.engine)
    check_compatibility(None, trt_version="10.0.0", device=None)  # no metadata: nothing to check
