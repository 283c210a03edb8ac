"""`evaluate_bundle`: COCO keypoint AP (pycocotools) of the eager model and each artifact on annotated people.

Top-down: the ground-truth person boxes (or a detection file's boxes) are cropped once, every runner sees
the same crops in batches, and hrdeploy.parity judges each artifact's AP drop against eager fp32 with the
tolerance of its precision. Bottom-up: whole images with HigherHRNet's grouping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hrdeploy.bundle import Artifact, Bundle
from hrdeploy.errors import UserError
from hrdeploy.parity.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from hrdeploy.parity.coco import CocoKeypoints, CropSet, bottomup_results, results_from_keypoints
from hrdeploy.parity.comparator import compare_ap
from hrdeploy.parity.pose import Reference, check_pose
from hrdeploy.parity.tolerances import Tolerance, parse_tolerances

STATS = ("AP", "AP50", "AP75", "AR", "mean_oks")


def select_artifacts(b: Bundle, names: Sequence[str], all_: bool) -> list[Artifact]:
    """The artifacts to score: `names` in order, every one with `all_`, else the fp32 ONNX."""
    if all_:
        return [b.artifact(k) for k in b.artifacts]
    return [b.artifact(k) for k in (names or ["onnx"])]


def _batch(art: Artifact, batch: int) -> tuple[int, bool]:
    lo, hi = art.batch_range
    return min(max(batch, lo), hi), lo == hi


def evaluate_bundle(
    bundle: str | os.PathLike,
    ann: str | os.PathLike,
    images: str | os.PathLike,
    *,
    artifacts: Sequence[str] = (),
    all_artifacts: bool = False,
    dets: str | os.PathLike | None = None,
    min_det_score: float = 0.0,
    flip_test: bool = False,
    dark: bool = False,
    batch: int = 8,
    tolerances: Sequence[str] | None = None,
    threads: int | None = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """One row per model (eager fp32 first, then each artifact): COCO AP stats, AP drop, speed, verdict.

    bootstrap: resamples of the people (images for bottom-up or detection boxes) for each AP drop's paired
    95 % interval (hrdeploy.parity.bootstrap; 0: none), seeded with `seed`. The verdict is on the point estimate.

    The report's "predictions" maps each row's key to its COCO results list (what pycocotools scored).
    """
    if batch < 1:
        raise UserError(f"--batch must be a positive integer, got {batch}")
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (off) or a number of resamples, got {bootstrap}")
    b = Bundle.open(bundle)
    if not b.is_pose:
        raise UserError(f"{b.model.name} is a {b.model.task} model; `hrdeploy eval` scores pose models (COCO AP)")
    chosen = select_artifacts(b, artifacts, all_artifacts)
    tol = parse_tolerances(tolerances)
    coco = CocoKeypoints(ann, images)
    kps = b.keypoints
    assert kps is not None
    if coco.num_keypoints != len(kps.names):
        raise UserError(f"{coco.ann.name} annotates {coco.num_keypoints} keypoints but {b.model.name} predicts "
                        f"{len(kps.names)} ({kps.dataset}); use annotations of the model's keypoint set")
    topdown = b.model.task == "pose_topdown"
    boxes = (coco.det_boxes(dets, min_det_score) if dets else coco.gt_boxes()) if topdown else []
    from hrdeploy.runtime.factory import eager_runner, open_runner

    ev = _Eval(b, coco, tol, flip_test, batch, bootstrap, seed)
    with eager_runner(b.eager_model(), b.output_names, threads) as eager:
        ev.reference(eager, boxes, kps.flip_index if flip_test else None, "dark" if dark else "default", log)
    for art in chosen:
        backend = "trt" if art.kind == "engine" else "ort"
        try:
            runner = open_runner(art, threads).activate()
        except UserError as err:
            if art.kind != "engine":
                raise
            ev.skipped.append({"artifact": art.key, "file": art.file, "reason": str(err)})
            continue
        log(f"{art.key} ({art.file}) on {backend}")
        with runner:
            ev.score(art, backend, runner)
    return ev.report(f"detections {dets}" if dets else ("ground truth" if topdown else "none (bottom-up)"),
                     "dark" if dark else "default")


@dataclass
class _Eval:
    """One evaluation: the eager reference, then each artifact scored against it by the comparator."""

    b: Bundle
    coco: CocoKeypoints
    tol: dict[str, Tolerance]
    flip_test: bool
    batch: int
    bootstrap: int
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # COCO results per model
    ref: Reference | None = None  # top-down: eager on the person crops
    ref_stats: Any = None  # bottom-up: eager's COCO stats and per-image outcomes
    ref_outcomes: Any = None
    cfg: Any = None  # bottom-up: the pipeline config (grouping) of the bundle

    @property
    def topdown(self) -> bool:
        return self.b.model.task == "pose_topdown"

    def reference(self, eager: Any, boxes: list, flip_index: Sequence[int] | None, post_process: str,
                  log: Callable[[str], None]) -> None:
        b, coco = self.b, self.coco
        if self.topdown:
            crops = CropSet.build(boxes, b.input.size, b.input.mean, b.input.std)
            log(f"eager fp32 on {len(crops)} person crops")
            self.ref = ref = Reference.compute(lambda x: eager.run(x)[b.output_names[0]], crops, coco, self.batch,
                                               flip_index=flip_index, post_process=post_process)
            self.rows.append(self._row("eager", "eager", "fp32", None, self.batch, ref.stats, ref.seconds, len(crops)))
            self.predictions["eager"] = results_from_keypoints(crops.boxes, ref.keypoints, coco.category_id)
            return
        from hrdeploy.pose.pipeline import config_from_bundle

        self.cfg = config_from_bundle(b)
        log("eager fp32 on whole images (bottom-up grouping)")
        results, seconds = bottomup_results(eager, coco, self.cfg, self.flip_test)
        self.ref_stats, self.ref_outcomes = coco.evaluate(results)
        self.predictions["eager"] = results
        self.rows.append(self._row("eager", "eager", "fp32", None, 1, self.ref_stats, seconds, len(coco.image_ids())))

    def score(self, art: Artifact, backend: str, runner: Any) -> None:
        """The artifact's row: its COCO AP, judged against eager's (AP drop with its paired interval)."""
        tol, coco = self.tol[art.precision], self.coco
        if self.ref is not None:
            n, fixed = _batch(art, self.batch)
            res = check_pose(self.ref, lambda x: runner.run(x)[self.b.output_names[0]], tol, n, fixed_batch=fixed,
                             bootstrap=self.bootstrap, seed=self.seed)
            row = self._row(art.key, backend, art.precision, art.file, n, res["stats"], res["seconds"],
                            len(self.ref.crops))
            self.predictions[art.key] = results_from_keypoints(self.ref.crops.boxes, res["keypoints"],
                                                               coco.category_id)
        else:
            results, seconds = bottomup_results(runner, coco, self.cfg, self.flip_test)
            stats, outcomes = coco.evaluate(results)
            self.predictions[art.key] = results
            row = self._row(art.key, backend, art.precision, art.file, 1, stats, seconds, len(coco.image_ids()))
            res = compare_ap(self.ref_stats, stats, tol, ref_outcomes=self.ref_outcomes, outcomes=outcomes,
                             bootstrap=self.bootstrap, seed=self.seed)
        keys = ("gated", "tolerance", "failures", "passed", "agreement", "interval")
        row.update({k: res[k] for k in keys if k in res})
        self.rows.append(row)

    def report(self, boxes: str, post_process: str) -> dict[str, Any]:
        """The evaluation's report: every row with its AP change against eager (dAP, AP points)."""
        b, coco, rows = self.b, self.coco, self.rows
        for row in rows:
            row["dAP"] = round(100.0 * (row["AP"] - rows[0]["AP"]), 2)
        return {
            "model": b.model.name, "bundle": str(b.root), "input_size": list(b.input.size),
            "annotations": str(coco.ann), "images": str(coco.images), "boxes": boxes,
            "people": rows[0]["people"], "flip_test": self.flip_test, "post_process": post_process,
            "scorer": "pycocotools COCOeval (keypoints)", "bootstrap": {"resamples": self.bootstrap, "seed": self.seed},
            "rows": rows, "skipped": self.skipped, "passed": all(r.get("passed", True) for r in rows),
            "predictions": self.predictions,
        }

    def _row(self, key: str, backend: str, precision: str, file: str | None, batch: int,
             stats: dict[str, Any] | None, seconds: float, inputs: int) -> dict[str, Any]:
        return _row(key, backend, precision, file, batch, stats, seconds, inputs, self.flip_test)


def _row(key: str, backend: str, precision: str, file: str | None, batch: int, stats: dict[str, Any] | None,
         seconds: float, inputs: int, flip: bool) -> dict[str, Any]:
    stats = stats or {}
    runs = inputs * (2 if flip else 1)
    return {"artifact": key, "backend": backend, "precision": precision, "file": file, "batch": batch,
            **{k: round(float(stats[k]), 4) for k in (*STATS, "APm", "APl") if k in stats},
            "people": int(stats.get("people", inputs)),
            "crops_per_s": round(runs / seconds, 2) if seconds > 0 else None}
