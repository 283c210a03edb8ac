"""`validate_bundle`: every artifact of a bundle, on every available backend, against eager fp32.

The reference is the upstream-form eager model the bundle was exported from (hrdeploy.bundle). Each
target (the rewritten eager model, each ONNX artifact on onnxruntime, each TensorRT engine) runs the
same inputs (hrdeploy.validate.inputs) in batches; outputs are compared with tensor metrics and, for
pose outputs, keypoint metrics, against the tolerance of the target's precision. A failing ONNX target
is localised to its first diverging node (hrdeploy.validate.localize). The structure follows
Polygraphy's comparator: runners produce outputs, a comparator only compares.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.io import sha256
from hrdeploy.manifest import load_manifest
from hrdeploy.validate.inputs import ValidationInput, group_by_size, validation_inputs
from hrdeploy.validate.localize import describe, localize
from hrdeploy.validate.metrics import label_metrics, pose_metrics, tensor_metrics
from hrdeploy.validate.tolerances import check, parse_tolerances

BACKENDS = ("eager", "ort", "trt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class Target:
    key: str  # artifact key in the manifest, or "eager" for the rewritten eager model
    backend: str
    precision: str
    file: str | None = None


def parse_backends(text: str | Sequence[str] | None) -> list[str]:
    """'eager,ort' -> ['eager', 'ort']; unknown names are a UserError."""
    if text is None:
        return list(BACKENDS)
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip().lower() for s in items if s.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UserError(f"unknown backend {bad[0] if bad else text!r}; use a comma list of {','.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def artifact_precision(key: str, entry: dict[str, Any]) -> str:
    if entry.get("precision"):
        return str(entry["precision"])
    for p in ("fp16", "int8", "fp32"):
        if p in key:
            return p
    return "fp32"


def is_engine(entry: dict[str, Any]) -> bool:
    return Path(entry["file"]).suffix in ENGINE_SUFFIXES


def plan_targets(bundle: Path, manifest: dict[str, Any], backends: list[str]) -> list[Target]:
    """The targets of `backends` in this bundle: eager first, then ONNX artifacts, then engines."""
    artifacts = manifest.get("artifacts") or {}
    if not artifacts:
        raise UserError(f"bundle {bundle} has no artifacts; create them with `hrdeploy export MODEL -o {bundle}`")
    targets = []
    if "eager" in backends:
        targets.append(Target("eager", "eager", "fp32"))
    for backend, want_engine in (("ort", False), ("trt", True)):
        if backend in backends:
            for key, entry in artifacts.items():
                if is_engine(entry) == want_engine:
                    targets.append(Target(key, backend, artifact_precision(key, entry), entry["file"]))
    return targets


def onnx_batch(path: str | os.PathLike) -> int | None:
    """The static batch of an ONNX input, or None when it is dynamic."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def batch_range(bundle: Path, manifest: dict[str, Any], key: str) -> tuple[int, int]:
    """(min, max) batch an artifact accepts: an ONNX's static batch, an engine's profile, else 1..1024."""
    entry = manifest["artifacts"][key]
    if is_engine(entry):
        profiles = entry.get("profiles") or []
        if profiles:
            return int(profiles[0]["min"][0]), int(profiles[0]["max"][0])
        return 1, 1024
    static = onnx_batch(bundle / entry["file"])
    return (static, static) if static else (1, 1024)


def choose_batch(requested: int | None, lo_hi: tuple[int, int], what: str, static_hint: str) -> int:
    lo, hi = lo_hi
    if requested is None:
        return lo
    if not lo <= requested <= hi:
        accepted = f"a static batch of {lo}" if lo == hi else f"batch {lo}..{hi}"
        raise UserError(f"--batch {requested} is outside what {what} accepts ({accepted}); {static_hint}")
    return requested


def run_batched(runner: Any, inputs: list[ValidationInput], batch: int) -> dict[str, np.ndarray]:
    """Run `inputs` (one size) in batches of exactly `batch` (the last padded); outputs stacked per name."""
    arrays = np.stack([i.array for i in inputs])
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(arrays), batch):
        chunk = arrays[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        for name, value in runner.run(chunk).items():
            outs.setdefault(name, []).append(np.asarray(value, dtype=np.float32)[:n])
    return {k: np.concatenate(v) for k, v in outs.items()}


def run_groups(runner: Any, groups: dict[tuple[int, int], list[ValidationInput]], batch: int) -> dict:
    return {size: run_batched(runner, items, batch) for size, items in groups.items()}


def compare_output(
    name: str,
    refs: list[np.ndarray],
    outs: list[np.ndarray],
    manifest: dict[str, Any],
) -> dict[str, float]:
    """Tensor metrics over all inputs of every size; keypoint / label metrics where they apply."""
    metrics = tensor_metrics(np.concatenate([r.ravel() for r in refs]), np.concatenate([o.ravel() for o in outs]))
    info = next((o for o in manifest.get("outputs", []) if o["name"] == name), {})
    task = manifest["model"]["task"]
    kps = manifest.get("keypoints")
    if task.startswith("pose") and kps:
        k = len(kps["names"])
        stride = int(info.get("stride", 1))
        parts = [pose_metrics(r[:, :k], o[:, :k], stride=stride) for r, o in zip(refs, outs, strict=True)]
        weights = [len(r) for r in refs]
        for key in parts[0]:
            values = [p[key] for p in parts]
            if key.startswith("max"):
                metrics[key] = float(max(values))
            else:
                metrics[key] = float(np.average(values, weights=weights))
    elif task == "segmentation":
        agree = [label_metrics(r, o)["label_agreement_pct"] for r, o in zip(refs, outs, strict=True)]
        metrics["label_agreement_pct"] = float(np.average(agree, weights=[r.size for r in refs]))
    return metrics


def per_input(
    groups: dict[tuple[int, int], list[ValidationInput]], ref: dict, out: dict, name: str
) -> list[dict[str, Any]]:
    rows = []
    for size, items in groups.items():
        for i, item in enumerate(items):
            m = tensor_metrics(ref[size][name][i], out[size][name][i])
            rows.append({"input": item.name, "size": list(size), "max_rel": m["max_rel"], "cosine": m["cosine"]})
    return rows


def _open_target(
    target: Target, bundle: Path, manifest: dict[str, Any], eager: Any, threads: int | None
) -> Any:
    if target.backend == "eager":
        from hrdeploy.rewrite import apply
        from hrdeploy.runtime.eager import EagerRunner

        rewritten, _ = apply(eager, manifest.get("rewrites") or [])
        return EagerRunner(rewritten, [o["name"] for o in manifest["outputs"]])
    path = bundle / str(target.file)
    if target.backend == "ort":
        from hrdeploy.runtime.onnxruntime import OrtRunner

        return OrtRunner(path, threads=threads)
    from hrdeploy.runtime.factory import open_runner

    return open_runner(path)


def trt_unavailable() -> str | None:
    """Why the TensorRT backend cannot run here, or None."""
    from hrdeploy.engine.version import require_tensorrt

    try:
        require_tensorrt("running TensorRT engines")
    except UserError as err:
        return str(err)
    return None


def _localize_target(
    target: Target,
    bundle: Path,
    manifest: dict[str, Any],
    eager: Any,
    x: np.ndarray,
    tolerance: dict[str, float],
    threads: int | None,
) -> dict[str, Any]:
    if target.backend != "ort":
        return {"error": f"localisation runs on ONNX artifacts; compare the engine's source ONNX ({target.backend})"}
    artifacts = manifest["artifacts"]
    kw = {"max_rel": tolerance.get("max_rel", 1e-3), "min_cosine": tolerance.get("cosine", 0.99999), "threads": threads}
    path = bundle / str(target.file)
    fp32 = artifacts.get("onnx")
    try:
        if target.key != "onnx" and fp32 and (bundle / fp32["file"]).is_file():
            return localize(path, x, reference_onnx=bundle / fp32["file"], **kw)
        export = manifest.get("export", {})
        if export.get("exporter", "dynamo") != "dynamo":
            return {"error": f"eager-side names need the dynamo exporter (this bundle used {export.get('exporter')})"}
        from hrdeploy.rewrite import apply

        rewritten, _ = apply(eager, manifest.get("rewrites") or [])
        inp = manifest["input"]
        return localize(
            path, x, eager_model=rewritten, opset=int(export.get("opset", 18)),
            dynamic_batch=bool(inp.get("dynamic_batch")), dynamic_shape=bool(inp.get("dynamic_shape")),
            stride=int(inp.get("stride", 32)), **kw,
        )
    except Exception as err:  # localisation is a diagnostic: its failure must not hide the parity result
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}


@contextlib.contextmanager
def restored_torch_threads() -> Iterator[None]:
    """EagerRunner(threads=N) sets torch's global thread count; put it back afterwards."""
    import torch

    saved = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def validate_bundle(
    bundle: str | os.PathLike,
    *,
    backends: str | Sequence[str] | None = None,
    images: str | os.PathLike | None = None,
    batch: int | None = None,
    tolerances: Sequence[str] | None = None,
    seeded: int = 2,
    photos: bool = True,
    localize_failures: bool = True,
    threads: int | None = None,
    eager: Any = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Validate every artifact of `bundle`; return the report (see hrdeploy.validate.report for files).

    `batch` None runs each artifact at its own batch (1 for dynamic ones). A batch an artifact cannot take
    is a UserError; a backend that cannot run here (no TensorRT, no GPU, no engine) is a skipped row.
    """
    with restored_torch_threads():
        return _validate_bundle(bundle, backends, images, batch, tolerances, seeded, photos, localize_failures,
                                threads, eager, log)


def _validate_bundle(
    bundle: str | os.PathLike,
    backends: str | Sequence[str] | None,
    images: str | os.PathLike | None,
    batch: int | None,
    tolerances: Sequence[str] | None,
    seeded: int,
    photos: bool,
    localize_failures: bool,
    threads: int | None,
    eager: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    names = parse_backends(backends)
    tol = parse_tolerances(tolerances)
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be a positive integer, got {batch}")
    targets = plan_targets(bundle, manifest, names)

    skipped: list[dict[str, Any]] = []
    if "trt" in names and not any(t.backend == "trt" for t in targets):
        skipped.append({"backend": "trt", "target": "-", "reason": f"bundle has no TensorRT engine "
                        f"(build one with `hrdeploy build {bundle}` on a CUDA host)"})
    batches: dict[str, int] = {}
    for t in targets:
        if t.backend == "eager":
            batches[t.key] = batch or 1
        else:
            hint = ("re-export with --dynamic-batch" if t.backend == "ort"
                    else "rebuild the engine with a wider --min-batch/--max-batch")
            batches[t.key] = choose_batch(batch, batch_range(bundle, manifest, t.key), t.file or t.key, hint)

    inputs = validation_inputs(manifest, images, photos=photos, seeded=seeded)
    if not inputs:
        raise UserError("no validation inputs: pass --images DIR or keep the seeded inputs (--seeded N > 0)")
    groups = group_by_size(inputs)
    output_names = [o["name"] for o in manifest["outputs"]]

    start = time.perf_counter()
    if threads:  # before building the model too: its seeded init runs forward passes
        import torch

        torch.set_num_threads(threads)
    if eager is None:
        from hrdeploy.bundle import eager_model_for_bundle

        eager = eager_model_for_bundle(bundle)
    from hrdeploy.runtime.eager import EagerRunner

    log(f"reference: eager {manifest['model']['name']} (upstream form) on {len(inputs)} inputs")
    reference = run_groups(EagerRunner(eager, output_names, threads=threads), groups, max(batches.values(), default=1))

    rows: list[dict[str, Any]] = []
    for t in targets:
        label = f"{t.backend} {t.key}"
        if t.backend == "eager" and not manifest.get("rewrites"):
            skipped.append({"backend": "eager", "target": "eager", "reason": "no rewrites: the export-friendly "
                            "model is the reference itself"})
            continue
        if t.backend == "trt" and (why := trt_unavailable()):
            skipped.append({"backend": "trt", "target": t.key, "file": t.file, "reason": why})
            continue
        try:
            runner = _open_target(t, bundle, manifest, eager, threads)
        except UserError as err:
            if t.backend != "trt":
                raise
            skipped.append({"backend": "trt", "target": t.key, "file": t.file, "reason": str(err)})
            continue
        log(f"running {label} at batch {batches[t.key]}")
        t0 = time.perf_counter()
        outs = run_groups(runner, groups, batches[t.key])
        seconds = time.perf_counter() - t0
        tolerance = tol.get(t.precision, tol["fp32"])
        row: dict[str, Any] = {
            "target": t.key, "backend": t.backend, "precision": t.precision, "file": t.file,
            "batch": batches[t.key], "seconds": round(seconds, 3), "outputs": {}, "failures": [],
        }
        entry = manifest["artifacts"].get(t.key) if t.backend != "eager" else None
        if entry and entry.get("sha256") and sha256(bundle / entry["file"]) != entry["sha256"]:
            row["warning"] = f"{entry['file']} changed since the manifest recorded it"
        for name in output_names:
            refs = [reference[s][name] for s in groups]
            got = [outs[s][name] for s in groups]
            if any(r.shape != g.shape for r, g in zip(refs, got, strict=True)):
                row["outputs"][name] = {"shape_mismatch": [list(refs[0].shape), list(got[0].shape)]}
                row["failures"].append(f"{name}: shape {list(got[0].shape)} != eager {list(refs[0].shape)}")
                continue
            metrics = compare_output(name, refs, got, manifest)
            row["outputs"][name] = metrics
            row["failures"] += [f"{name}: {f}" for f in check(metrics, tolerance)]
        row["per_input"] = per_input(groups, reference, outs, output_names[0]) if not any(
            "shape" in f for f in row["failures"]) else []
        row["passed"] = not row["failures"]
        if not row["passed"] and localize_failures and row["per_input"]:
            worst = max(row["per_input"], key=lambda r: (np.nan_to_num(r["max_rel"], nan=np.inf)))
            item = next(i for i in inputs if i.name == worst["input"] and list(i.size) == worst["size"])
            n = batches[t.key] if (t.backend != "eager" and batch_range(bundle, manifest, t.key)[0] ==
                                   batch_range(bundle, manifest, t.key)[1]) else 2
            x = np.repeat(item.array[None], n, axis=0)
            log(f"{label} failed; localising the first diverging node on input {item.name}")
            row["divergence"] = _localize_target(t, bundle, manifest, eager, x, tolerance, threads)
            row["divergence"]["input"] = item.name
            row["divergence"]["summary"] = describe(row["divergence"])
        rows.append(row)

    if not rows:
        reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        raise UserError(f"nothing to validate in {bundle} with backends {','.join(names)} ({reasons})")
    return {
        "stage": "validate",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": manifest["model"]["name"],
        "reference": "eager fp32 (upstream form)",
        "inputs": [{"name": i.name, "kind": i.kind, "size": list(i.size)} for i in inputs],
        "tolerances": {p: tol[p] for p in sorted({t.precision for t in targets} | {"fp32"}) if p in tol},
        "rows": rows,
        "skipped": skipped,
        "passed": all(r["passed"] for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }
