"""`evaluate_bundle`: COCO keypoint AP (pycocotools) of the eager model and each artifact on annotated people.

Top-down: the ground-truth person boxes (or a detection file's boxes) are cropped once, every runner sees
the same crops in batches, and hrdeploy.parity judges each artifact's AP drop against eager fp32 with the
tolerance of its precision. Bottom-up: whole images with HigherHRNet's grouping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hrdeploy.bundle import Artifact, Bundle
from hrdeploy.errors import UserError
from hrdeploy.parity.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from hrdeploy.parity.coco import CocoKeypoints, CropSet, bottomup_results, results_from_keypoints
from hrdeploy.parity.comparator import compare_ap
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


@dataclass(frozen=True)
class EvalConfig:
    """One eval run: the annotated people, which artifacts, how crops are decoded, and the AP-drop interval."""

    ann: str | os.PathLike
    images: str | os.PathLike
    artifacts: Sequence[str] = ()
    all_artifacts: bool = False
    dets: str | os.PathLike | None = None
    min_det_score: float = 0.0
    flip_test: bool = False
    dark: bool = False
    batch: int = 8
    tolerances: Sequence[str] | None = None
    threads: int | None = None
    bootstrap: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @property
    def post_process(self) -> str:
        return "dark" if self.dark else "default"

    def check(self) -> None:
        """UserError for a value no bundle can satisfy."""
        if self.batch < 1:
            raise UserError(f"--batch must be a positive integer, got {self.batch}")
        if self.bootstrap < 0:
            raise UserError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}")


def evaluate_bundle(bundle: str | os.PathLike | Bundle, ann: str | os.PathLike, images: str | os.PathLike, *,
                    log: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """One row per model (eager fp32 first, then each artifact): COCO AP stats, AP drop, speed, verdict.

    `options` are the fields of EvalConfig. bootstrap: resamples of the people (images for bottom-up or
    detection boxes) for each AP drop's paired 95 % interval (hrdeploy.parity.bootstrap; 0: none), seeded with
    `seed`. The verdict is on the point estimate.

    The report's "predictions" maps each row's key to its COCO results list (what pycocotools scored).
    """
    return Evaluator(bundle, EvalConfig(ann, images, **options), log).run()


class Evaluator:
    """The eval stage: open and check, the eager reference, then each artifact scored against it by the
    comparator, and the report."""

    def __init__(self, bundle: str | os.PathLike | Bundle, cfg: EvalConfig,
                 log: Callable[[str], None] | None = None) -> None:
        cfg.check()
        self.cfg, self.say = cfg, log or (lambda _msg: None)
        self.b = b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        if not b.is_pose:
            raise UserError(f"{b.model.name} is a {b.model.task} model; `hrdeploy eval` scores pose models (COCO AP)")
        self.chosen = select_artifacts(b, cfg.artifacts, cfg.all_artifacts)
        self.tol = parse_tolerances(cfg.tolerances)
        self.coco = coco = CocoKeypoints(cfg.ann, cfg.images)
        assert b.keypoints is not None
        if coco.num_keypoints != len(b.keypoints.names):
            raise UserError(f"{coco.ann.name} annotates {coco.num_keypoints} keypoints but {b.model.name} predicts "
                            f"{len(b.keypoints.names)} ({b.keypoints.dataset}); use annotations of the model's "
                            "keypoint set")
        self.topdown = b.model.task == "pose_topdown"
        self.boxes = (coco.det_boxes(cfg.dets, cfg.min_det_score) if cfg.dets else coco.gt_boxes()) \
            if self.topdown else []
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.predictions: dict[str, list[dict[str, Any]]] = {}  # COCO results per model
        self.ref: Reference | None = None  # top-down: eager on the person crops
        self.ref_stats: Any = None  # bottom-up: eager's COCO stats and per-image outcomes
        self.ref_outcomes: Any = None
        self.pipeline: Any = None  # bottom-up: the pipeline config (grouping) of the bundle

    def run(self) -> dict[str, Any]:
        from hrdeploy.runtime.factory import eager_runner

        with eager_runner(self.b.eager_model(), self.b.output_names, self.cfg.threads) as eager:
            if self.topdown:
                self._topdown_reference(eager)
            else:
                self._bottomup_reference(eager)
        for art in self.chosen:
            self._score_artifact(art)
        return self._report()

    def _topdown_reference(self, eager: Any) -> None:
        """Eager fp32 on the crops of the ground-truth (or detected) people."""
        b, coco, cfg = self.b, self.coco, self.cfg
        crops = CropSet.build(self.boxes, b.input.size, b.input.mean, b.input.std)
        self.say(f"eager fp32 on {len(crops)} person crops")
        assert b.keypoints is not None
        self.ref = ref = Reference.compute(lambda x: eager.run(x)[b.output_names[0]], crops, coco, cfg.batch,
                                           flip_index=b.keypoints.flip_index if cfg.flip_test else None,
                                           post_process=cfg.post_process)
        self.rows.append(self._row("eager", "eager", "fp32", None, cfg.batch, ref.stats, ref.seconds, len(crops)))
        self.predictions["eager"] = results_from_keypoints(crops.boxes, ref.keypoints, coco.category_id)

    def _bottomup_reference(self, eager: Any) -> None:
        """Eager fp32 on whole images with the bundle's grouping."""
        from hrdeploy.pose.pipeline import config_from_bundle

        self.pipeline = config_from_bundle(self.b)
        self.say("eager fp32 on whole images (bottom-up grouping)")
        results, seconds = bottomup_results(eager, self.coco, self.pipeline, self.cfg.flip_test)
        self.ref_stats, self.ref_outcomes = self.coco.evaluate(results)
        self.predictions["eager"] = results
        self.rows.append(self._row("eager", "eager", "fp32", None, 1, self.ref_stats, seconds,
                                   len(self.coco.image_ids())))

    def _score_artifact(self, art: Artifact) -> None:
        """The artifact's row; an engine that cannot run here is a skipped row."""
        from hrdeploy.runtime.factory import open_runner

        backend = "trt" if art.kind == "engine" else "ort"
        try:
            runner = open_runner(art, self.cfg.threads).activate()
        except UserError as err:
            if art.kind != "engine":
                raise
            self.skipped.append({"artifact": art.key, "file": art.file, "reason": str(err)})
            return
        self.say(f"{art.key} ({art.file}) on {backend}")
        with runner:
            self._score(art, backend, runner)

    def _score(self, art: Artifact, backend: str, runner: Any) -> None:
        """The artifact's row: its COCO AP, judged against eager's (AP drop with its paired interval)."""
        tol, coco, cfg = self.tol[art.precision], self.coco, self.cfg
        if self.ref is not None:
            n, fixed = _batch(art, cfg.batch)
            res = check_pose(self.ref, lambda x: runner.run(x)[self.b.output_names[0]], tol, n, fixed_batch=fixed,
                             bootstrap=cfg.bootstrap, seed=cfg.seed)
            row = self._row(art.key, backend, art.precision, art.file, n, res["stats"], res["seconds"],
                            len(self.ref.crops))
            self.predictions[art.key] = results_from_keypoints(self.ref.crops.boxes, res["keypoints"],
                                                               coco.category_id)
        else:
            results, seconds = bottomup_results(runner, coco, self.pipeline, cfg.flip_test)
            stats, outcomes = coco.evaluate(results)
            self.predictions[art.key] = results
            row = self._row(art.key, backend, art.precision, art.file, 1, stats, seconds, len(coco.image_ids()))
            res = compare_ap(self.ref_stats, stats, tol, ref_outcomes=self.ref_outcomes, outcomes=outcomes,
                             bootstrap=cfg.bootstrap, seed=cfg.seed)
        keys = ("gated", "tolerance", "failures", "passed", "agreement", "interval")
        row.update({k: res[k] for k in keys if k in res})
        self.rows.append(row)

    def _report(self) -> dict[str, Any]:
        """The evaluation's report: every row with its AP change against eager (dAP, AP points)."""
        b, coco, rows, cfg = self.b, self.coco, self.rows, self.cfg
        for row in rows:
            row["dAP"] = round(100.0 * (row["AP"] - rows[0]["AP"]), 2)
        boxes = f"detections {cfg.dets}" if cfg.dets else ("ground truth" if self.topdown else "none (bottom-up)")
        return {
            "model": b.model.name, "bundle": str(b.root), "input_size": list(b.input.size),
            "annotations": str(coco.ann), "images": str(coco.images), "boxes": boxes,
            "people": rows[0]["people"], "flip_test": cfg.flip_test, "post_process": cfg.post_process,
            "scorer": "pycocotools COCOeval (keypoints)", "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed},
            "rows": rows, "skipped": self.skipped, "passed": all(r.get("passed", True) for r in rows),
            "predictions": self.predictions,
        }

    def _row(self, key: str, backend: str, precision: str, file: str | None, batch: int,
             stats: dict[str, Any] | None, seconds: float, inputs: int) -> dict[str, Any]:
        return _row(key, backend, precision, file, batch, stats, seconds, inputs, self.cfg.flip_test)


def _row(key: str, backend: str, precision: str, file: str | None, batch: int, stats: dict[str, Any] | None,
         seconds: float, inputs: int, flip: bool) -> dict[str, Any]:
    stats = stats or {}
    runs = inputs * (2 if flip else 1)
    return {"artifact": key, "backend": backend, "precision": precision, "file": file, "batch": batch,
            **{k: round(float(stats[k]), 4) for k in (*STATS, "APm", "APl") if k in stats},
            "people": int(stats.get("people", inputs)),
            "crops_per_s": round(runs / seconds, 2) if seconds > 0 else None}
