"""Person crops for calibration and agreement checks, from annotations or found by the eager model.

Top-down pose networks see one person per crop at deployment, so calibration and the agreement gate use
crops, never whole photos squashed into the input:
- `boxes_from_annotations`: the boxes of a COCO keypoint json (`bbox`) or an MPII-style json list
  (`center`, `scale`; the box is scale x 200 px tall, as wide as the model's aspect ratio).
- `find_people`: one crop per photo that the eager model finds: it looks at the whole photo (centred,
  aspect-preserving), and where at least MIN_JOINTS keypoints are confident and span MIN_EXTENT of the
  photo, the box becomes their bounding box; this is repeated REFINE times on the new crop. Photos where it
  finds no person keep the centred crop at the model's aspect ratio (the largest one that fits the photo).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.parity.coco import ImageCache, PersonBox, crop_people, decode_people
from hrdeploy.parity.tolerances import CONFIDENT_SCORE

MIN_JOINTS = 4
MIN_EXTENT = 0.15  # the confident joints must span this fraction of the photo's shorter side
REFINE = 2
MPII_PIXEL_STD = 200.0  # MPII's scale unit: scale x 200 px = person height


def centred_box(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The largest box with the model's aspect ratio centred in the image, shrunk by the crop padding (1.25)."""
    img_h, img_w = image_hw
    aspect = input_hw[1] / input_hw[0]
    w, h = (img_h * aspect, img_h) if img_w >= img_h * aspect else (img_w, img_w / aspect)
    w, h = w / 1.25, h / 1.25
    return ((img_w - w) / 2, (img_h - h) / 2, w, h)


def boxes_from_annotations(ann: str | os.PathLike, images: str | os.PathLike,
                           input_hw: tuple[int, int]) -> list[PersonBox]:
    """Person boxes of a COCO keypoint json or an MPII json (list of {image, center, scale})."""
    path, folder = Path(ann), Path(images)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read annotations {path} ({type(err).__name__}); pass a COCO keypoint json or "
                        "an MPII json (list of {image, center, scale})") from err
    if isinstance(data, dict) and "annotations" in data:
        from hrdeploy.parity.coco import CocoKeypoints

        return CocoKeypoints(path, folder).gt_boxes()
    if isinstance(data, list) and all(isinstance(r, dict) and {"image", "center", "scale"} <= r.keys() for r in data):
        out = []
        for i, r in enumerate(data):
            h = float(r["scale"]) * MPII_PIXEL_STD
            w = h * input_hw[1] / input_hw[0]
            cx, cy = (float(v) for v in r["center"])
            file = folder / str(r["image"])
            if not file.is_file():
                raise UserError(f"image {r['image']} of {path.name} is not in {folder}; pass its folder")
            out.append(PersonBox(i, file, (cx - w / 2, cy - h / 2, w, h)))
        return out
    raise UserError(f"{path} is neither a COCO keypoint json (images, annotations) nor an MPII json (a list of "
                    "{image, center, scale})")


def find_people(
    files: Sequence[Path], run: Callable[[np.ndarray], np.ndarray], input_hw: tuple[int, int],
    mean: Sequence[float], std: Sequence[float], images: ImageCache | None = None,
) -> list[PersonBox]:
    """One box per photo: where the eager model (`run`: NCHW -> heatmaps) finds a person, else the centre."""
    images = images or ImageCache()
    boxes = [PersonBox(i, f, centred_box(images(f).shape[:2], input_hw)) for i, f in enumerate(files)]
    for _ in range(REFINE):
        x, mats = crop_people(boxes, input_hw, mean, std, images)
        kp = decode_people(np.concatenate([run(x[i:i + 8]) for i in range(0, len(x), 8)]), mats, input_hw)
        new = []
        for b, k in zip(boxes, kp, strict=True):
            good = k[k[:, 2] >= CONFIDENT_SCORE, :2]
            if len(good) < MIN_JOINTS:
                new.append(b)
                continue
            h_img, w_img = images(b.file).shape[:2]
            lo = np.clip(good.min(axis=0), 0, [w_img - 1, h_img - 1])
            hi = np.clip(good.max(axis=0), 0, [w_img - 1, h_img - 1])
            w, h = max(hi[0] - lo[0], 1.0), max(hi[1] - lo[1], 1.0)
            if max(w, h) < MIN_EXTENT * min(h_img, w_img):  # a few "joints" on a speck: not a person
                new.append(b)
                continue
            # joints lie inside the body: grow their box by 10 % a side (head top, feet) before the 1.25 crop padding
            new.append(PersonBox(b.image_id, b.file, (lo[0] - 0.1 * w, lo[1] - 0.1 * h, 1.2 * w, 1.2 * h)))
        boxes = new
    return boxes
