"""Image reading: every Pillow mode reaches the model as the 8-bit RGB photo a viewer shows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hrdeploy.errors import UserError
from hrdeploy.images import BACKGROUND, MIN_SIDE, read_image

RAMP = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64  # 0..65472, a 16-bit ramp


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(RAMP).save(path)  # PNG 16-bit grayscale (mode I;16)
    assert Image.open(path).mode.startswith("I")
    img = read_image(path)
    expected = np.rint(RAMP / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], expected)
    assert img.shape == (32, 32, 3) and img[..., 0].min() == 0 and img[..., 0].max() == 255


def test_gray_palette_and_rgba(tmp_path) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    g = read_image(tmp_path / "gray.png")
    assert g.dtype == np.uint8 and (g[..., 0] == g[..., 2]).all() and g[3, 5, 1] == 40

    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, 16:] = (200, 10, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "pal.png")
    p = read_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(p[0, 20], [200, 10, 30])

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :16, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.PNG")
    a = read_image(tmp_path / "rgba.PNG")
    np.testing.assert_array_equal(a[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(a[0, 31], BACKGROUND)


def test_exif_rotation(tmp_path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape stored; EXIF 6 says "rotate 90 clockwise to view"
    arr[:, :10] = 255  # white band on the stored left edge -> the top after rotating clockwise
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape[:2] == (40, 20)
    assert out[:8].mean() > 200 and out[-20:].mean() < 30


def test_tiny_broken_and_missing(tmp_path) -> None:
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(UserError, match=f"is 1x1 pixels; images must be at least {MIN_SIDE}x{MIN_SIDE}"):
        read_image(tmp_path / "one.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        read_image(tmp_path / "broken.jpg")
    with pytest.raises(UserError, match="missing.png does not exist"):
        read_image(tmp_path / "missing.png")
