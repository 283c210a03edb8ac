"""The metrics and the verdict of the comparator (hrdeploy.parity.comparator): an artifact's outputs or
predictions against the eager fp32 model's.

Three kinds of evidence, judged by one function (`judge`) against one table (hrdeploy.parity.tolerances):
- tensor statistics of raw outputs (`tensor_stats`: max abs / rel, p99, cosine), for fp32 parity;
- keypoint agreement on person crops (`keypoint_agreement`: OKS and PCK of the decoded keypoints against
  eager's, pixel errors), for any precision when there are no annotations;
- COCO keypoint AP drop against eager fp32 (computed by hrdeploy.parity.coco with pycocotools).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hrdeploy.parity.tolerances import CONFIDENT_SCORE, FLOOR_FACTOR, PCK_ALPHA, PERSON_MIN_JOINTS, Tolerance

# COCO's per-keypoint OKS sigmas (pycocotools COCOeval.Params.kpt_oks_sigmas); other keypoint sets use their mean.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    """Cosine similarity of two tensors in float64 (1 for two equal zero tensors, 0 for one zero tensor)."""
    a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def rel_l2(ref: np.ndarray, out: np.ndarray) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when ref is zero)."""
    a, b = ref.astype(np.float64), out.astype(np.float64)
    denom = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b) / denom) if denom else 0.0


def tensor_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """max abs, max rel (to max |ref|), p99 abs (and rel), cosine over the whole tensor; non-finite count."""
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    ref64, out64 = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    bad = int(out64.size - np.count_nonzero(np.isfinite(out64)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(ref64 - out64)
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        scale = scale or 1.0
        p99 = float(np.percentile(diff, 99)) if diff.size else 0.0
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(diff.max() / scale) if diff.size else 0.0,
        "p99_abs": p99,
        "p99_rel": p99 / scale,
        "cosine": cosine(ref64, out64),
        "ref_max_abs": scale,
        "non_finite": bad,
    }


def argmax_agreement(ref_heatmaps: np.ndarray, out_heatmaps: np.ndarray) -> dict[str, float]:
    """Heatmap peaks: % identical and mean / max distance in heatmap pixels (`*_kpt_err_px`)."""
    from hrdeploy.pose.decode import heatmap_argmax

    ref_xy, _ = heatmap_argmax(ref_heatmaps)
    out_xy, _ = heatmap_argmax(out_heatmaps)
    dist = np.linalg.norm(ref_xy - out_xy, axis=-1)
    return {"argmax_agreement_pct": float(100.0 * np.mean(dist == 0)), "mean_kpt_err_px": float(dist.mean()),
            "max_kpt_err_px": float(dist.max())}


def label_agreement(ref_logits: np.ndarray, out_logits: np.ndarray) -> dict[str, float]:
    """Segmentation: percentage of pixels whose argmax class agrees ([N, C, H, W] logits)."""
    agree = ref_logits.argmax(axis=1) == out_logits.argmax(axis=1)
    return {"label_agreement_pct": float(100.0 * agree.mean())}


def keypoint_agreement(
    ref: np.ndarray, out: np.ndarray, boxes_wh: np.ndarray, sigmas: Sequence[float] | None = None,
    min_score: float = CONFIDENT_SCORE, min_joints: int = PERSON_MIN_JOINTS,
) -> dict[str, float]:
    """How well keypoints `out` [N, K, 3] (x, y, score; image pixels) agree with the reference `ref`.

    Only joints the reference is confident about (score >= min_score) count, and only on crops where it is
    confident about at least `min_joints` (a person; on crops of no one its few "joints" are noise).
    `boxes_wh` [N, 2] is each person's box (width, height) in image pixels: OKS uses area = w * h and the
    keypoint sigmas (COCO's for 17 joints, else their mean); PCK counts joints within PCK_ALPHA x the box's
    longer side.
    """
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    k = ref.shape[1]
    s = np.asarray(sigmas if sigmas is not None else (COCO_SIGMAS if k == len(COCO_SIGMAS)
                                                      else [COCO_SIGMAS.mean()] * k), np.float64)
    wh = np.asarray(boxes_wh, np.float64)
    d = np.linalg.norm(ref[..., :2] - out[..., :2], axis=-1)  # [N, K]
    d = np.where(np.isfinite(d), d, np.inf)
    mask = ref[..., 2] >= min_score
    mask &= mask.sum(axis=1, keepdims=True) >= min_joints
    area = (wh[:, 0] * wh[:, 1])[:, None]
    e = d**2 / (2.0 * area * (2.0 * s[None]) ** 2)  # COCO's OKS term: d^2 / (2 * s^2 * (2 sigma)^2), s^2 = area
    oks_joint = np.exp(-e)
    per_person = [float(oks_joint[i][mask[i]].mean()) for i in range(len(ref)) if mask[i].any()]
    size = wh.max(axis=1)[:, None]
    judged = int(mask.sum())
    finite = d[mask][np.isfinite(d[mask])]
    return {
        "oks": float(np.mean(per_person)) if per_person else float("nan"),
        f"pck@{PCK_ALPHA:g}": float(100.0 * np.mean((d <= PCK_ALPHA * size)[mask])) if judged else float("nan"),
        "mean_err_img_px": float(finite.mean()) if finite.size else float("nan"),
        "max_err_img_px": float(d[mask].max()) if judged else float("nan"),
        "people": len(per_person),
        "keypoints": judged,
    }


def judge(metrics: Mapping[str, Any], tol: Tolerance) -> list[str]:
    """Violations of `tol` by `metrics` (empty: pass). Only bounds whose metric is present are checked.

    Metric keys: max_rel (+ fp32_floor_rel), cosine, non_finite, ap_drop (AP points), oks, pck@0.05.
    A NaN metric is a violation.
    """
    failures = []
    if metrics.get("non_finite"):
        failures.append(f"{metrics['non_finite']} non-finite values (inf/nan)")

    def bad(value: float, bound: float, upper: bool) -> bool:
        return math.isnan(value) or (value > bound if upper else value < bound)

    if tol.max_rel is not None and "max_rel" in metrics and bad(metrics["max_rel"], tol.max_rel, True):
        floor = metrics.get("fp32_floor_rel")
        if floor is None or bad(metrics["max_rel"], FLOOR_FACTOR * floor, True):
            extra = f" or {FLOOR_FACTOR:g} x fp32 floor {floor:.2e}" if floor is not None else ""
            failures.append(f"max rel {metrics['max_rel']:.3e} (needs <= {tol.max_rel:g}{extra})")
    checks = (("cosine", tol.min_cosine, False, "cosine", ".6f"), ("ap_drop", tol.max_ap_drop, True, "AP drop", ".2f"),
              ("oks", tol.min_oks, False, "keypoint OKS vs eager", ".4f"),
              (f"pck@{PCK_ALPHA:g}", tol.min_pck, False, f"PCK@{PCK_ALPHA:g} vs eager %", ".1f"))
    for key, bound, upper, label, spec in checks:
        if bound is not None and key in metrics and bad(float(metrics[key]), bound, upper):
            failures.append(f"{label} {format(float(metrics[key]), spec)} (needs {'<=' if upper else '>='} {bound:g})")
    return failures


BOUND_OF = {"max_rel": "max_rel", "cosine": "min_cosine", "ap_drop": "max_ap_drop", "oks": "min_oks",
            f"pck@{PCK_ALPHA:g}": "min_pck"}


def bounds_for(tol: Tolerance, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The bounds of `tol` that `judge` applies to `metrics` (for reports)."""
    d = tol.as_dict()
    return {BOUND_OF[k]: d[BOUND_OF[k]] for k in metrics if k in BOUND_OF and BOUND_OF[k] in d}
