"""Paired bootstrap confidence intervals for a COCO keypoint AP difference between two models.

149 people give an AP with a standard error of about 2 points, so an AP drop of 1 point means little unless
both models are compared on the same people. The paired bootstrap resamples the people (with replacement)
and scores both models on the same resample; the 2.5th and 97.5th percentiles of the AP differences are a
95 % interval for the drop (Efron & Tibshirani, "An Introduction to the Bootstrap", ch. 13).

Each model's per-person outcome is read once from pycocotools' own matching (`COCOeval.evalImgs`: which
detection matched which person at each OKS threshold, over all sizes, maxDets 20) and the AP of a resample is
accumulated from those outcomes exactly as `COCOeval.accumulate` does (score-sorted TP/FP, monotone precision
sampled at 101 recall points, averaged over the 10 thresholds), so the identity resample reproduces
COCOeval's AP. Units are people when each detection comes from one person's box (ground-truth boxes, the
top-down default) and images otherwise (a detection file's boxes), since a detection then belongs to no
single person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hrdeploy.parity.tolerances import BOOTSTRAP_RESAMPLES as DEFAULT_RESAMPLES
from hrdeploy.parity.tolerances import BOOTSTRAP_SEED as DEFAULT_SEED

CONFIDENCE = 0.95
_REC_THRS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Unit:
    """What one resampling unit (a person or an image) contributes to COCO's accumulation."""

    key: int
    gt_ignore: np.ndarray  # [G] bool
    scores: np.ndarray  # [D]
    matched: np.ndarray  # [T, D] bool: the detection matched a person at threshold t
    ignored: np.ndarray  # [T, D] bool: matched an ignored person (not counted)


@dataclass(frozen=True)
class Outcomes:
    """Per-unit COCO matching outcomes of one model's predictions."""

    units: list[Unit]
    kind: str  # "person" | "image"

    @classmethod
    def from_cocoeval(cls, ev: Any, owners: Sequence[int | None] | None = None) -> Outcomes:
        """From an evaluated COCOeval (keypoints). owners[i]: the annotation id of the person whose box gave
        result i (pycocotools numbers results 1..N in order); None or missing: units are images."""
        area_all = 0
        n_img = len(ev.params.imgIds)
        max_det = ev.params.maxDets[-1]
        by_person = owners is not None and all(o is not None for o in owners)
        units: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
        for k, img_id in enumerate(ev.params.imgIds):
            e = ev.evalImgs[area_all * n_img + k]
            if e is None:
                continue
            gt_ids, gt_ig = list(e["gtIds"]), np.asarray(e["gtIgnore"], bool)
            dt_ids = list(e["dtIds"])[:max_det]
            scores = np.asarray(e["dtScores"][:max_det], np.float64)
            matched = np.asarray(e["dtMatches"])[:, :max_det] > 0
            ignored = np.asarray(e["dtIgnore"], bool)[:, :max_det]
            if not by_person:
                units[int(img_id)] = [(gt_ig, scores, matched, ignored)]
                continue
            for j, gid in enumerate(gt_ids):
                units.setdefault(int(gid), []).append((gt_ig[j:j + 1], *_empty(matched.shape[0])))
            for d, did in enumerate(dt_ids):
                owner = int(owners[did - 1])  # type: ignore[index,arg-type]
                units.setdefault(owner, []).append((np.zeros(0, bool), scores[d:d + 1], matched[:, d:d + 1],
                                                    ignored[:, d:d + 1]))
        merged = [Unit(key, *(np.concatenate(parts, axis=-1) for parts in zip(*pieces, strict=True)))
                  for key, pieces in sorted(units.items())]
        # a unit of ignored people only, with no detection of its own, adds nothing to any resample's AP
        merged = [u for u in merged if len(u.scores) or not u.gt_ignore.all()]
        return cls(merged, "person" if by_person else "image")

    def keys(self) -> list[int]:
        return [u.key for u in self.units]


def _empty(thresholds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0), np.zeros((thresholds, 0), bool), np.zeros((thresholds, 0), bool)


def average_precision(outcomes: Outcomes, index: Sequence[int] | np.ndarray | None = None) -> float:
    """COCO AP (0..1) of the units at `index` (repeats allowed; default: all, in order)."""
    units = outcomes.units if index is None else [outcomes.units[i] for i in index]
    gt_ignore = np.concatenate([u.gt_ignore for u in units])
    npig = int(np.count_nonzero(~gt_ignore))
    if npig == 0:
        return float("nan")
    scores = np.concatenate([u.scores for u in units])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([u.matched for u in units], axis=1)[:, order]
    ignored = np.concatenate([u.ignored for u in units], axis=1)[:, order]
    tps = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    fps = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    aps = []
    for tp, fp in zip(tps, fps, strict=True):
        q = np.zeros(len(_REC_THRS))
        if len(tp):
            rc = tp / npig
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # COCO's monotone precision envelope
            inds = np.searchsorted(rc, _REC_THRS, side="left")
            valid = inds < len(pr)
            q[valid] = pr[inds[valid]]
        aps.append(q.mean())
    return float(np.mean(aps))


def resample_indices(units: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, units] unit indices drawn with replacement (numpy's PCG64 generator, seeded)."""
    return np.random.default_rng(seed).integers(0, units, (resamples, units))


def paired_differences(reference: Outcomes, candidate: Outcomes, resamples: int, seed: int) -> np.ndarray:
    """AP(candidate) - AP(reference) in AP points on each resample of the shared units."""
    if reference.keys() != candidate.keys():
        raise ValueError("paired bootstrap needs both models scored on the same people")
    return np.array([100.0 * (average_precision(candidate, idx) - average_precision(reference, idx))
                     for idx in resample_indices(len(reference.units), resamples, seed)])


def paired_interval(
    reference: Outcomes, candidate: Outcomes, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
    bar: float | None = None,
) -> dict[str, Any]:
    """dAP (candidate - reference, AP points) with its paired bootstrap interval over the shared units.

    `bar`: the largest allowed drop in AP points; the result says whether the interval lies above -bar
    ("pass"), below it ("fail") or straddles it ("inconclusive").
    """
    diffs = paired_differences(reference, candidate, resamples, seed)
    diffs = diffs[np.isfinite(diffs)]
    n = len(reference.units)
    alpha = (1.0 - CONFIDENCE) / 2.0
    lo, hi = (float(v) for v in np.quantile(diffs, [alpha, 1.0 - alpha])) if len(diffs) else (float("nan"),) * 2
    point = 100.0 * (average_precision(candidate) - average_precision(reference))
    out: dict[str, Any] = {"dap": point, "low": lo, "high": hi, "confidence": CONFIDENCE, "resamples": resamples,
                           "seed": seed, "unit": reference.kind, "units": n}
    if bar is not None:
        out["bar"] = bar
        out["call"] = "pass" if lo >= -bar else "fail" if hi < -bar else "inconclusive"
    return out
