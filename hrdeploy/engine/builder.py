"""Apply a BuildPlan with TensorRT: parse, configure, build, write the engine and its engine.json.

The TensorRT calls go through Polygraphy's loaders (`polygraphy.backend.trt`: NetworkFromOnnxPath,
CreateConfig, PostprocessConfig, EngineBytesFromNetwork), which track both TensorRT generations:
they set the precision flags only when asked (we never ask on 11.x), skip EXPLICIT_BATCH on 10.x+ and
the flags 11.x removed. One thing is set by hand: CreateConfig's `use_dla` always picks DLA core 0,
so `--dla-core N` is applied in a PostprocessConfig hook.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hrdeploy.bundle import Bundle
from hrdeploy.engine.device import DeviceInfo, require_gpu
from hrdeploy.engine.engine_info import engine_metadata
from hrdeploy.engine.plan import BuildPlan, Source, describe_source
from hrdeploy.engine.trtexec import trtexec_command
from hrdeploy.engine.version import INSTALL_HINT, generation_of, require_tensorrt
from hrdeploy.errors import UserError
from hrdeploy.io import sha256, write_bytes, write_json


@dataclass
class BuildResult:
    plan: BuildPlan
    engine: Path
    metadata: dict[str, Any]
    seconds: float


def check_build_host(generation: int | None = None) -> tuple[Any, str, DeviceInfo]:
    """(tensorrt module, its version, the GPU) or the one-line UserError naming what is missing."""
    trt = require_tensorrt("building TensorRT engines")
    version = str(trt.__version__)
    installed = generation_of(version)
    if generation is not None and generation != installed:
        raise UserError(
            f"--trt {generation} was asked but the installed TensorRT is {version}; drop --trt, or use "
            f"--print-trtexec to get the TensorRT {generation}.x command"
        )
    device = require_gpu(0, "building a TensorRT engine")
    return trt, version, device


def _quantize_function() -> Callable[..., Any] | None:
    """hrdeploy.precision.quantize_bundle when this install has it (the `hrdeploy quantize` stage)."""
    try:
        import hrdeploy.precision as precision
    except ImportError:
        return None
    return getattr(precision, "quantize_bundle", None)


def make_precision_onnx(bundle: Bundle, precision: str, log: Callable[[str], None] = print) -> None:
    """Create the bundle's fp16 ONNX with hrdeploy.precision.quantize_bundle, recorded through `bundle` (INT8
    needs calibration photos, so a missing int8 ONNX is an error that says how to make it)."""
    root = bundle.root
    if precision == "int8":
        raise UserError(
            f"bundle {root} has no int8 (Q/DQ) ONNX; make it with calibration photos first: "
            f"`hrdeploy quantize {root} --precision int8 --calib-dir PHOTOS`"
        )
    quantize_bundle = _quantize_function()
    if quantize_bundle is None:
        raise UserError(
            f"bundle {root} has no {precision} ONNX and this hrdeploy cannot make one here; run "
            f"`hrdeploy quantize {root} --precision {precision}` first"
        )
    quantize_bundle(bundle, precision=precision, log=log)


def resolve_made_onnx(plan: BuildPlan, source: Source) -> BuildPlan:
    """After `make_precision_onnx`, point the plan at the artifact the manifest now records."""
    fresh = describe_source(_bundle_of(source))
    if plan.make_first not in fresh.onnx_files:
        raise UserError(f"making the {plan.make_first} ONNX left no '{plan.onnx_key}' artifact in {source.path}; "
                        f"run `hrdeploy quantize {source.path} --precision {plan.make_first}` and check its output")
    return replace(plan, onnx=fresh.onnx_files[plan.make_first], make_first=None)


def _bundle_of(source: Source) -> Bundle:
    """The source's bundle: the one describe_source opened (and stages since updated), else opened here."""
    assert source.bundle is not None
    return source.opened if source.opened is not None else Bundle.open(source.bundle)


def _polygraphy() -> Any:
    try:
        from polygraphy.backend import trt as poly_trt
    except ImportError as err:
        raise UserError(
            f"polygraphy is not installed (hrdeploy builds engines with its loaders); {INSTALL_HINT}"
        ) from err
    return poly_trt


def build_serialized(plan: BuildPlan, trt: Any) -> bytes:
    """Parse the plan's ONNX and build the serialized engine (needs TensorRT and a GPU)."""
    poly_trt = _polygraphy()
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
    # On 11.x every network is strongly typed and the creation flag is deprecated: only ask on 10.x.
    strongly_typed = plan.strongly_typed and plan.generation == 10
    network = poly_trt.NetworkFromOnnxPath(os.fspath(plan.onnx), strongly_typed=strongly_typed)
    profiles = [poly_trt.Profile()]
    for p in plan.profiles:
        profiles[0].add(p.input, min=p.min, opt=p.opt, max=p.max)
    hw = None
    if plan.hardware_compat == "ampere+":
        hw = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif plan.hardware_compat == "same-cc":
        hw = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    timing_cache = os.fspath(plan.timing_cache) if plan.timing_cache else None
    config = poly_trt.CreateConfig(
        fp16="FP16" in plan.builder_flags,
        int8="INT8" in plan.builder_flags,
        profiles=profiles,
        load_timing_cache=timing_cache if timing_cache and Path(timing_cache).is_file() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_bytes} if plan.workspace_bytes else None,
        builder_optimization_level=plan.builder_opt_level,
        hardware_compatibility_level=hw,
        version_compatible=plan.version_compatible or None,
        use_dla=plan.dla_core is not None,
        allow_gpu_fallback=plan.gpu_fallback,
    )
    if plan.dla_core is not None:
        core = plan.dla_core
        config = poly_trt.PostprocessConfig(config, lambda builder, network, cfg: setattr(cfg, "DLA_core", core))
    loader = poly_trt.EngineBytesFromNetwork(network, config=config, save_timing_cache=timing_cache)
    try:
        serialized = loader()
    except PolygraphyException as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "see the log above"
        raise UserError(f"TensorRT could not build {plan.onnx.name}: {first}; "
                        f"run `hrdeploy doctor {plan.onnx}` for the reasons it can see without a GPU") from err
    if serialized is None:
        raise UserError(f"TensorRT returned no engine for {plan.onnx.name}; run `hrdeploy doctor {plan.onnx}`")
    return bytes(serialized)


def build_engine(plan: BuildPlan, source: Source, *, log: Callable[[str], None] = print) -> BuildResult:
    """Build `plan` on this host: check TensorRT + GPU, make a missing precision ONNX, build, record."""
    trt, version, device = check_build_host(plan.generation)
    if plan.trt_version is None:
        plan = replace(plan, trt_version=version)
    if plan.make_first is not None:
        log(f"the bundle has no {plan.make_first} ONNX: making it first (hrdeploy quantize)")
        make_precision_onnx(_bundle_of(source), plan.make_first, log=log)
        plan = resolve_made_onnx(plan, source)
    log(f"building {plan.engine.name} with TensorRT {version} on {device.name} ({device.sm}) ...")
    start = time.perf_counter()
    data = build_serialized(plan, trt)
    seconds = time.perf_counter() - start
    write_bytes(plan.engine, data)
    meta = engine_metadata(
        plan, trt_version=version, device=device, build_seconds=seconds, onnx_sha256=sha256(plan.onnx),
        engine_sha256=sha256(plan.engine), engine_bytes=len(data), trtexec=trtexec_command(plan),
    )
    write_json(plan.metadata, meta)
    if plan.artifact_key is not None and plan.bundle is not None:
        # record_artifact re-reads the manifest under the bundle's lock, so writes since it was opened are kept
        rel = os.path.relpath(plan.engine, plan.bundle)
        _bundle_of(source).record_artifact(
            plan.artifact_key, rel, precision=plan.precision, tensorrt=version, gpu=device.name,
            compute_capability=device.compute_capability, metadata=os.path.relpath(plan.metadata, plan.bundle),
            profiles=meta["profiles"], flags=meta["flags"], build_seconds=meta["build_seconds"],
        )
    return BuildResult(plan=plan, engine=plan.engine, metadata=meta, seconds=seconds)
