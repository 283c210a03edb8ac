"""trtexec command lines for both TensorRT generations, made from BuildPlans (no TensorRT needed)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hrdeploy.engine.plan import BuildOptions, OnnxInput, Source, make_plan
from hrdeploy.engine.trtexec import trtexec_args, trtexec_command, trtexec_script


def _src(batch="batch", files=("fp32",)) -> Source:
    root = Path("/out/l18")
    names = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    return Source(path=root, bundle=root, inputs=(OnnxInput("input", (batch, 3, 256, 192)),),
                  onnx_files={p: root / names[p] for p in files}, size=(256, 192))


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in args[1:])


def test_trt10_fp16_dynamic_batch_line():
    args = trtexec_args(make_plan(_src(), BuildOptions(precision="fp16", min_batch=1, max_batch=8), 10))
    assert args[0] == "trtexec"
    f = _flags(args)
    assert f["--onnx"] == "/out/l18/model.onnx" and f["--saveEngine"] == "/out/l18/model.fp16.engine"
    assert (f["--minShapes"], f["--optShapes"], f["--maxShapes"]) == (
        "input:1x3x256x192", "input:4x3x256x192", "input:8x3x256x192")
    assert "--fp16" in f and "--int8" not in f and "--stronglyTyped" not in f
    assert "--skipInference" in f


def test_trt11_line_has_no_precision_flags_and_points_at_the_precision_onnx():
    plan = make_plan(_src(files=("fp32", "fp16")), BuildOptions(precision="fp16", max_batch=8), 11)
    f = _flags(trtexec_args(plan))
    assert f["--onnx"] == "/out/l18/model.fp16.onnx"
    assert not {"--fp16", "--int8", "--best", "--stronglyTyped"} & set(f)
    assert f["--maxShapes"] == "input:8x3x256x192"


@pytest.mark.parametrize(("gen", "expected"), [(10, {"--int8", "--fp16"}), (11, set())])
def test_int8_lines(gen, expected):
    f = _flags(trtexec_args(make_plan(_src(files=("fp32", "int8")), BuildOptions(precision="int8"), gen)))
    assert f["--onnx"] == "/out/l18/model.int8.onnx"
    assert {"--int8", "--fp16"} & set(f) == expected


def test_static_batch_has_no_shape_flags():
    f = _flags(trtexec_args(make_plan(_src(batch=1), BuildOptions(precision="fp32"), 10)))
    assert not {"--minShapes", "--optShapes", "--maxShapes", "--fp16"} & set(f)


def test_every_build_option_maps_to_its_trtexec_flag():
    opts = BuildOptions(precision="fp16", workspace_gib=2, timing_cache=Path("/c/t.cache"), builder_opt_level=4,
                        dla_core=1, gpu_fallback=True, version_compatible=True, output=Path("/out/l18/orin.engine"))
    f = _flags(trtexec_args(make_plan(_src(batch=1), opts, 10)))
    assert f["--memPoolSize"] == "workspace:2048M"
    assert f["--timingCacheFile"] == "/c/t.cache" and f["--builderOptimizationLevel"] == "4"
    assert f["--useDLACore"] == "1" and "--allowGPUFallback" in f and "--versionCompatible" in f
    assert f["--saveEngine"] == "/out/l18/orin.engine"
    hw = _flags(trtexec_args(make_plan(_src(), BuildOptions(hardware_compat="same-cc"), 10, "10.9.0")))
    assert hw["--hardwareCompatibilityLevel"] == "sameComputeCapability"
    strong = _flags(trtexec_args(make_plan(_src(files=("fp32", "fp16")), BuildOptions(precision_from="onnx"), 10)))
    assert "--stronglyTyped" in strong and "--fp16" not in strong


def test_command_is_shell_quoted_and_script_says_what_to_make_first():
    plan = make_plan(Source(path=Path("/my out/b"), bundle=Path("/my out/b"),
                            inputs=(OnnxInput("input", (1, 3, 64, 48)),),
                            onnx_files={"fp32": Path("/my out/b/model.onnx")}, size=(64, 48)),
                     BuildOptions(precision="fp16"), 11)
    cmd = trtexec_command(plan)
    assert shlex.split(cmd)[1] == "--onnx=/my out/b/model.fp16.onnx"
    script = trtexec_script(plan).splitlines()
    assert script[0].startswith("# TensorRT 11.x: fp16")
    assert script[1].startswith("# first: hrdeploy quantize '/my out/b' --precision fp16")
    assert script[-1] == cmd
