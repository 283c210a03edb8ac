"""Data loaders of the comparator: what every runner of a comparison is fed.

- `seeded_batch` / `SeededInputs`: standard-normal NCHW batches, one seed each (reproducible anywhere);
- `found_people`: person crops of photos, where a model (the fp32 one) is surest of a person
  (hrdeploy.parity.crops.find_people);
- `annotated_people`: the annotated people of a COCO keypoint json, cropped from its images.

Crops are `CropSet`s (hrdeploy.parity.coco): their inputs `x` go through the runners, their boxes and
image->input matrices decode the keypoints the pose compare functions judge.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrdeploy.parity.coco import CocoKeypoints, CropSet, ImageCache


def seeded_batch(batch: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """A float32 [batch, 3, H, W] standard-normal batch from numpy's PCG64 generator seeded with `seed`."""
    return np.random.default_rng(seed).standard_normal((batch, 3, *size), dtype=np.float32)


@dataclass(frozen=True)
class SeededInputs:
    """One seeded batch per (batch, (H, W), seed) case, in order; iterable again with the same batches."""

    cases: Sequence[tuple[int, tuple[int, int], int]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (seeded_batch(batch, size, seed) for batch, size, seed in self.cases)

    def __len__(self) -> int:
        return len(self.cases)


def found_people(
    files: Sequence[Path], find: Callable[[np.ndarray], np.ndarray], input_hw: tuple[int, int],
    mean: Sequence[float], std: Sequence[float], per_photo: int = 1, images: ImageCache | None = None,
) -> CropSet:
    """Crops of up to `per_photo` people per photo, found by `find` (NCHW -> heatmaps)."""
    from hrdeploy.parity.crops import find_people

    images = images or ImageCache()
    boxes = find_people(files, find, input_hw, mean, std, images, per_photo)
    return CropSet.build(boxes, input_hw, mean, std, images)


def annotated_people(
    ann: str | os.PathLike, images: str | os.PathLike, input_hw: tuple[int, int], mean: Sequence[float],
    std: Sequence[float],
) -> tuple[CropSet, CocoKeypoints]:
    """Crops of the annotated people of a COCO keypoint json (its ground-truth boxes), and the annotations."""
    coco = CocoKeypoints(ann, images)
    return CropSet.build(coco.gt_boxes(), input_hw, mean, std), coco
