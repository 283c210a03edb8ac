"""engine.json: what an engine was built with and for, and the check run before loading it.

A serialized TensorRT engine is tied to the TensorRT version that built it and to the GPU model, unless
it was built version-compatible (runs on that version and later ones) or hardware-compatible
(`ampere+`: any compute capability >= 8.0; `same-cc`: the same compute capability). The metadata file
beside each engine (`<engine>.json`) records both, so a mismatch is a clear message instead of
TensorRT's deserialization error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hrdeploy.engine.device import DeviceInfo
from hrdeploy.engine.plan import BuildPlan
from hrdeploy.engine.version import parse_version
from hrdeploy.errors import UserError

FORMAT = "hrdeploy-engine/1"


def metadata_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def engine_metadata(
    plan: BuildPlan,
    *,
    trt_version: str,
    device: DeviceInfo,
    build_seconds: float,
    onnx_sha256: str,
    engine_sha256: str,
    engine_bytes: int,
    trtexec: str = "",
) -> dict[str, Any]:
    """The engine.json record of a finished build."""
    return {
        "format": FORMAT,
        "engine": plan.engine.name,
        "sha256": engine_sha256,
        "size_bytes": engine_bytes,
        "tensorrt": trt_version,
        "generation": plan.generation,
        "gpu": device.name,
        "compute_capability": device.compute_capability,
        "precision": plan.precision,
        "precision_from": plan.precision_from,
        "strongly_typed": plan.strongly_typed,
        "profiles": [{"input": p.input, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                     for p in plan.profiles],
        "flags": list(plan.builder_flags),
        "workspace_bytes": plan.workspace_bytes,
        "builder_optimization_level": plan.builder_opt_level,
        "dla_core": plan.dla_core,
        "version_compatible": plan.version_compatible,
        "hardware_compatibility": plan.hardware_compat,
        "timing_cache": os.fspath(plan.timing_cache) if plan.timing_cache else None,
        "build_seconds": round(build_seconds, 2),
        "onnx": {"file": plan.onnx.name, "sha256": onnx_sha256},
        "trtexec": trtexec,
    }


def read_engine_metadata(engine: str | os.PathLike) -> dict[str, Any] | None:
    """The engine.json beside `engine`, or None when there is none (e.g. an engine made by trtexec)."""
    path = metadata_path(engine)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); rebuild the engine with `hrdeploy build`") from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not hrdeploy engine metadata (format {meta.get('format')!r})")
    return meta


def _rebuild_hint(meta: dict[str, Any]) -> str:
    return f"rebuild it on this host with `hrdeploy build BUNDLE --precision {meta.get('precision', 'fp16')}`"


def compatibility_problem(meta: dict[str, Any], *, trt_version: str, device: DeviceInfo | None) -> str | None:
    """Why an engine described by `meta` cannot load with `trt_version` on `device`, or None if it can."""
    name = meta.get("engine", "the engine")
    built = str(meta.get("tensorrt", ""))
    b, h = parse_version(built), parse_version(trt_version)
    if meta.get("version_compatible"):
        if h[:3] < b[:3]:
            return (f"{name} was built version-compatible with TensorRT {built}, which runs on {built} and later, "
                    f"but this host has TensorRT {trt_version}; {_rebuild_hint(meta)}")
    elif b[:3] != h[:3]:
        return (f"{name} was built with TensorRT {built} and this host has TensorRT {trt_version}: engines only "
                f"load in the TensorRT version that built them; {_rebuild_hint(meta)} "
                "(or build with --version-compatible)")
    if device is None:
        return None
    cc_built, cc_here = str(meta.get("compute_capability", "")), device.compute_capability
    level = meta.get("hardware_compatibility")
    gpu = f"{meta.get('gpu')} (sm_{cc_built.replace('.', '')})"
    here = f"{device.name} ({device.sm})"
    if level == "ampere+":
        if parse_version(cc_here) < (8, 0):
            return (f"{name} was built for Ampere and newer GPUs (ampere+) but this host has {here}; "
                    f"{_rebuild_hint(meta)}")
    elif level == "same-cc":
        if parse_version(cc_here)[:2] != parse_version(cc_built)[:2]:
            return (f"{name} was built for compute capability {cc_built} (same-cc) but this host has {here}; "
                    f"{_rebuild_hint(meta)}")
    elif meta.get("gpu") != device.name or cc_built != cc_here:
        return (f"{name} was built for {gpu} and this host has {here}: engines are tied to the GPU model; "
                f"{_rebuild_hint(meta)} (or build with --hardware-compat ampere+)")
    return None


def check_compatibility(meta: dict[str, Any] | None, *, trt_version: str, device: DeviceInfo | None) -> None:
    """Raise the UserError of `compatibility_problem`, if any (no metadata: nothing to check)."""
    if meta is None:
        return
    problem = compatibility_problem(meta, trt_version=trt_version, device=device)
    if problem:
        raise UserError(problem)
