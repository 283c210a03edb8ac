"""Read image files as uint8 RGB arrays with Pillow, the one image reader of inference and calibration.

Conversions, so that every file reaches the model as the photo a viewer shows:
- EXIF orientation is applied (a phone photo stored sideways is turned upright);
- 16-bit and 32-bit integer images are scaled to 8 bits (65535 -> 255), float images from 0..1;
- grayscale, palette, CMYK and other modes become RGB;
- transparency (RGBA, LA, palette with a transparent index) is composited on BACKGROUND (black).
Images smaller than MIN_SIDE pixels on a side are refused: a pose network cannot see a person in them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file, os_reason

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_SIDE = 16  # pixels
BACKGROUND = (0, 0, 0)  # RGB that transparent pixels are composited on


def _to_rgb(img):  # noqa: ANN001, ANN202 - PIL.Image.Image
    from PIL import Image

    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | os.PathLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """`path` as a uint8 H x W x 3 RGB array (conversions in the module docstring); UserError if unreadable
    or smaller than `min_side` pixels on a side."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} {not_a_file(path)}; pass the path of a JPEG/PNG/BMP/WebP file")
    return _decode(path, f"image {path}", min_side)


def decode_image(data: bytes, what: str = "the image", min_side: int = MIN_SIDE) -> np.ndarray:
    """Encoded image bytes (JPEG/PNG/BMP/WebP, as a file holds them) as `read_image` returns a file; UserError
    naming `what` if they are empty, undecodable or smaller than `min_side` pixels on a side."""
    import io

    if not data:
        raise UserError(f"{what} is empty (0 bytes); send the bytes of a JPEG/PNG/BMP/WebP file")
    return _decode(io.BytesIO(data), what, min_side)


def _decode(source, what: str, min_side: int) -> np.ndarray:  # noqa: ANN001 - a path or a binary file object
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
            arr = np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read {what} ({type(err).__name__}); pass a valid JPEG/PNG/BMP/WebP file") from err
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise UserError(f"{what} is {w}x{h} pixels; images must be at least {min_side}x{min_side}")
    return np.ascontiguousarray(arr)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files (jpg/jpeg/png/bmp/webp, any case) directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"image folder {folder} {what}; pass a folder of JPEG/PNG images")
    try:
        files = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
    except OSError as err:
        raise UserError(f"cannot list image folder {folder} ({os_reason(err, folder)}); pass a folder you can "
                        "read") from err
    if not files:
        raise UserError(
            f"image folder {folder} holds no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}); "
            "add some images"
        )
    return files
