"""`validate_bundle`: every artifact of a bundle, on every available backend, against eager fp32.

The reference is the upstream-form eager model the bundle was exported from (hrdeploy.bundle). It and each
target (the rewritten eager model, each ONNX artifact on onnxruntime, each TensorRT engine) run the same
inputs (hrdeploy.validate.inputs) through the comparator (`Comparator.run` on a `GroupedInputs` loader:
batches of one input size, at the target's batch), and hrdeploy.parity judges each target with the
tolerance of its precision (the table export, quantize and eval use):
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
from hrdeploy.parity.comparator import Comparator, Outputs
from hrdeploy.parity.compare import argmax_agreement, label_agreement, tensor_stats
from hrdeploy.parity.loaders import GroupedInputs
from hrdeploy.parity.tolerances import LOCALIZE, Tolerance, parse_tolerances
from hrdeploy.validate.inputs import ValidationInput, validation_inputs
from hrdeploy.validate.localize import describe, localize

BACKENDS = ("eager", "ort", "trt")


@dataclass
class Target:
    """One artifact on one backend (or the rewritten eager model), judged with its precision's tolerance."""

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
    """`requested` if the artifact's batch range `lo_hi` holds it (else a UserError), the smallest when None."""
    lo, hi = lo_hi
    if requested is None:
        return lo
    if not lo <= requested <= hi:
        accepted = f"a static batch of {lo}" if lo == hi else f"batch {lo}..{hi}"
        raise UserError(f"--batch {requested} is outside what {what} accepts ({accepted}); {static_hint}")
    return requested


def _target_batches(b: Bundle, targets: list[Target], batch: int | None) -> dict[str, int]:
    """The batch each target runs at: `batch`, else eager's 1 and each artifact's smallest."""
    batches: dict[str, int] = {}
    for t in targets:
        if t.backend == "eager":
            batches[t.key] = batch or 1
        else:
            hint = ("re-export with --dynamic-batch" if t.backend == "ort"
                    else "rebuild the engine with a wider --min-batch/--max-batch")
            batches[t.key] = choose_batch(batch, b.artifacts[t.key].batch_range, t.file or t.key, hint)
    return batches


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
    inputs: list[ValidationInput], groups: dict[tuple[int, int], list[int]], ref: dict, out: dict, name: str
) -> list[dict[str, Any]]:
    """max rel and cosine of output `name` on each input (`groups`: the inputs' indices by size, as `ref`/`out`)."""
    rows = []
    for size, idx in groups.items():
        for k, i in enumerate(idx):
            m = tensor_stats(ref[size][name][k], out[size][name][k])
            rows.append({"input": inputs[i].name, "size": list(size), "max_rel": m["max_rel"], "cosine": m["cosine"]})
    return rows


def _open_target(target: Target, b: Bundle, eager: Any, threads: int | None) -> Any:
    """The target's runner from the factory, activated (an engine that cannot load here fails now)."""
    from hrdeploy.runtime.factory import eager_runner, open_runner

    if target.backend == "eager":
        from hrdeploy.rewrite import apply

        rewritten, _ = apply(eager, list(b.manifest.rewrites))
        return eager_runner(rewritten, b.output_names).activate()
    return open_runner(b.artifacts[target.key], threads if target.backend == "ort" else None).activate()


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
    """The failing target's first diverging node: against the fp32 ONNX for a variant, else the eager model."""
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
    from hrdeploy.parity.loaders import annotated_people, found_people
    from hrdeploy.parity.pose import Reference

    def run(x: np.ndarray) -> np.ndarray:
        return eager.run(x)[b.output_names[0]]

    spec = (b.input.size, b.input.mean, b.input.std)
    if ann is not None:
        crops, coco = annotated_people(ann, images, *spec)  # type: ignore[arg-type]
        return Reference.compute(run, crops, coco)
    find = run
    if "onnx" in b.artifacts and b.artifacts["onnx"].exists:  # the person search runs dozens of windows a photo
        from hrdeploy.runtime.factory import open_runner

        fp32 = open_runner(b.artifacts["onnx"])

        def find(x: np.ndarray) -> np.ndarray:
            return fp32.run(x)[b.output_names[0]]
    found = {"fixed_batch": b.input.static_batch}
    if images is not None:
        return Reference.compute(run, found_people(image_files(images), find, *spec, **found))
    import tempfile

    from hrdeploy.pose.samples import write_sample_photos

    with tempfile.TemporaryDirectory(prefix="hrdeploy-photos-") as tmp:
        crops = found_people(write_sample_photos(tmp), find, *spec, **found)
    return Reference.compute(run, crops)


def pose_ref_source(ann: str | os.PathLike | None, images: str | os.PathLike | None) -> str:
    """Where the reference's person crops come from, for the report."""
    if ann is not None:
        return f"annotated people of {Path(ann).name}"
    return f"people the eager model finds in {images or 'scikit-image sample photos'}"


@contextlib.contextmanager
def restored_torch_threads() -> Iterator[None]:
    """EagerRunner(threads=N) sets torch's global thread count; put it back afterwards."""
    import torch

    saved = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class ValidateConfig:
    """One validate run: which backends, on which inputs, at which batch, judged how (see `validate_bundle`)."""

    backends: str | Sequence[str] | None = None
    images: str | os.PathLike | None = None
    batch: int | None = None
    tolerances: Sequence[str] | None = None
    seeded: int = 2
    photos: bool = True
    localize_failures: bool = True
    threads: int | None = None
    ann: str | os.PathLike | None = None

    def check(self) -> None:
        """UserError for a value or a combination that no bundle can satisfy."""
        if self.ann is not None and self.images is None:
            raise UserError("--ann needs --images, the folder of the annotated images")
        parse_backends(self.backends)
        parse_tolerances(self.tolerances)
        if self.batch is not None and self.batch < 1:
            raise UserError(f"--batch must be a positive integer, got {self.batch}")


def validate_bundle(bundle: str | os.PathLike | Bundle, *, log: Callable[[str], None] | None = None,
                    **options: Any) -> dict[str, Any]:
    """Validate every artifact of `bundle` (a path or an opened Bundle); return the report (files: see
    hrdeploy.validate.report).

    `options` are the fields of ValidateConfig:
    backends: a comma list or sequence of eager, ort, trt [default: all]; a backend that cannot run here (no
        TensorRT, no GPU, no engine) is a skipped row.
    images / photos / seeded: the inputs (hrdeploy.validate.inputs): the photos of folder `images`, else
        scikit-image's samples unless `photos` is False, and `seeded` seeded random ones.
    batch: None runs each artifact at its own batch (1 for dynamic ones); one an artifact cannot take is a
        UserError.
    tolerances: overrides of the tolerance table, "[PRECISION.]METRIC=VALUE".
    localize_failures: search a failing ONNX target's first diverging node.
    threads: CPU threads for onnxruntime and eager (torch's global count is restored afterwards).
    ann: a COCO keypoint json (with `images` its folder) judging fp16/int8 pose targets by COCO AP drop.
    """
    return Validator(bundle, ValidateConfig(**options), log).run()


class Validator:
    """The validate stage: plan the targets, load the inputs, run the eager reference, judge each target, report.

    Holds what every target shares: the bundle, the inputs and the eager model's outputs on them.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle, cfg: ValidateConfig,
                 log: Callable[[str], None] | None = None) -> None:
        cfg.check()
        self.cfg, self.say = cfg, log or (lambda _msg: None)
        self.b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.names = parse_backends(cfg.backends)
        self.tol = parse_tolerances(cfg.tolerances)
        self.eager: Any = None  # the bundle's eager fp32 model, built when the reference first runs
        self.reference: dict[tuple[int, int], Outputs] = {}  # eager fp32 outputs by input size
        self.pose_ref: Any = None
        self.exact_outputs: dict[tuple[int, int], Outputs] = {}  # float64 eager, when an fp32 row needs it

    def run(self) -> dict[str, Any]:
        """Every target judged against eager fp32; the report."""
        with restored_torch_threads():
            self._plan()
            self._load_inputs()
            start = time.perf_counter()
            self._reference()
            rows = [row for t in self.targets if (row := self._validate_target(t)) is not None]
            if not rows:
                reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in self.skipped)
                raise UserError(f"nothing to validate in {self.b.root} with backends {','.join(self.names)} "
                                f"({reasons})")
            return self._report(rows, start)

    def _plan(self) -> None:
        """The targets and the batch each runs at; a skipped row for trt when the bundle has no engine."""
        b = self.b
        self.targets = plan_targets(b, self.names)
        self.skipped: list[dict[str, Any]] = []
        if "trt" in self.names and not any(t.backend == "trt" for t in self.targets):
            self.skipped.append({"backend": "trt", "target": "-", "reason": f"bundle has no TensorRT engine "
                                 f"(build one with `hrdeploy build {b.root}` on a CUDA host)"})
        self.batches = _target_batches(b, self.targets, self.cfg.batch)

    def _load_inputs(self) -> None:
        """Photos and seeded inputs, and their indices by size (the order every runner's outputs are kept in)."""
        cfg = self.cfg
        self.inputs = validation_inputs(self.b.input, cfg.images, photos=cfg.photos, seeded=cfg.seeded)
        if not self.inputs:
            raise UserError("no validation inputs: pass --images DIR or keep the seeded inputs (--seeded N > 0)")
        self.groups = self._loader(1).groups

    def _loader(self, batch: int) -> GroupedInputs:
        """The inputs as the comparator's data loader: padded batches of `batch`, one input size at a time."""
        return GroupedInputs([i.array for i in self.inputs], batch)

    def _outputs(self, runner: Any, batch: int) -> dict[tuple[int, int], Outputs]:
        """`runner`'s outputs on every input (the comparator's run on `_loader(batch)`), by input size."""
        loader = self._loader(batch)
        return loader.by_size(Comparator.run([runner], loader).outputs[runner.name])

    def _exact(self) -> dict[tuple[int, int], Outputs]:
        """The float64 eager model's outputs by input size, computed on first use (an fp32 row's rounding floor)."""
        if not self.exact_outputs:
            from hrdeploy.runtime.factory import eager_runner

            self.exact_outputs.update(self._outputs(eager_runner(self.eager, self.b.output_names, exact=True), 1))
        return self.exact_outputs

    def _reference(self) -> None:
        """The eager fp32 model's outputs on the inputs, and on person crops when fp16/int8 pose targets need them."""
        cfg, b = self.cfg, self.b
        if cfg.threads:  # before building the model too: its seeded init runs forward passes
            import torch

            torch.set_num_threads(cfg.threads)
        self.eager = b.eager_model()
        from hrdeploy.runtime.factory import eager_runner

        self.say(f"reference: eager {b.model.name} (upstream form) on {len(self.inputs)} inputs")
        runner = eager_runner(self.eager, b.output_names, cfg.threads).activate()
        self.reference = self._outputs(runner, max(self.batches.values(), default=1))
        if self._needs_crops():
            self.say("reference: eager on person crops")
            self.pose_ref = pose_reference(b, runner, cfg.ann, cfg.images)

    def _needs_crops(self) -> bool:
        """fp16/int8 targets of a top-down pose model, and people to crop (annotated, or in photos)."""
        cfg, b = self.cfg, self.b
        return (b.is_pose and b.model.task == "pose_topdown" and any(t.precision != "fp32" for t in self.targets)
                and (cfg.ann is not None or cfg.photos or cfg.images is not None))

    def _validate_target(self, t: Target) -> dict[str, Any] | None:
        """One target's row, localised when it fails; None when the target is skipped."""
        runner = self._open(t)
        if runner is None:
            return None
        batch = self.batches[t.key]
        self.say(f"running {t.backend} {t.key} at batch {batch}")
        row = self._judge(t, runner, batch, self.tol.get(t.precision, self.tol["fp32"]))
        if not row["passed"] and self.cfg.localize_failures and row["per_input"]:
            self._add_divergence(row, t, batch)
        return row

    def _open(self, t: Target) -> Any:
        """The target's runner, or None with the reason in `skipped` (no rewrites to check, TensorRT unusable here)."""
        if t.backend == "eager" and not self.b.manifest.rewrites:
            self.skipped.append({"backend": "eager", "target": "eager", "reason": "no rewrites: the export-friendly "
                                 "model is the reference itself"})
            return None
        if t.backend == "trt" and (why := trt_unavailable()):
            self.skipped.append({"backend": "trt", "target": t.key, "file": t.file, "reason": why})
            return None
        try:
            return _open_target(t, self.b, self.eager, self.cfg.threads)
        except UserError as err:
            if t.backend != "trt":
                raise
            self.skipped.append({"backend": "trt", "target": t.key, "file": t.file, "reason": str(err)})
            return None

    def _judge(self, t: Target, runner: Any, batch: int, tolerance: Tolerance) -> dict[str, Any]:
        """One target's row: its outputs on every input against eager's (tensors), and on person crops (pose)."""
        t0 = time.perf_counter()
        with runner:
            outs = self._outputs(runner, batch)
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {
                "target": t.key, "backend": t.backend, "precision": t.precision, "file": t.file,
                "batch": batch, "seconds": round(seconds, 3), "outputs": {}, "failures": [],
            }
            pose_checked = self.pose_ref is not None and t.precision != "fp32"
            self._judge_outputs(row, outs, tolerance, t.precision, pose_checked)
            if pose_checked:
                self._judge_pose(row, t, runner, tolerance)
        shape_failed = any("shape" in f for f in row["failures"])
        row["per_input"] = [] if shape_failed else per_input(self.inputs, self.groups, self.reference, outs,
                                                             self.b.output_names[0])
        row["passed"] = not row["failures"]
        return row

    def _judge_outputs(self, row: dict[str, Any], outs: dict, tolerance: Tolerance, precision: str,
                       pose_checked: bool) -> None:
        """Each output's tensor metrics over all inputs, judged by the comparator (fp32: with the rounding floor)."""
        from hrdeploy.parity.comparator import judge_tensors

        for name in self.b.output_names:
            refs = [self.reference[s][name] for s in self.groups]
            got = [outs[s][name] for s in self.groups]
            if any(r.shape != g.shape for r, g in zip(refs, got, strict=True)):
                row["outputs"][name] = {"shape_mismatch": [list(refs[0].shape), list(got[0].shape)]}
                row["failures"].append(f"{name}: shape {list(got[0].shape)} != eager {list(refs[0].shape)}")
                continue
            metrics = compare_output(name, refs, got, self.b.manifest)
            row["outputs"][name] = metrics
            gated = tensor_gate(metrics, precision, pose_checked)

            def exact(name: str = name) -> np.ndarray:
                return np.concatenate([self._exact()[s][name].ravel() for s in self.groups])

            ref = np.concatenate([r.ravel() for r in refs])
            failures = judge_tensors(gated, tolerance, ref, exact if precision == "fp32" else None)
            if "fp32_floor_rel" in gated:
                metrics["fp32_floor_rel"] = gated["fp32_floor_rel"]
            row["failures"] += [f"{name}: {f}" for f in failures]

    def _judge_pose(self, row: dict[str, Any], t: Target, runner: Any, tolerance: Tolerance) -> None:
        """Keypoints on the eager reference's person crops (COCO AP drop, or agreement with eager), judged."""
        from hrdeploy.parity.pose import check_pose

        b = self.b
        lo_hi = (1, 1024) if t.backend == "eager" else b.artifacts[t.key].batch_range
        n = lo_hi[0] if lo_hi[0] == lo_hi[1] else min(max(self.cfg.batch or 8, lo_hi[0]), lo_hi[1])
        pose = check_pose(self.pose_ref, lambda x: runner.run(x)[b.output_names[0]], tolerance, n,
                          fixed_batch=lo_hi[0] == lo_hi[1], trained=b.model.checkpoint is not None)
        row["pose"] = {k: pose[k] for k in ("mode", "people", "gated", "tolerance", "agreement", "failures")}
        if "stats" in pose:
            row["pose"].update(ap=pose["stats"]["AP"], eager_ap=pose["reference_stats"]["AP"])
        row["failures"] += pose["failures"]

    def _add_divergence(self, row: dict[str, Any], t: Target, batch: int) -> None:
        """Localise a failing target's first diverging node on its worst input."""
        b = self.b
        worst = max(row["per_input"], key=lambda r: (np.nan_to_num(r["max_rel"], nan=np.inf)))
        item = next(i for i in self.inputs if i.name == worst["input"] and list(i.size) == worst["size"])
        fixed = t.backend != "eager" and len(set(b.artifacts[t.key].batch_range)) == 1
        x = np.repeat(item.array[None], batch if fixed else 2, axis=0)
        self.say(f"{t.backend} {t.key} failed; localising the first diverging node on input {item.name}")
        row["divergence"] = _localize_target(t, b.root, b.manifest, self.eager, x, t.precision, self.cfg.threads)
        row["divergence"]["input"] = item.name
        row["divergence"]["summary"] = describe(row["divergence"])

    def _report(self, rows: list[dict[str, Any]], start: float) -> dict[str, Any]:
        """The validate report: inputs, tolerances, crops, one row a target, skipped targets, verdict."""
        return {
            "stage": "validate",
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "model": self.b.model.name,
            "reference": "eager fp32 (upstream form)",
            "inputs": [{"name": i.name, "kind": i.kind, "size": list(i.size)} for i in self.inputs],
            "tolerances": {p: self.tol[p].as_dict() for p in sorted({t.precision for t in self.targets} | {"fp32"})
                           if p in self.tol},
            "crops": self._crops(),
            "rows": rows,
            "skipped": self.skipped,
            "passed": all(r["passed"] for r in rows),
            "seconds": round(time.perf_counter() - start, 2),
        }

    def _crops(self) -> dict[str, Any] | None:
        """The person crops fp16/int8 pose targets were judged on, or None."""
        ref = self.pose_ref
        if ref is None:
            return None
        return {"people": len(ref.crops), "source": pose_ref_source(self.cfg.ann, self.cfg.images),
                "mode": "coco-ap" if ref.coco is not None else "crop-agreement",
                **({"eager_ap": ref.stats["AP"]} if ref.stats else {})}

