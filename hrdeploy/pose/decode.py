"""Top-down heatmap decoding: argmax, mmpose's quarter-pixel shift, DARK refinement, flip test.

Follows mmpose 0.x mmpose/core/evaluation/top_down_eval.py (`_get_max_preds`, `keypoints_from_heatmaps`
with `post_process='default'` and `'unbiased'`, `_gaussian_blur`, `_taylor`) and
mmpose/core/post_processing/post_transforms.py (`flip_back`, `transform_preds`). DARK is Zhang et al.,
"Distribution-Aware Coordinate Representation for Human Pose Estimation", CVPR 2020.

Coordinates are (x, y) in heatmap pixels (pixel centres at integers); `heatmap_to_input` scales them to
model-input pixels, and the inverse crop transform (hrdeploy.pose.preprocess) takes them to the image.
Shared by `hrdeploy infer` and hrdeploy.validate (keypoint metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POST_PROCESS = ("none", "default", "dark")


def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer peak of each heatmap: coords [N, K, 2] as (x, y) in heatmap pixels, scores [N, K]."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    scores = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    return coords, scores


def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mmpose `_get_max_preds`: argmax (x, y) [N, K, 2] float64 and scores [N, K]; -1 where score <= 0."""
    coords, scores = heatmap_argmax(heatmaps)
    coords = np.where(scores[..., None] > 0.0, coords.astype(np.float64), -1.0)
    return coords, scores.astype(np.float64)


def quarter_offset(heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """mmpose `post_process='default'`: move each peak 0.25 px towards its higher neighbour.

    Applied only where 1 < px < W - 1 and 1 < py < H - 1, as upstream; returns new coords.
    """
    n, k, h, w = heatmaps.shape
    out = np.array(coords, dtype=np.float64, copy=True)
    px = out[..., 0].astype(np.int64)  # int() truncation; -1 (no peak) fails the range test below
    py = out[..., 1].astype(np.int64)
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    ni, ki = np.nonzero(inside)
    x, y = px[ni, ki], py[ni, ki]
    hm = heatmaps[ni, ki]  # [M, H, W]
    m = np.arange(len(ni))
    dx = hm[m, y, x + 1] - hm[m, y, x - 1]
    dy = hm[m, y + 1, x] - hm[m, y - 1, x]
    out[ni, ki, 0] += np.sign(dx) * 0.25
    out[ni, ki, 1] += np.sign(dy) * 0.25
    return out


def gaussian_kernel1d(kernel: int) -> np.ndarray:
    """OpenCV's `getGaussianKernel(kernel, 0)` for kernel > 7: sigma = 0.3 * ((kernel - 1) / 2 - 1) + 0.8."""
    if kernel % 2 != 1 or kernel < 1:
        raise ValueError(f"DARK blur kernel must be odd and positive, got {kernel}")
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    r = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """mmpose `_gaussian_blur`: zero-padded Gaussian blur of each map, rescaled to its original maximum.

    Upstream pads by (kernel - 1) / 2 zeros and calls cv2.GaussianBlur, which equals a zero-padded
    separable convolution with `gaussian_kernel1d`. Returns a new float64 array.
    """
    n, k, h, w = heatmaps.shape
    g = gaussian_kernel1d(kernel)
    b = (kernel - 1) // 2
    hm = np.asarray(heatmaps, dtype=np.float64)
    pad = np.pad(hm, ((0, 0), (0, 0), (b, b), (b, b)))
    # separable convolution (the kernel is symmetric, so correlation == convolution)
    rows = sum(g[i] * pad[:, :, :, i : i + w] for i in range(kernel))
    out = sum(g[i] * rows[:, :, i : i + h, :] for i in range(kernel))
    origin_max = hm.reshape(n, k, -1).max(axis=2)
    new_max = out.reshape(n, k, -1).max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(new_max != 0, origin_max / new_max, 0.0)
    return out * ratio[..., None, None]


def taylor_refine(log_heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """mmpose `_taylor`: one Newton step on the log-heatmap around each integer peak.

    offset = -H^-1 * grad, with central differences (step 1 for the gradient, step 2 for the Hessian);
    applied where 1 < px < W - 2 and 1 < py < H - 2 and the Hessian is invertible.
    """
    n, k, h, w = log_heatmaps.shape
    out = np.array(coords, dtype=np.float64, copy=True)
    px = out[..., 0].astype(np.int64)
    py = out[..., 1].astype(np.int64)
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    ni, ki = np.nonzero(inside)
    x, y = px[ni, ki], py[ni, ki]
    hm = log_heatmaps[ni, ki]
    m = np.arange(len(ni))

    def at(dx: int, dy: int) -> np.ndarray:
        return hm[m, y + dy, x + dx]

    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    dyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    det = dxx * dyy - dxy**2
    ok = det != 0
    safe = np.where(ok, det, 1.0)
    # offset = -inv([[dxx, dxy], [dxy, dyy]]) @ [gx, gy]
    off_x = -(dyy * gx - dxy * gy) / safe
    off_y = -(-dxy * gx + dxx * gy) / safe
    out[ni[ok], ki[ok], 0] += off_x[ok]
    out[ni[ok], ki[ok], 1] += off_y[ok]
    return out


def dark_refine(heatmaps: np.ndarray, coords: np.ndarray, kernel: int | None = 11) -> np.ndarray:
    """mmpose `post_process='unbiased'` (DARK): Gaussian modulation, log, Taylor step.

    `kernel` should match the training heatmap sigma (11 for sigma 2, 17 for sigma 3); None skips
    the blur (exact for heatmaps that are already Gaussian).
    """
    hm = gaussian_blur(heatmaps, kernel) if kernel else np.asarray(heatmaps, dtype=np.float64)
    return taylor_refine(np.log(np.maximum(hm, 1e-10)), coords)


def decode_heatmaps(
    heatmaps: np.ndarray, post_process: str = "default", kernel: int | None = 11
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (x, y) [N, K, 2] in heatmap pixels and scores [N, K] from heatmaps [N, K, H, W].

    post_process: "none" (integer argmax), "default" (quarter-pixel shift) or "dark" (DARK).
    """
    if post_process not in POST_PROCESS:
        raise ValueError(f"post_process must be one of {POST_PROCESS}, got {post_process!r}")
    heatmaps = np.asarray(heatmaps)
    coords, scores = get_max_preds(heatmaps)
    if post_process == "default":
        coords = quarter_offset(heatmaps, coords)
    elif post_process == "dark":
        coords = dark_refine(heatmaps, coords, kernel)
    return coords, scores


def heatmap_to_input(coords: np.ndarray, heatmap_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Heatmap pixels -> model-input pixels, as mmpose's `transform_preds` (coord * input / heatmap size)."""
    scale = np.array([input_hw[1] / heatmap_hw[1], input_hw[0] / heatmap_hw[0]], dtype=np.float64)
    return np.asarray(coords, dtype=np.float64) * scale


def keypoints_in_image(
    heatmaps: np.ndarray, matrices: np.ndarray, input_hw: tuple[int, int], post_process: str = "default",
    kernel: int | None = 11,
) -> np.ndarray:
    """Keypoints [N, K, 3] (x, y in image pixels, score) of top-down heatmaps [N, K, h, w].

    `matrices` [N, 2, 3] are the crops' image->input transforms (hrdeploy.pose.preprocess.crop_transform):
    decode in heatmap pixels, scale to input pixels, then map back through each crop's inverse transform.
    The one decoding of `hrdeploy infer`, `hrdeploy eval` and the served keypoint pipeline.
    """
    from hrdeploy.pose.preprocess import apply_transform, invert_transform

    coords, scores = decode_heatmaps(heatmaps, post_process, kernel)
    out = np.zeros((*coords.shape[:2], 3), dtype=np.float64)
    for i in range(len(coords)):
        xy = heatmap_to_input(coords[i], heatmaps.shape[-2:], input_hw)
        out[i, :, :2] = apply_transform(xy, invert_transform(matrices[i]))
        out[i, :, 2] = scores[i]
    return out


def flip_back(heatmaps: np.ndarray, flip_index: Sequence[int], shift: bool = True) -> np.ndarray:
    """Heatmaps of a horizontally flipped input, mapped back to the original frame.

    mmpose `flip_back` (mirror along W, swap left/right channels by `flip_index`) followed by
    TopDown's `shift_heatmap` (move one pixel right, compensating the flip misalignment of the
    non-UDP affine).
    """
    out = np.asarray(heatmaps)[:, list(flip_index), :, ::-1]
    if shift:
        out = np.concatenate([out[..., :1], out[..., :-1]], axis=-1)
    return np.ascontiguousarray(out)


def flip_test_average(
    heatmaps: np.ndarray, heatmaps_of_flipped: np.ndarray, flip_index: Sequence[int], shift: bool = True
) -> np.ndarray:
    """mmpose TopDown flip test: mean of the heatmaps and the flipped-back heatmaps of the mirrored input."""
    return (np.asarray(heatmaps) + flip_back(heatmaps_of_flipped, flip_index, shift)) * 0.5
