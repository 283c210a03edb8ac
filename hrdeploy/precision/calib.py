"""Calibration and validation images, preprocessed exactly as at deployment.

Each image is read (hrdeploy.images.read_image), letterboxed whole into the bundle's input size
and normalised with the bundle's mean/std (hrdeploy.pose.preprocess.preprocess with box=None), in file-name
order, so that calibration sees the same tensors the deployed engine will.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.manifest import InputSpec


@dataclass
class ImageSet:
    """A batch of preprocessed images [N, 3, H, W] float32 and where they came from."""

    data: np.ndarray
    files: list[str]
    source: str  # the folder, "skimage sample photos" or "random"
    available: int  # images found (data holds min(available, samples))

    @property
    def count(self) -> int:
        return int(self.data.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count, "available": self.available, "files": self.files}


def load_images(folder: str | os.PathLike, inp: InputSpec, samples: int | None = None) -> ImageSet:
    """The first `samples` images of `folder` (sorted by name), preprocessed for the bundle.

    UserError for a missing folder, a folder without images, an unreadable image, or samples < 1.
    """
    from hrdeploy.images import image_files, read_image
    from hrdeploy.pose.preprocess import preprocess

    if samples is not None and samples < 1:
        raise UserError(f"--calib-samples must be at least 1, got {samples}")
    folder = Path(folder)
    files = image_files(folder)
    chosen = files[:samples] if samples else files
    arrays = [preprocess(read_image(path), inp.size, inp.mean, inp.std, box=None)[0] for path in chosen]
    return ImageSet(np.stack(arrays), [p.name for p in chosen], str(folder), len(files))


def default_images(inp: InputSpec, workdir: str | os.PathLike, samples: int = 6) -> ImageSet:
    """Images for validation when the user gave none: scikit-image's sample photos, else seeded noise."""
    try:
        from hrdeploy.pose.samples import write_sample_photos

        folder = Path(workdir) / "samples"
        write_sample_photos(folder)
        images = load_images(folder, inp, samples)
        images.source = "skimage sample photos"
        return images
    except (UserError, ImportError):
        rng = np.random.default_rng(0)
        data = rng.standard_normal((min(samples, 4), 3, *inp.size)).astype(np.float32)
        return ImageSet(data, [], "random", data.shape[0])


def batches(data: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """Split [N, ...] into batches a graph with a fixed batch dimension accepts (None: one batch).

    With a fixed batch b the last chunk is filled up by repeating images from the start, so every
    image is seen and each chunk has exactly b images.
    """
    if not batch:
        return [data]
    chunks = []
    for start in range(0, data.shape[0], batch):
        chunk = data[start : start + batch]
        if chunk.shape[0] < batch:
            reps = np.resize(np.arange(data.shape[0]), batch - chunk.shape[0])
            chunk = np.concatenate([chunk, data[reps]])
        chunks.append(chunk)
    return chunks


def static_batch(onnx_path: str | os.PathLike) -> int | None:
    """The fixed batch size of an ONNX model's first input, or None when it is dynamic."""
    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None
