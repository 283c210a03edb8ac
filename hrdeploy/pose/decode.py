"""Heatmap decoding (top-down): argmax, and coordinates in heatmap pixels."""

from __future__ import annotations

import numpy as np


def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer peak of each heatmap: coords [N, K, 2] as (x, y) in heatmap pixels, scores [N, K]."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    scores = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    return coords, scores
