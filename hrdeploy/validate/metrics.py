"""Numerical parity metrics between a reference output and a deployed one.

Only compares; knows nothing about where the tensors came from (like Polygraphy's comparator).
"""

from __future__ import annotations

import numpy as np

from hrdeploy.pose.decode import heatmap_argmax


def tensor_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """max abs, max rel (to max |ref|), p99 abs (and rel), and cosine similarity over the whole tensor."""
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    ref64, out64 = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    diff = np.abs(ref64 - out64)
    scale = float(np.abs(ref64).max()) or 1.0
    denom = float(np.linalg.norm(ref64) * np.linalg.norm(out64))
    cosine = float(ref64 @ out64 / denom) if denom else float(np.array_equal(ref64, out64))
    p99 = float(np.percentile(diff, 99))
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "p99_abs": p99,
        "p99_rel": p99 / scale,
        "cosine": cosine,
        "ref_max_abs": scale,
    }


def keypoint_metrics(ref_heatmaps: np.ndarray, out_heatmaps: np.ndarray) -> dict[str, float]:
    """Argmax agreement (%) and mean / max keypoint distance in heatmap pixels."""
    ref_xy, _ = heatmap_argmax(ref_heatmaps)
    out_xy, _ = heatmap_argmax(out_heatmaps)
    dist = np.linalg.norm(ref_xy - out_xy, axis=-1)
    return {
        "argmax_agreement_pct": float(100.0 * np.mean(dist == 0)),
        "mean_kpt_err_px": float(dist.mean()),
        "max_kpt_err_px": float(dist.max()),
    }


def pck(ref_xy: np.ndarray, out_xy: np.ndarray, norm: float, alpha: float = 0.05) -> float:
    """Percentage of keypoints within `alpha * norm` of the reference (mmpose's PCK, bbox-size normalised).

    `ref_xy`, `out_xy`: [..., 2] coordinates in the same unit as `norm` (e.g. heatmap pixels and the
    heatmap's longer side, which for a top-down crop is the box size).
    """
    dist = np.linalg.norm(ref_xy.astype(np.float64) - out_xy.astype(np.float64), axis=-1)
    return float(100.0 * np.mean(dist <= alpha * norm))


def pose_metrics(
    ref_heatmaps: np.ndarray, out_heatmaps: np.ndarray, stride: int = 1, alpha: float = 0.05
) -> dict[str, float]:
    """keypoint_metrics plus errors in input pixels (heatmap pixels * `stride`) and PCK@`alpha`.

    PCK is normalised by the longer side of the heatmap (the top-down crop), so it is the same in
    heatmap and input pixels.
    """
    out = keypoint_metrics(ref_heatmaps, out_heatmaps)
    ref_xy, _ = heatmap_argmax(ref_heatmaps)
    out_xy, _ = heatmap_argmax(out_heatmaps)
    out["mean_kpt_err_input_px"] = out["mean_kpt_err_px"] * stride
    out["max_kpt_err_input_px"] = out["max_kpt_err_px"] * stride
    out[f"pck@{alpha:g}"] = pck(ref_xy, out_xy, float(max(ref_heatmaps.shape[-2:])), alpha)
    return out


def label_metrics(ref_logits: np.ndarray, out_logits: np.ndarray) -> dict[str, float]:
    """Segmentation: percentage of pixels whose argmax class agrees ([N, C, H, W] logits)."""
    agree = ref_logits.argmax(axis=1) == out_logits.argmax(axis=1)
    return {"label_agreement_pct": float(100.0 * agree.mean())}
