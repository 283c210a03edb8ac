"""`validate_bundle`: every artifact of a bundle, on every available backend, against eager fp32.

The reference is the upstream-form eager model the bundle was exported from (hrdeploy.bundle). Each
target (the rewritten eager model, each ONNX artifact on onnxruntime, each TensorRT engine) runs the
same inputs (hrdeploy.validate.inputs) in batches, and hrdeploy.parity judges it with the tolerance of its
precision (the table export, quantize and eval use):
- fp32 targets, and every target of a model without keypoints: tensor statistics of the outputs;
- fp16/int8 targets of top-down pose models: on person crops, the COCO AP drop when annotations are given,
  else keypoint agreement with eager on the crops the eager model finds in the photos (tensor statistics
  alongside, ungated); with no photos at all (seeded inputs only) they fall back to the tensor cosine.
A failing ONNX target is localised to its first diverging node (hrdeploy.validate.localize). The structure
follows Polygraphy's comparator: runners produce outputs, a comparator only compares.
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

from hrdeploy.bundle import Bundle
from hrdeploy.errors import UserError
from hrdeploy.manifest import Manifest
from hrdeploy.parity.compare import argmax_agreement, judge, label_agreement, tensor_stats
from hrdeploy.parity.pose import check_pose
from hrdeploy.parity.tolerances import LOCALIZE, parse_tolerances
from hrdeploy.validate.inputs import ValidationInput, group_by_size, validation_inputs
from hrdeploy.validate.localize import describe, localize

BACKENDS = ("eager", "ort", "trt")


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


def plan_targets(b: Bundle, backends: list[str]) -> list[Target]:
    """The targets of `backends` in this bundle: eager first, then ONNX artifacts, then engines."""
    if not b.artifacts:
        raise UserError(f"bundle {b.root} has no artifacts; create them with `hrdeploy export MODEL -o {b.root}`")
    targets = []
    if "eager" in backends:
        targets.append(Target("eager", "eager", "fp32"))
    for backend, kind in (("ort", "onnx"), ("trt", "engine")):
        if backend in backends:
            for key, art in b.artifacts.items():
                if art.kind == kind:
                    b.artifact(key)  # a missing, changed or unreadable file is a UserError before any work
                    if kind == "onnx":
                        art.onnx_model()
                    targets.append(Target(key, backend, art.precision, art.file))
    return targets


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
    manifest: Manifest,
) -> dict[str, float]:
    """Tensor statistics over all inputs of every size; heatmap-peak / label agreement where they apply."""
    metrics = tensor_stats(np.concatenate([r.ravel() for r in refs]), np.concatenate([o.ravel() for o in outs]))
    task = manifest.model.task
    kps = manifest.keypoints
    if metrics["non_finite"]:
        return metrics
    if task.startswith("pose") and kps:
        k = len(kps.names)
        parts = [argmax_agreement(r[:, :k], o[:, :k]) for r, o in zip(refs, outs, strict=True)]
        weights = [len(r) for r in refs]
        for key in parts[0]:
            values = [p[key] for p in parts]
            metrics[key] = float(max(values)) if key.startswith("max") else float(np.average(values, weights=weights))
    elif task == "segmentation":
        agree = [label_agreement(r, o)["label_agreement_pct"] for r, o in zip(refs, outs, strict=True)]
        metrics["label_agreement_pct"] = float(np.average(agree, weights=[r.size for r in refs]))
    return metrics


def tensor_gate(metrics: dict[str, Any], precision: str, pose_checked: bool) -> dict[str, Any]:
    """The tensor metrics a target is judged on: fp32 max rel + cosine; fp16/int8 cosine unless judged on crops."""
    if precision == "fp32":
        keys = ("max_rel", "cosine", "non_finite", "fp32_floor_rel")
    elif pose_checked:
        keys = ("non_finite",)
    else:
        keys = ("cosine", "non_finite")
    return {k: metrics[k] for k in keys if k in metrics}


def per_input(
    groups: dict[tuple[int, int], list[ValidationInput]], ref: dict, out: dict, name: str
) -> list[dict[str, Any]]:
    rows = []
    for size, items in groups.items():
        for i, item in enumerate(items):
            m = tensor_stats(ref[size][name][i], out[size][name][i])
            rows.append({"input": item.name, "size": list(size), "max_rel": m["max_rel"], "cosine": m["cosine"]})
    return rows


def _open_target(
    target: Target, bundle: Path, manifest: Manifest, eager: Any, threads: int | None
) -> Any:
    if target.backend == "eager":
        from hrdeploy.rewrite import apply
        from hrdeploy.runtime.eager import EagerRunner

        rewritten, _ = apply(eager, list(manifest.rewrites))
        return EagerRunner(rewritten, [o.name for o in manifest.outputs])
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
    manifest: Manifest,
    eager: Any,
    x: np.ndarray,
    precision: str,
    threads: int | None,
) -> dict[str, Any]:
    if target.backend != "ort":
        return {"error": f"localisation runs on ONNX artifacts; compare the engine's source ONNX ({target.backend})"}
    max_rel, min_cosine = LOCALIZE[precision]
    kw = {"max_rel": max_rel, "min_cosine": min_cosine, "threads": threads}
    path = bundle / str(target.file)
    fp32 = manifest.artifacts.get("onnx")
    try:
        if target.key != "onnx" and fp32 and (bundle / fp32.file).is_file():
            return localize(path, x, reference_onnx=bundle / fp32.file, **kw)
        export = manifest.export
        from hrdeploy.rewrite import apply

        rewritten, _ = apply(eager, list(manifest.rewrites))
        inp = manifest.input
        return localize(
            path, x, eager_model=rewritten, opset=int(export.get("opset", 18)),
            exporter=str(export.get("exporter", "dynamo")),
            dynamic_batch=inp.dynamic_batch, dynamic_shape=inp.dynamic_shape, stride=inp.stride, **kw,
        )
    except Exception as err:  # localisation is a diagnostic: its failure must not hide the parity result
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}


def pose_reference(b: Bundle, eager: Any, ann: str | os.PathLike | None, images: str | os.PathLike | None) -> Any:
    """Eager fp32 on person crops: the annotated people of `ann`, else the people it finds in the photos."""
    from hrdeploy.images import image_files
    from hrdeploy.parity.coco import CocoKeypoints, CropSet
    from hrdeploy.parity.crops import find_people
    from hrdeploy.parity.pose import Reference

    def run(x: np.ndarray) -> np.ndarray:
        return eager.run(x)[b.output_names[0]]

    hw, mean, std = b.input.size, b.input.mean, b.input.std
    find = run
    if "onnx" in b.artifacts and b.artifacts["onnx"].exists:  # the person search runs dozens of windows a photo
        fp32 = b.artifacts["onnx"].open_runner()

        def find(x: np.ndarray) -> np.ndarray:
            return fp32.run(x)[b.output_names[0]]
    if ann is not None:
        coco = CocoKeypoints(ann, images)  # type: ignore[arg-type]
        return Reference.compute(run, CropSet.build(coco.gt_boxes(), hw, mean, std), coco)
    if images is not None:
        boxes = find_people(image_files(images), find, hw, mean, std)
    else:
        import tempfile

        from hrdeploy.pose.samples import write_sample_photos

        with tempfile.TemporaryDirectory(prefix="hrdeploy-photos-") as tmp:
            boxes = find_people(write_sample_photos(tmp), find, hw, mean, std)
            crops = CropSet.build(boxes, hw, mean, std)
        return Reference.compute(run, crops)
    return Reference.compute(run, CropSet.build(boxes, hw, mean, std))


def pose_ref_source(ann: str | os.PathLike | None, images: str | os.PathLike | None) -> str:
    if ann is not None:
        return f"annotated people of {Path(ann).name}"
    return f"people the eager model finds in {images or 'scikit-image sample photos'}"


def _float64_runner(eager: Any, output_names: list[str]) -> Any:
    """The eager model in float64: the exact reference an fp32 rounding floor is measured against."""
    import copy

    import torch

    from hrdeploy.runtime.eager import EagerRunner

    return EagerRunner(copy.deepcopy(eager).double(), output_names, dtype=torch.float64)


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
    bundle: str | os.PathLike | Bundle,
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
    ann: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Validate every artifact of `bundle` (a path or an opened Bundle); return the report (files: see
    hrdeploy.validate.report).

    `batch` None runs each artifact at its own batch (1 for dynamic ones). A batch an artifact cannot take
    is a UserError; a backend that cannot run here (no TensorRT, no GPU, no engine) is a skipped row.
    `ann` (a COCO keypoint json, with `images` its folder) judges fp16/int8 pose targets by COCO AP drop.
    """
    if ann is not None and images is None:
        raise UserError("--ann needs --images, the folder of the annotated images")
    with restored_torch_threads():
        return _validate_bundle(bundle, backends, images, batch, tolerances, seeded, photos, localize_failures,
                                threads, eager, ann, log)


def _validate_bundle(
    bundle: str | os.PathLike | Bundle,
    backends: str | Sequence[str] | None,
    images: str | os.PathLike | None,
    batch: int | None,
    tolerances: Sequence[str] | None,
    seeded: int,
    photos: bool,
    localize_failures: bool,
    threads: int | None,
    eager: Any,
    ann: str | os.PathLike | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    bundle, manifest = b.root, b.manifest
    names = parse_backends(backends)
    tol = parse_tolerances(tolerances)
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be a positive integer, got {batch}")
    targets = plan_targets(b, names)

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
            batches[t.key] = choose_batch(batch, b.artifacts[t.key].batch_range, t.file or t.key, hint)

    inputs = validation_inputs(b.input, images, photos=photos, seeded=seeded)
    if not inputs:
        raise UserError("no validation inputs: pass --images DIR or keep the seeded inputs (--seeded N > 0)")
    groups = group_by_size(inputs)
    output_names = list(b.output_names)

    start = time.perf_counter()
    if threads:  # before building the model too: its seeded init runs forward passes
        import torch

        torch.set_num_threads(threads)
    if eager is None:
        eager = b.eager_model()
    from hrdeploy.runtime.eager import EagerRunner

    log(f"reference: eager {b.model.name} (upstream form) on {len(inputs)} inputs")
    eager_runner = EagerRunner(eager, output_names, threads=threads)
    reference = run_groups(eager_runner, groups, max(batches.values(), default=1))
    exact: dict[str, Any] = {}  # float64 eager outputs, computed if an fp32 row needs its rounding floor
    pose_ref = None
    if (b.is_pose and b.model.task == "pose_topdown" and any(t.precision != "fp32" for t in targets)
            and (ann is not None or photos or images is not None)):
        log("reference: eager on person crops")
        pose_ref = pose_reference(b, eager_runner, ann, images)

    rows: list[dict[str, Any]] = []
    for t in targets:
        label = f"{t.backend} {t.key}"
        if t.backend == "eager" and not manifest.rewrites:
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
        pose_checked = pose_ref is not None and t.precision != "fp32"
        row: dict[str, Any] = {
            "target": t.key, "backend": t.backend, "precision": t.precision, "file": t.file,
            "batch": batches[t.key], "seconds": round(seconds, 3), "outputs": {}, "failures": [],
        }
        for name in output_names:
            refs = [reference[s][name] for s in groups]
            got = [outs[s][name] for s in groups]
            if any(r.shape != g.shape for r, g in zip(refs, got, strict=True)):
                row["outputs"][name] = {"shape_mismatch": [list(refs[0].shape), list(got[0].shape)]}
                row["failures"].append(f"{name}: shape {list(got[0].shape)} != eager {list(refs[0].shape)}")
                continue
            metrics = compare_output(name, refs, got, manifest)
            row["outputs"][name] = metrics
            failures = judge(tensor_gate(metrics, t.precision, pose_checked), tolerance)
            if t.precision == "fp32" and failures and not judge({"cosine": metrics["cosine"]}, tolerance):
                if not exact:
                    exact.update(run_groups(_float64_runner(eager, output_names), groups, 1))
                ex = np.concatenate([exact[s][name].ravel() for s in groups])
                metrics["fp32_floor_rel"] = tensor_stats(ex, np.concatenate([r.ravel() for r in refs]))["max_rel"]
                failures = judge(tensor_gate(metrics, t.precision, pose_checked), tolerance)
            row["failures"] += [f"{name}: {f}" for f in failures]
        if pose_checked:
            lo_hi = (1, 1024) if t.backend == "eager" else b.artifacts[t.key].batch_range
            n = lo_hi[0] if lo_hi[0] == lo_hi[1] else min(max(batch or 8, lo_hi[0]), lo_hi[1])
            pose = check_pose(pose_ref, lambda x, r=runner: r.run(x)[output_names[0]], tolerance, n,
                              fixed_batch=lo_hi[0] == lo_hi[1], trained=b.model.checkpoint is not None)
            pose.pop("keypoints")
            row["pose"] = {k: pose[k] for k in ("mode", "people", "gated", "tolerance", "agreement", "failures")}
            if "stats" in pose:
                row["pose"].update(ap=pose["stats"]["AP"], eager_ap=pose["reference_stats"]["AP"])
            row["failures"] += pose["failures"]
        row["per_input"] = per_input(groups, reference, outs, output_names[0]) if not any(
            "shape" in f for f in row["failures"]) else []
        row["passed"] = not row["failures"]
        if not row["passed"] and localize_failures and row["per_input"]:
            worst = max(row["per_input"], key=lambda r: (np.nan_to_num(r["max_rel"], nan=np.inf)))
            item = next(i for i in inputs if i.name == worst["input"] and list(i.size) == worst["size"])
            fixed = t.backend != "eager" and len(set(b.artifacts[t.key].batch_range)) == 1
            n = batches[t.key] if fixed else 2
            x = np.repeat(item.array[None], n, axis=0)
            log(f"{label} failed; localising the first diverging node on input {item.name}")
            row["divergence"] = _localize_target(t, bundle, manifest, eager, x, t.precision, threads)
            row["divergence"]["input"] = item.name
            row["divergence"]["summary"] = describe(row["divergence"])
        rows.append(row)

    if not rows:
        reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        raise UserError(f"nothing to validate in {bundle} with backends {','.join(names)} ({reasons})")
    return {
        "stage": "validate",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": b.model.name,
        "reference": "eager fp32 (upstream form)",
        "inputs": [{"name": i.name, "kind": i.kind, "size": list(i.size)} for i in inputs],
        "tolerances": {p: tol[p].as_dict() for p in sorted({t.precision for t in targets} | {"fp32"}) if p in tol},
        "crops": None if pose_ref is None else {
            "people": len(pose_ref.crops), "source": pose_ref_source(ann, images),
            "mode": "coco-ap" if pose_ref.coco is not None else "crop-agreement",
            **({"eager_ap": pose_ref.stats["AP"]} if pose_ref.stats else {})},
        "rows": rows,
        "skipped": skipped,
        "passed": all(r["passed"] for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }
