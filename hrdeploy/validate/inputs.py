"""Validation inputs: real photos (preprocessed like deployment does) and seeded random tensors.

Photos are scikit-image's bundled samples by default (hrdeploy.pose.samples), or a user folder, run
through hrdeploy.pose.preprocess.preprocess (whole-image letterbox, the manifest's mean/std). Seeded
standard-normal inputs exercise the whole input range, and with a dynamic-shape bundle a second input
size catches graphs whose shapes were baked at export (the dynamo exporter's adaptive-pool failure).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from hrdeploy.manifest import InputSpec
from hrdeploy.parity.loaders import seeded_batch


@dataclass(frozen=True)
class ValidationInput:
    name: str  # file name of the photo, or "seeded:<seed>"
    kind: str  # "photo" | "seeded"
    array: np.ndarray  # float32 CHW, normalised

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])


def second_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Another valid size for dynamic-shape bundles: each side plus one stride (not a multiple of it)."""
    return size[0] + stride, size[1] + stride


def photo_inputs(
    inp: InputSpec, images: str | os.PathLike | None = None, limit: int | None = None
) -> list[ValidationInput]:
    """Preprocessed photos from `images` (a folder) or scikit-image's samples, at the bundle's input size."""
    from hrdeploy.images import image_files, read_image
    from hrdeploy.pose.preprocess import preprocess

    if images is None:
        from hrdeploy.pose.samples import write_sample_photos

        with tempfile.TemporaryDirectory(prefix="hrdeploy-photos-") as tmp:
            files = write_sample_photos(tmp)
            pixels = [(p.name, read_image(p)) for p in files]
    else:
        pixels = [(p.name, read_image(p)) for p in image_files(images)]
    pixels = pixels[:limit] if limit else pixels
    return [
        ValidationInput(name, "photo", preprocess(img, inp.size, inp.mean, inp.std)[0]) for name, img in pixels
    ]


def seeded_inputs(size: tuple[int, int], count: int, first_seed: int = 0) -> list[ValidationInput]:
    """`count` standard-normal CHW inputs, one seed each (reproducible across runs and machines)."""
    seeds = range(first_seed, first_seed + count)
    return [ValidationInput(f"seeded:{seed}", "seeded", seeded_batch(1, size, seed)[0]) for seed in seeds]


def validation_inputs(
    inp: InputSpec,
    images: str | os.PathLike | None = None,
    *,
    photos: bool = True,
    seeded: int = 2,
    photo_limit: int | None = None,
) -> list[ValidationInput]:
    """Photos, then seeded inputs at the manifest size, then (dynamic shape) seeded ones at a second size."""
    out = photo_inputs(inp, images, photo_limit) if photos or images is not None else []
    out += seeded_inputs(inp.size, seeded)
    if inp.dynamic_shape and seeded:
        out += seeded_inputs(second_size(inp.size, inp.stride), 1, first_seed=seeded)
    return out

