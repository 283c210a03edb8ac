"""Person crops for calibration and agreement checks, from annotations or found by the eager model.

Top-down pose networks see one person per crop at deployment, so calibration and the agreement gate use
crops, never whole photos squashed into the input:
- `boxes_from_annotations`: the boxes of a COCO keypoint json (`bbox`) or an MPII-style json list
  (`center`, `scale`; the box is scale x 200 px tall, as wide as the model's aspect ratio).
- `find_people`: the crops of a photo where the model is surest of a person: the whole photo (centred, at
  the model's aspect ratio) and windows of SEARCH_SCALES of it tiling the photo are scored by their
  TOP_JOINTS highest keypoint scores; the best windows become the boxes of their confident joints (at least
  MIN_JOINTS spanning MIN_EXTENT of the photo), refined REFINE times. The first is kept always (photos without
  a person keep the best window; the agreement gate skips their joints, none is confident); with
  `per_photo` > 1, further people need a refined score of EXTRA_PERSON_SCORE and must not overlap one already
  found (intersection over the smaller box or IoU above MAX_OVERLAP): INT8 calibration and tuning see the
  crowd of a photo, not only its clearest person.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.parity.coco import ImageCache, PersonBox, crop_people, decode_people, run_heatmaps
from hrdeploy.parity.tolerances import CONFIDENT_SCORE
from hrdeploy.parity.tolerances import PERSON_MIN_JOINTS as MIN_JOINTS

MIN_EXTENT = 0.15  # the confident joints must span this fraction of the photo's shorter side
REFINE = 2
SEARCH_SCALES = (0.6, 0.35)  # window sizes searched besides the whole photo, relative to the centred box
TOP_JOINTS = 8
# Further people of a photo (find_people's per_photo > 1). On coco-train's 60 photos (174 annotated people), three
# per photo at these values find 108 crops, 75 of them on an annotated person (IoU >= 0.5), against 46 of 60
# with one per photo.
EXTRA_PERSON_SCORE = 0.6
MAX_OVERLAP = 0.5
WINDOWS_TRIED = 8  # the best-scored windows refined per photo when looking for more than one person
FIND_BATCH = 8  # windows per run of a dynamic-batch finder
PEOPLE_PER_PHOTO = 3  # INT8 calibration and tuning without annotations
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


def candidate_boxes(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """The centred box, then windows of SEARCH_SCALES x its size tiling the photo with half-window steps."""
    img_h, img_w = image_hw
    _, _, bw, bh = centred = centred_box(image_hw, input_hw)
    boxes = [centred]
    for scale in SEARCH_SCALES:
        w, h = bw * scale, bh * scale
        span_w, span_h = img_w - 1.25 * w, img_h - 1.25 * h  # room for the padded crop inside the photo
        nx = max(1, math.ceil(max(span_w, 0.0) / (0.625 * w)) + 1)
        ny = max(1, math.ceil(max(span_h, 0.0) / (0.625 * h)) + 1)
        for iy in range(ny):
            for ix in range(nx):
                cx = 0.625 * w + (span_w * ix / (nx - 1) if nx > 1 else span_w / 2)
                cy = 0.625 * h + (span_h * iy / (ny - 1) if ny > 1 else span_h / 2)
                boxes.append((cx - w / 2, cy - h / 2, w, h))
    return boxes


def _joints_box(kp: np.ndarray, image_hw: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The box of the confident joints grown 10 % a side (head top, feet), or None when they are too few."""
    good = kp[kp[:, 2] >= CONFIDENT_SCORE, :2]
    if len(good) < MIN_JOINTS:
        return None
    h_img, w_img = image_hw
    lo = np.clip(good.min(axis=0), 0, [w_img - 1, h_img - 1])
    hi = np.clip(good.max(axis=0), 0, [w_img - 1, h_img - 1])
    w, h = max(hi[0] - lo[0], 1.0), max(hi[1] - lo[1], 1.0)
    if max(w, h) < MIN_EXTENT * min(h_img, w_img):  # a few "joints" on a speck: not a person
        return None
    return (lo[0] - 0.1 * w, lo[1] - 0.1 * h, 1.2 * w, 1.2 * h)


def _person_score(kp: np.ndarray) -> float:
    """How surely a crop shows a person: the mean of its TOP_JOINTS highest keypoint scores."""
    return float(np.sort(kp[:, 2])[::-1][:TOP_JOINTS].mean())


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The larger of IoU and intersection over the smaller box: a part of a person found again counts too."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter, area_a, area_b = iw * ih, a[2] * a[3], b[2] * b[3]
    return max(inter / (area_a + area_b - inter), inter / min(area_a, area_b)) if inter > 0 else 0.0


def find_people(
    files: Sequence[Path], run: Callable[[np.ndarray], np.ndarray], input_hw: tuple[int, int],
    mean: Sequence[float], std: Sequence[float], images: ImageCache | None = None, per_photo: int = 1,
    fixed_batch: int | None = None,
) -> list[PersonBox]:
    """Up to `per_photo` boxes per photo where the model (`run`: NCHW -> heatmaps) is surest of a person.

    `run` gets FIND_BATCH windows at a time, or exactly `fixed_batch` (padded) when its graph has a static batch.

    Every candidate window (`candidate_boxes`) is scored by `_person_score`; the best (WINDOWS_TRIED of them
    when more than one person is wanted) are refined REFINE times to the box of their confident joints and kept
    in that order unless one overlaps a kept box or scores below EXTRA_PERSON_SCORE (the first is kept always).
    """
    finder = _Finder(run, input_hw, mean, std, images or ImageCache(), fixed_batch)
    chosen = []
    for i, f in enumerate(files):
        image_hw = finder.images(f).shape[:2]
        cands = [PersonBox(i, f, box) for box in candidate_boxes(image_hw, input_hw)]
        kp = finder.keypoints(cands)
        order = np.argsort([-_person_score(k) for k in kp], kind="stable")[:1 if per_photo == 1 else WINDOWS_TRIED]
        kps = [kp[j] for j in order]
        boxes = finder.refine([cands[j] for j in order], kps, image_hw)
        chosen.extend(_distinct_people(boxes, kps, per_photo))
    return chosen


@dataclass
class _Finder:
    """The model's keypoints on person windows, and the windows moved to the box of their confident joints."""

    run: Callable[[np.ndarray], np.ndarray]
    input_hw: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    images: ImageCache
    fixed_batch: int | None

    def keypoints(self, boxes: list[PersonBox]) -> np.ndarray:
        x, mats = crop_people(boxes, self.input_hw, self.mean, self.std, self.images)
        fixed = self.fixed_batch is not None
        heatmaps, _ = run_heatmaps(self.run, x, self.fixed_batch or FIND_BATCH, fixed_batch=fixed)
        return decode_people(heatmaps, mats, self.input_hw)

    def refine(self, boxes: list[PersonBox], kps: list[np.ndarray], image_hw: tuple[int, int]) -> list[PersonBox]:
        """Each box REFINE times to the box of its confident joints (all windows of a photo in one batch)."""
        active = list(range(len(boxes)))
        for _ in range(REFINE):
            moved = []
            for i in active:
                joints = _joints_box(kps[i], image_hw)
                if joints is not None:
                    boxes[i] = PersonBox(boxes[i].image_id, boxes[i].file, joints)
                    moved.append(i)
            if not moved:
                break
            for i, k in zip(moved, self.keypoints([boxes[i] for i in moved]), strict=True):
                kps[i] = k
            active = moved
        return boxes


def _distinct_people(boxes: list[PersonBox], kps: list[np.ndarray], per_photo: int) -> list[PersonBox]:
    """The first box, then up to `per_photo` in order that score as a person and overlap no kept box."""
    kept: list[PersonBox] = []
    for box, k in zip(boxes, kps, strict=True):
        if len(kept) == per_photo:
            break
        if kept and (_person_score(k) < EXTRA_PERSON_SCORE
                     or any(_overlap(box.box, other.box) > MAX_OVERLAP for other in kept)):
            continue
        kept.append(box)
    return kept
