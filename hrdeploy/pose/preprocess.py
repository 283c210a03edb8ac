"""Top-down pre-processing: read an image, crop a person box with an affine warp, normalise.

Follows mmpose 0.x (mmpose/datasets/pipelines/top_down_transform.py `TopDownAffine` and
mmpose/core/post_processing/post_transforms.py `get_affine_transform`): the box is expanded to the
model's aspect ratio, enlarged by `padding` (1.25), and mapped so that its centre lands on the centre of
the input; pixels are sampled like OpenCV's `warpAffine(..., INTER_LINEAR, BORDER_CONSTANT=0)` (pixel
centres at integer coordinates, zeros outside the image), then normalised as ((pixel / 255) - mean) / std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hrdeploy.errors import UserError


def box_to_center_scale(
    box_xywh: Sequence[float], input_hw: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and size (w, h) in image pixels of the region that fills the model input.

    As mmpose's `_xywh2cs` (without the /200 pixel_std): the box is expanded to the input's aspect
    ratio (w / h) around its centre, then multiplied by `padding`.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    aspect = input_hw[1] / input_hw[0]
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float64) * padding


def check_box(box_xywh: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """Validate a person box against the image; UserError if it is empty, lies outside the image, or reaches
    further than the image's own size beyond an edge (no person box does; such numbers overflow the crop)."""
    if len(box_xywh) != 4:
        raise UserError(f"box {tuple(box_xywh)} must have 4 numbers x,y,w,h")
    x, y, w, h = (float(v) for v in box_xywh)
    img_h, img_w = image_hw
    if not all(np.isfinite([x, y, w, h])):
        raise UserError(f"box {x:g},{y:g},{w:g},{h:g} is not 4 finite numbers; pass x,y,w,h in pixels")
    if w <= 0 or h <= 0:
        raise UserError(f"box {x:g},{y:g},{w:g},{h:g} is empty; pass x,y,w,h with positive width and height")
    if x >= img_w or y >= img_h or x + w <= 0 or y + h <= 0:
        raise UserError(
            f"box {x:g},{y:g},{w:g},{h:g} lies outside the {img_w}x{img_h} image; "
            "pass x,y,w,h in pixels of that image"
        )
    if x < -img_w or y < -img_h or x + w > 2 * img_w or y + h > 2 * img_h:
        raise UserError(
            f"box {x:g},{y:g},{w:g},{h:g} reaches more than the image's size beyond the {img_w}x{img_h} image; "
            "pass x,y,w,h in pixels of that image"
        )
    return x, y, w, h


def crop_transform(
    box_xywh: Sequence[float] | None,
    image_hw: tuple[int, int],
    input_hw: tuple[int, int],
    padding: float = 1.25,
) -> np.ndarray:
    """2x3 affine matrix from image pixels to model-input pixels.

    With a box (x, y, w, h): top-down crop as mmpose (box expanded to the model aspect ratio, times
    `padding`; its centre maps to the input centre). With None: the whole image, aspect preserved, no
    extra padding, centred (letterbox). The scale is isotropic, as `get_affine_transform` with rot=0.
    """
    if box_xywh is None:
        box = (0.0, 0.0, float(image_hw[1]), float(image_hw[0]))
        padding = 1.0
    else:
        box = check_box(box_xywh, image_hw)
    center, size = box_to_center_scale(box, input_hw, padding)
    in_h, in_w = input_hw
    s = in_w / size[0]  # == in_h / size[1] up to rounding, since size has the input's aspect ratio
    return np.array(
        [[s, 0.0, in_w * 0.5 - s * center[0]], [0.0, s, in_h * 0.5 - s * center[1]]], dtype=np.float64
    )


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (as cv2.invertAffineTransform)."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points [..., 2] (x, y)."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of HxWxC `image` by the 2x3 `matrix` (source->destination), float32 output.

    Equivalent to cv2.warpAffine(image, matrix, (w, h), flags=INTER_LINEAR, borderValue=0) up to
    OpenCV's fixed-point rounding: each output pixel (x, y) samples the source at matrix^-1 (x, y).
    """
    out_h, out_w = out_hw
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    src_h, src_w = img.shape[:2]
    inv = invert_transform(matrix)
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx = (sx - x0).astype(np.float32)[..., None]
    fy = (sy - y0).astype(np.float32)[..., None]
    out = np.zeros((out_h, out_w, img.shape[2]), dtype=np.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            valid = (xi >= 0) & (xi < src_w) & (yi >= 0) & (yi < src_h)
            vals = img[np.clip(yi, 0, src_h - 1), np.clip(xi, 0, src_w - 1)]
            out += np.where(valid[..., None], vals, 0.0) * (wx * wy)
    return out


def preprocess(
    image: np.ndarray,
    input_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    box: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop (or letterbox) and normalise one RGB uint8 image.

    Returns the float32 CHW input ((pixel / 255 - mean) / std; pixels outside the image are 0 before
    normalisation, as mmpose's warpAffine then NormalizeTensor) and the 2x3 image->input matrix.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    matrix = crop_transform(box, image.shape[:2], input_hw)
    crop = warp_affine(image, matrix, input_hw) / 255.0
    crop = (crop - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32), matrix
