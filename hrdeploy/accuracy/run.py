"""`evaluate_bundle`: COCO keypoint AP (pycocotools) of the eager model and each artifact on annotated people.

Top-down: the ground-truth person boxes (or a detection file's boxes) are cropped once, every runner sees
the same crops in batches, and hrdeploy.parity judges each artifact's AP drop against eager fp32 with the
tolerance of its precision. Bottom-up: whole images with HigherHRNet's grouping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from hrdeploy.bundle import Artifact, Bundle
from hrdeploy.errors import UserError
from hrdeploy.parity.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_interval
from hrdeploy.parity.coco import CocoKeypoints, CropSet, bottomup_results, results_from_keypoints
from hrdeploy.parity.compare import bounds_for, judge
from hrdeploy.parity.pose import Reference, check_pose
from hrdeploy.parity.tolerances import parse_tolerances

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
    flip_index = kps.flip_index
    topdown = b.model.task == "pose_topdown"
    boxes = (coco.det_boxes(dets, min_det_score) if dets else coco.gt_boxes()) if topdown else []
    from hrdeploy.runtime.eager import EagerRunner

    eager = EagerRunner(b.eager_model(), b.output_names, threads=threads)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    predictions: dict[str, list[dict[str, Any]]] = {}  # COCO results per model, what pycocotools scored
    if topdown:
        crops = CropSet.build(boxes, b.input.size, b.input.mean, b.input.std)
        log(f"eager fp32 on {len(crops)} person crops")
        ref = Reference.compute(lambda x: eager.run(x)[b.output_names[0]], crops, coco, batch,
                                flip_index=flip_index if flip_test else None,
                                post_process="dark" if dark else "default")
        rows.append(_row("eager", "eager", "fp32", None, batch, ref.stats, ref.seconds, len(crops), flip_test))
        predictions["eager"] = results_from_keypoints(crops.boxes, ref.keypoints, coco.category_id)
    else:
        from hrdeploy.pose.pipeline import config_from_bundle

        cfg = config_from_bundle(b)
        log("eager fp32 on whole images (bottom-up grouping)")
        results, seconds = bottomup_results(eager, coco, cfg, flip_test)
        ref_stats, ref_outcomes = coco.evaluate(results)
        predictions["eager"] = results
        rows.append(_row("eager", "eager", "fp32", None, 1, ref_stats, seconds, len(coco.image_ids()), flip_test))
    for art in chosen:
        backend = "trt" if art.kind == "engine" else "ort"
        try:
            runner = art.open_runner(threads=threads)
        except UserError as err:
            if art.kind != "engine":
                raise
            skipped.append({"artifact": art.key, "file": art.file, "reason": str(err)})
            continue
        log(f"{art.key} ({art.file}) on {backend}")
        with runner:
            if topdown:
                n, fixed = _batch(art, batch)
                res = check_pose(ref, lambda x, r=runner: r.run(x)[b.output_names[0]], tol[art.precision], n,
                                 fixed_batch=fixed, bootstrap=bootstrap, seed=seed)
                row = _row(art.key, backend, art.precision, art.file, n, res["stats"], res["seconds"], len(crops),
                           flip_test)
                row.update(gated=res["gated"], tolerance=res["tolerance"], failures=res["failures"],
                           passed=res["passed"], agreement=res["agreement"])
                if "interval" in res:
                    row["interval"] = res["interval"]
                predictions[art.key] = results_from_keypoints(crops.boxes, res["keypoints"], coco.category_id)
            else:
                results, seconds = bottomup_results(runner, coco, cfg, flip_test)
                stats, outcomes = coco.evaluate(results)
                predictions[art.key] = results
                row = _row(art.key, backend, art.precision, art.file, 1, stats, seconds, len(coco.image_ids()),
                           flip_test)
                gated = {"ap_drop": 100.0 * (ref_stats["AP"] - stats["AP"])}
                failures = judge(gated, tol[art.precision])
                row.update(gated=gated, tolerance=bounds_for(tol[art.precision], gated), failures=failures,
                           passed=not failures)
                if bootstrap and ref_outcomes is not None and outcomes is not None:
                    row["interval"] = paired_interval(ref_outcomes, outcomes, bootstrap, seed,
                                                      tol[art.precision].max_ap_drop)
        rows.append(row)
    eager_ap = rows[0]["AP"]
    for row in rows:
        row["dAP"] = round(100.0 * (row["AP"] - eager_ap), 2)
    return {
        "model": b.model.name, "bundle": str(b.root), "input_size": list(b.input.size),
        "annotations": str(coco.ann), "images": str(coco.images),
        "boxes": f"detections {dets}" if dets else ("ground truth" if topdown else "none (bottom-up)"),
        "people": rows[0]["people"], "flip_test": flip_test, "post_process": "dark" if dark else "default",
        "scorer": "pycocotools COCOeval (keypoints)", "bootstrap": {"resamples": bootstrap, "seed": seed},
        "rows": rows, "skipped": skipped, "passed": all(r.get("passed", True) for r in rows),
        "predictions": predictions,
    }


def _row(key: str, backend: str, precision: str, file: str | None, batch: int, stats: dict[str, Any] | None,
         seconds: float, inputs: int, flip: bool) -> dict[str, Any]:
    stats = stats or {}
    runs = inputs * (2 if flip else 1)
    return {"artifact": key, "backend": backend, "precision": precision, "file": file, "batch": batch,
            **{k: round(float(stats[k]), 4) for k in (*STATS, "APm", "APl") if k in stats},
            "people": int(stats.get("people", inputs)),
            "crops_per_s": round(runs / seconds, 2) if seconds > 0 else None}
