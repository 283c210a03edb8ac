"""Judge a top-down pose artifact against the eager fp32 model on person crops (the one verdict of every stage).

With annotations (`CocoKeypoints`), the gate is the COCO keypoint AP drop on the annotated people; without,
it is keypoint agreement with eager on the crops (OKS, PCK) and the cosine of the crops' heatmaps, or, when
eager finds no person on them (seeded weights, photos without people), the heatmaps' cosine alone. The other
tensor statistics and the heatmap-peak agreement of the same crops are reported alongside, ungated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hrdeploy.parity.bootstrap import DEFAULT_SEED, Outcomes
from hrdeploy.parity.coco import CocoKeypoints, CropSet, RunFn, results_from_keypoints
from hrdeploy.parity.comparator import compare_ap
from hrdeploy.parity.compare import argmax_agreement, bounds_for, judge, keypoint_agreement, tensor_stats
from hrdeploy.parity.tolerances import Tolerance


@dataclass
class Reference:
    """The eager fp32 model's predictions on a crop set (computed once, compared against every artifact)."""

    crops: CropSet
    keypoints: np.ndarray
    heatmaps: np.ndarray
    seconds: float
    coco: CocoKeypoints | None = None
    stats: dict[str, Any] | None = None  # COCO AP etc. when annotated
    outcomes: Outcomes | None = None  # per-person COCO matching, for paired bootstrap intervals
    flip_index: Sequence[int] | None = None  # flip test (every artifact is decoded the same way)
    post_process: str = "default"

    @classmethod
    def compute(cls, run: RunFn, crops: CropSet, coco: CocoKeypoints | None = None, batch: int = 8, *,
                flip_index: Sequence[int] | None = None, post_process: str = "default") -> Reference:
        kp, hm, seconds = crops.keypoints(run, batch, flip_index=flip_index, post_process=post_process)
        stats, outcomes = coco.evaluate(_results(crops, kp, coco), _owners(crops)) if coco else (None, None)
        return cls(crops, kp, hm, seconds, coco, stats, outcomes, flip_index, post_process)


def _results(crops: CropSet, keypoints: np.ndarray, coco: CocoKeypoints) -> list[dict[str, Any]]:
    return results_from_keypoints(crops.boxes, keypoints, coco.category_id)


def _owners(crops: CropSet) -> list[int | None]:
    """The annotated person each crop's result belongs to (None for a detection's box)."""
    return [p.ann_id for p in crops.boxes]


def check_pose(
    ref: Reference, run: RunFn, tol: Tolerance, batch: int = 8, *, fixed_batch: bool = False, trained: bool = True,
    bootstrap: int = 0, seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Run `run` on the reference's crops and judge it; returns metrics, the gated subset and the verdict.

    trained=False (seeded weights): keypoints are noise, so without annotations the heatmaps' cosine is gated.
    bootstrap > 0 (annotated people): also the AP drop's paired 95 % interval from that many resamples of the
    people (`interval`); the verdict stays on the point estimate.
    """
    kp, hm, seconds = ref.crops.keypoints(run, batch, fixed_batch=fixed_batch, flip_index=ref.flip_index,
                                          post_process=ref.post_process)
    tensor = tensor_stats(ref.heatmaps, hm)
    if not tensor["non_finite"]:
        tensor.update(argmax_agreement(ref.heatmaps, hm))
    agreement = keypoint_agreement(ref.keypoints, kp, ref.crops.boxes_wh)
    out: dict[str, Any] = {"people": len(ref.crops), "tensor": tensor, "agreement": agreement,
                           "seconds": round(seconds, 3), "keypoints": kp}
    gated: dict[str, Any] = {"non_finite": tensor["non_finite"]}
    if ref.coco is not None and ref.stats is not None:
        stats, outcomes = ref.coco.evaluate(_results(ref.crops, kp, ref.coco), _owners(ref.crops))
        out.update(mode="coco-ap", reference_stats=ref.stats, stats=stats)
        ap = compare_ap(ref.stats, stats, tol, ref_outcomes=ref.outcomes, outcomes=outcomes, bootstrap=bootstrap,
                        seed=seed)
        gated.update(ap["gated"])
        out.update({k: ap[k] for k in ("interval",) if k in ap})
    elif agreement["keypoints"] and trained:
        out["mode"] = "crop-agreement"
        gated.update(oks=agreement["oks"], **{k: v for k, v in agreement.items() if k.startswith("pck@")})
        gated["cosine"] = tensor["cosine"]  # of the person crops' heatmaps: catches what a few people's keypoints miss
    else:  # no person on these crops (seeded weights, photos without people): heatmap tensors
        out["mode"] = "tensor"
        gated["cosine"] = tensor["cosine"]
    failures = judge(gated, tol)
    out.update(gated=gated, tolerance=bounds_for(tol, gated), failures=failures, passed=not failures)
    return out
