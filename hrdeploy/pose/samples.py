"""Sample photos bundled with scikit-image, written as PNGs (default calibration / validation images).

They ship inside the scikit-image wheel (skimage/data/*.png|jpg), so no download is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hrdeploy.errors import UserError, missing_dependency

# scikit-image's bundled colour photographs (skimage.data.<name>() returns HxWx3 uint8 RGB)
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field")


def write_sample_photos(folder: str | os.PathLike, names: Sequence[str] = SAMPLE_PHOTOS) -> list[Path]:
    """Write each named skimage.data colour photo to `folder`/<name>.png; return the paths in order."""
    try:
        import skimage.data as skdata
    except ImportError as err:
        raise missing_dependency("scikit-image", extra="dev", purpose="the bundled sample photos") from err
    import numpy as np
    from PIL import Image

    from hrdeploy.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    choices = ", ".join(SAMPLE_PHOTOS)
    paths = []
    for name in names:
        if name == "motorcycle_left":
            loader = lambda: skdata.stereo_motorcycle()[0]  # noqa: E731 - left view of the stereo pair
        else:
            loader = getattr(skdata, name, None)
        if loader is None:
            raise UserError(f"scikit-image has no sample photo {name!r}; use some of {choices}")
        image = np.asarray(loader())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UserError(f"scikit-image sample {name!r} is not a colour photo; use some of {choices}")
        if image.dtype != np.uint8:
            image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(image[..., :3])).save(tmp, format="PNG")
        paths.append(path)
    return paths
