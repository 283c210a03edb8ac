"""The trtexec command equivalent to a BuildPlan, for TensorRT 10.x or 11.x (no TensorRT needed).

Flags as documented by trtexec (`trtexec --help`) and the 10.x -> 11.x trtexec migration guide: 11.x
dropped `--fp16 --int8 --best --calib` (every network is strongly typed, precision comes from the ONNX)
and `--stronglyTyped` is a no-op there; 10.x takes `--stronglyTyped` to build from the graph's types.
"""

from __future__ import annotations

import os
import shlex

from hrdeploy.engine.plan import BuildPlan, ShapeProfile

_HW_COMPAT = {"ampere+": "ampere+", "same-cc": "sameComputeCapability"}


def _shape(profile: ShapeProfile, which: str) -> str:
    dims = getattr(profile, which)
    return f"{profile.input}:{'x'.join(str(d) for d in dims)}"


def trtexec_args(plan: BuildPlan) -> list[str]:
    """argv of the trtexec build that does what `plan` does."""
    args = ["trtexec", f"--onnx={os.fspath(plan.onnx)}", f"--saveEngine={os.fspath(plan.engine)}"]
    dynamic = [p for p in plan.profiles if p.dynamic]
    if dynamic:
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            args.append(f"{flag}={','.join(_shape(p, which) for p in plan.profiles)}")
    if plan.generation == 10:
        if plan.strongly_typed:
            args.append("--stronglyTyped")
        if "FP16" in plan.builder_flags:
            args.append("--fp16")
        if "INT8" in plan.builder_flags:
            args.append("--int8")
    if plan.workspace_bytes is not None:
        args.append(f"--memPoolSize=workspace:{max(1, round(plan.workspace_bytes / (1 << 20)))}M")
    if plan.timing_cache is not None:
        args.append(f"--timingCacheFile={os.fspath(plan.timing_cache)}")
    if plan.builder_opt_level is not None:
        args.append(f"--builderOptimizationLevel={plan.builder_opt_level}")
    if plan.dla_core is not None:
        args.append(f"--useDLACore={plan.dla_core}")
        if plan.gpu_fallback:
            args.append("--allowGPUFallback")
    if plan.version_compatible:
        args.append("--versionCompatible")
    if plan.hardware_compat is not None:
        args.append(f"--hardwareCompatibilityLevel={_HW_COMPAT[plan.hardware_compat]}")
    args.append("--skipInference")
    return args


def trtexec_command(plan: BuildPlan) -> str:
    """The trtexec line as one shell-quoted string."""
    return shlex.join(trtexec_args(plan))


def trtexec_script(plan: BuildPlan) -> str:
    """The trtexec line with comment lines: which TensorRT, what must be made first, plan notes."""
    lines = [f"# TensorRT {plan.generation}.x: {plan.precision}, precision from "
             f"{'builder flags' if plan.precision_from == 'flags' else 'the ONNX (strongly typed)'}"]
    if plan.make_first and plan.bundle is not None:
        calib = " --calib-dir PHOTOS" if plan.make_first == "int8" else ""
        lines.append(f"# first: hrdeploy quantize {shlex.quote(os.fspath(plan.bundle))} --precision {plan.make_first}"
                     f"{calib}   (the bundle has no {plan.make_first} ONNX yet)")
    lines += [f"# note: {n}" for n in plan.notes if "hrdeploy quantize" not in n]
    lines.append(trtexec_command(plan))
    return "\n".join(lines)
