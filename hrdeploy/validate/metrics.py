"""Numerical parity metrics between a reference output and a deployed one.

Only compares; knows nothing about where the tensors came from (like Polygraphy's comparator).
"""

from __future__ import annotations

import numpy as np

from hrdeploy.pose.decode import heatmap_argmax


def tensor_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """max abs, max rel (to max |ref|), p99 abs, and cosine similarity over the whole tensor."""
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    ref64, out64 = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    diff = np.abs(ref64 - out64)
    scale = float(np.abs(ref64).max()) or 1.0
    denom = float(np.linalg.norm(ref64) * np.linalg.norm(out64))
    cosine = float(ref64 @ out64 / denom) if denom else float(np.array_equal(ref64, out64))
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "p99_abs": float(np.percentile(diff, 99)),
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
