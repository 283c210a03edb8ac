"""What `hrdeploy bench` measures: a bundle's artifacts, a bare ONNX or engine, or an eager zoo model.

Each target knows its backend, precision, the batch range it accepts (static ONNX batch, engine
profile) and how to open its runner lazily, so several backends can be measured side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrdeploy.bundle import Bundle, profile_batch_range
from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file
from hrdeploy.limits import MAX_BATCH

BACKENDS = ("eager", "ort", "trt")


@dataclass
class BenchTarget:
    label: str  # e.g. "ort fp32", "eager", "trt fp16"
    backend: str
    precision: str
    open: Callable[[], Any]  # -> Runner
    batch_range: tuple[int, int] = (1, MAX_BATCH)
    file: str | None = None


def parse_batches(text: str | Sequence[int] | None) -> list[int]:
    """'1,4,8' -> [1, 4, 8]; anything but positive integers is a UserError."""
    if text is None:
        return [1]
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        batches = [int(str(s).strip()) for s in items if str(s).strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise UserError(f"--batch {text!r} is not a comma list of positive integers; write e.g. --batch 1,4,8")
    if max(batches) > MAX_BATCH:
        raise UserError(f"--batch {max(batches)} is above the largest batch hrdeploy runs ({MAX_BATCH})")
    return list(dict.fromkeys(batches))


def parse_backend_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UserError(f"unknown backend {bad[0] if bad else text!r}; use a comma list of {','.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def require_backend(backend: str) -> None:
    """UserError when an explicitly requested backend cannot run on this machine."""
    if backend == "trt":
        from hrdeploy.engine.version import require_tensorrt

        require_tensorrt("benchmarking TensorRT engines")


def trt_unavailable() -> str | None:
    try:
        require_backend("trt")
    except UserError as err:
        return str(err)
    return None


def onnx_input_info(model: Any, path: str | os.PathLike) -> tuple[int | None, tuple[int, int] | None, str | None]:
    """(static batch | None, static (h, w) | None, model name from hrdeploy metadata | None) of an ONNX."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    vals = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(vals) != 4:
        raise UserError(f"{path} has input rank {len(vals)}; hrdeploy benchmarks NCHW image models")
    meta = {p.key: p.value for p in model.metadata_props}
    size = (vals[2], vals[3]) if vals[2] and vals[3] else None
    return vals[0], size, meta.get("hrdeploy.model")


def _opener(target: Any, threads: int | None = None) -> Callable[[], Any]:
    """A runner opener for a path or an artifact (hrdeploy.runtime.factory.open_runner, imported when called)."""
    def open_() -> Any:
        from hrdeploy.runtime.factory import open_runner

        return open_runner(target, threads)

    return open_


def _static_range(batch: int | None) -> tuple[int, int]:
    return (batch, batch) if batch else (1, MAX_BATCH)


def bundle_targets(
    bundle: Bundle, backends: list[str] | None, threads: int | None
) -> tuple[list[BenchTarget], list[dict[str, str]], tuple[int, int]]:
    """Targets of a bundle: eager, every ONNX on ort, every engine on trt. Returns (targets, skipped, size)."""
    root = bundle.root
    if not bundle.artifacts:
        raise UserError(f"bundle {root} has no artifacts; create them with `hrdeploy export MODEL -o {root}`")
    explicit = backends is not None
    engines = bundle.engine_artifacts()
    onnxs = bundle.onnx_artifacts()
    chosen = backends or ["eager", "ort"] + (["trt"] if engines else [])
    targets: list[BenchTarget] = []
    skipped: list[dict[str, str]] = []
    for backend in chosen:
        if backend == "eager":
            targets.append(BenchTarget("eager fp32", "eager", "fp32", lambda: _bundle_eager(bundle, threads)))
        elif backend == "ort":
            if not onnxs:
                raise UserError(f"bundle {root} has no ONNX artifact; create it with `hrdeploy export`")
            for key in onnxs:
                art = bundle.artifact(key)
                targets.append(BenchTarget(f"ort {art.precision}", "ort", art.precision,
                                           _opener(art, threads), art.batch_range, art.file))
        elif backend == "trt":
            if not engines:
                if explicit:
                    raise UserError(f"bundle {root} has no TensorRT engine; build one with `hrdeploy build {root}`")
                continue
            why = trt_unavailable()
            if why and explicit:
                raise UserError(why)
            for key in engines:
                if why:
                    skipped.append({"backend": "trt", "target": key, "reason": why})
                    continue
                art = bundle.artifact(key)
                targets.append(BenchTarget(f"trt {art.precision}", "trt", art.precision,
                                           _opener(art), art.batch_range, art.file))
    return targets, skipped, bundle.input.size


def _bundle_eager(bundle: Bundle, threads: int | None) -> Any:
    from hrdeploy.runtime.factory import eager_runner

    return eager_runner(bundle.eager_model(), bundle.output_names, threads)


def model_target(
    name: str, dataset: str | None, input_size: tuple[int, int] | None, threads: int | None
) -> tuple[BenchTarget, tuple[int, int]]:
    """The eager (upstream-form, seeded) model `name` as a bench target, at its default or given size."""
    from hrdeploy.registry import get_spec
    from hrdeploy.zoo import check_dataset, check_input_size

    spec = get_spec(name)
    ds = check_dataset(spec, dataset)
    size = check_input_size(spec, input_size or spec.input_size(ds))

    def open_() -> Any:
        from hrdeploy.runtime.factory import eager_runner
        from hrdeploy.zoo import build_model

        return eager_runner(build_model(name, dataset=ds), spec.output_names, threads)

    return BenchTarget("eager fp32", "eager", "fp32", open_), size


def file_target(
    path: Path, kind: str, input_size: tuple[int, int] | None, threads: int | None
) -> tuple[BenchTarget, tuple[int, int]]:
    """A bare ONNX (ort) or engine (trt) as a bench target; the input size comes from the file when static."""
    if not path.is_file():
        raise UserError(f"{path} {not_a_file(path)}; pass an existing {'.onnx file' if kind == 'onnx' else 'engine'}")
    if kind == "onnx":
        from hrdeploy.bundle import load_onnx
        from hrdeploy.engine.plan import onnx_graph_precision

        graph = load_onnx(path)
        batch, size, model = onnx_input_info(graph, path)
        precision = onnx_graph_precision(graph)
        if input_size is None and size is None:
            if model is None:
                raise UserError(f"{path} has a dynamic height/width; pass --input-size HxW")
            from hrdeploy.registry import get_spec

            size = get_spec(model).input_size()
        target = BenchTarget(f"ort {precision}", "ort", precision, _opener(path, threads), _static_range(batch),
                             path.name)
        return target, input_size or size  # type: ignore[return-value]
    require_backend("trt")
    from hrdeploy.engine.engine_info import read_engine_metadata

    meta = read_engine_metadata(path) or {}
    rng = profile_batch_range(meta.get("profiles"))
    size = input_size
    if size is None:
        shape = ((meta.get("profiles") or [{}])[0]).get("opt")
        if not shape:
            raise UserError(f"{path} has no engine metadata with its input shape; pass --input-size HxW")
        size = (int(shape[2]), int(shape[3]))
    prec = str(meta.get("precision", "fp16"))
    return BenchTarget(f"trt {prec}", "trt", prec, _opener(path), rng, path.name), size
