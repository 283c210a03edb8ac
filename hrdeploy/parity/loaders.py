"""Data loaders of the comparator: what every runner of a comparison is fed.

- `seeded_batch` / `SeededInputs`: standard-normal NCHW batches, one seed each (reproducible anywhere);
- `Batches`: an [N, ...] array in batches of a size, the last one padded for fixed-batch graphs;
- `GroupedInputs`: CHW inputs of several sizes (validate's photos and seeded inputs), padded batches per size;
- `found_people`: person crops of photos, where a model (the fp32 one) is surest of a person
  (hrdeploy.parity.crops.find_people);
- `annotated_people`: the annotated people of a COCO keypoint json, cropped from its images.

Crops are `CropSet`s (hrdeploy.parity.coco): their inputs `x` go through the runners, their boxes and
image->input matrices decode the keypoints the pose compare functions judge.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrdeploy.parity.coco import CocoKeypoints, CropSet, ImageCache
from hrdeploy.parity.comparator import Outputs


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


def _count(items: int, batch: int) -> int:
    """How many batches of `batch` hold `items` items."""
    return -(-items // batch)


@dataclass(frozen=True)
class Batches:
    """`data` [N, ...] in consecutive batches of `batch`; `pad` fills the last one up to `batch` with copies of its
    last item, because graphs and engines with a fixed batch dimension take exactly that many."""

    data: np.ndarray
    batch: int
    pad: bool = False

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.data), self.batch):
            chunk = self.data[start:start + self.batch]
            if self.pad and len(chunk) < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            yield chunk

    def __len__(self) -> int:
        return _count(len(self.data), self.batch)


@dataclass(frozen=True)
class GroupedInputs:
    """CHW inputs of several sizes, fed one size group after another (sizes in first-seen order) as padded
    `Batches` of `batch`: a batch holds one size only, and exactly `batch` items for fixed-batch graphs."""

    arrays: Sequence[np.ndarray]
    batch: int

    @property
    def groups(self) -> dict[tuple[int, int], list[int]]:
        """The inputs' indices by (H, W)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, array in enumerate(self.arrays):
            groups.setdefault((int(array.shape[1]), int(array.shape[2])), []).append(i)
        return groups

    def __iter__(self) -> Iterator[np.ndarray]:
        return itertools.chain.from_iterable(
            Batches(np.stack([self.arrays[i] for i in idx]), self.batch, pad=True) for idx in self.groups.values())

    def __len__(self) -> int:
        return sum(_count(len(idx), self.batch) for idx in self.groups.values())

    def by_size(self, outputs: Sequence[Outputs]) -> dict[tuple[int, int], Outputs]:
        """A runner's outputs on these batches (in order) by size: float32, concatenated per name, unpadded."""
        runs = iter(outputs)
        out: dict[tuple[int, int], Outputs] = {}
        for size, idx in self.groups.items():
            part = [next(runs) for _ in range(_count(len(idx), self.batch))]
            out[size] = {n: np.concatenate([np.asarray(p[n], np.float32) for p in part])[:len(idx)] for n in part[0]}
        return out


def found_people(
    files: Sequence[Path], find: Callable[[np.ndarray], np.ndarray], input_hw: tuple[int, int],
    mean: Sequence[float], std: Sequence[float], per_photo: int = 1, images: ImageCache | None = None,
    fixed_batch: int | None = None,
) -> CropSet:
    """Crops of up to `per_photo` people per photo, found by `find` (NCHW -> heatmaps; exactly `fixed_batch`
    windows a run when its graph has a static batch)."""
    from hrdeploy.parity.crops import find_people

    images = images or ImageCache()
    boxes = find_people(files, find, input_hw, mean, std, images, per_photo, fixed_batch)
    return CropSet.build(boxes, input_hw, mean, std, images)


def annotated_people(
    ann: str | os.PathLike, images: str | os.PathLike, input_hw: tuple[int, int], mean: Sequence[float],
    std: Sequence[float],
) -> tuple[CropSet, CocoKeypoints]:
    """Crops of the annotated people of a COCO keypoint json (its ground-truth boxes), and the annotations."""
    coco = CocoKeypoints(ann, images)
    return CropSet.build(coco.gt_boxes(), input_hw, mean, std), coco
