"""Pre-processing (hrdeploy.pose.preprocess) and the bundled sample photos (hrdeploy.pose.samples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrdeploy.errors import UserError
from hrdeploy.images import image_files, read_image
from hrdeploy.pose.preprocess import (
    apply_transform,
    crop_transform,
    invert_transform,
    preprocess,
    warp_affine,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_crop_round_trips_points() -> None:
    rng = np.random.default_rng(0)
    m = crop_transform((120, 20, 260, 480), (512, 512), (256, 192))
    pts = rng.uniform(0, 512, size=(50, 2))
    np.testing.assert_allclose(apply_transform(apply_transform(pts, m), invert_transform(m)), pts, atol=1e-9)


def test_topdown_crop_expands_box_to_aspect_with_padding() -> None:
    # tall box 100x300 into a 256x192 (w/h = 0.75) input: height fits, padded 1.25x
    m = crop_transform((50, 40, 100, 300), (480, 640), (256, 192))
    center = apply_transform(np.array([[100.0, 190.0]]), m)[0]
    np.testing.assert_allclose(center, [96.0, 128.0], atol=1e-9)
    top, bottom = apply_transform(np.array([[100.0, 40.0], [100.0, 340.0]]), m)[:, 1]
    np.testing.assert_allclose([top, bottom], [256 * 0.1, 256 * 0.9], atol=1e-9)  # 1/1.25 of the height
    assert m[0, 0] == pytest.approx(m[1, 1])  # isotropic
    # wide box 300x100: width fits instead
    m = crop_transform((0, 0, 300, 100), (480, 640), (256, 192))
    left, right = apply_transform(np.array([[0.0, 50.0], [300.0, 50.0]]), m)[:, 0]
    np.testing.assert_allclose([left, right], [192 * 0.1, 192 * 0.9], atol=1e-9)


def test_no_box_letterboxes_the_whole_image() -> None:
    m = crop_transform(None, (512, 512), (256, 192))
    corners = apply_transform(np.array([[0.0, 0.0], [512.0, 512.0]]), m)
    np.testing.assert_allclose(corners, [[0.0, 32.0], [192.0, 224.0]], atol=1e-9)
    m = crop_transform(None, (300, 600), (256, 256))  # wide image: bands above and below
    corners = apply_transform(np.array([[0.0, 0.0], [600.0, 300.0]]), m)
    np.testing.assert_allclose(corners, [[0.0, 64.0], [256.0, 192.0]], atol=1e-9)


@pytest.mark.parametrize("box", [(600, 10, 50, 50), (-100, 10, 50, 50), (10, 10, 0, 50), (10, 10, 5, -1)])
def test_box_outside_or_empty_is_a_user_error(box) -> None:
    with pytest.raises(UserError, match="box"):
        crop_transform(box, (512, 512), (256, 192))


def test_warp_matches_bilinear_grid_sample_with_zero_border() -> None:
    """Independent reference: grid_sample(align_corners=True, zeros) samples like cv2.warpAffine."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    m = crop_transform((5, -8, 30, 45), (40, 50), (32, 24))  # box pokes out of the image: zeros outside
    out = warp_affine(img, m, (32, 24))
    inv = invert_transform(m)
    ys, xs = np.mgrid[0:32, 0:24].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = np.stack([sx / (50 - 1) * 2 - 1, sy / (40 - 1) * 2 - 1], axis=-1)[None]
    src = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.grid_sample(src, torch.from_numpy(grid), "bilinear", "zeros", align_corners=True)
    np.testing.assert_allclose(out, ref[0].permute(1, 2, 0).numpy(), atol=1e-3)
    assert (out[0] == 0).all()  # the top rows lie above the image


def test_preprocess_normalises_and_pads_with_zero_pixels() -> None:
    img = np.full((100, 100, 3), (255, 128, 0), dtype=np.uint8)
    x, m = preprocess(img, (64, 32), MEAN, STD)
    assert x.shape == (3, 64, 32) and x.dtype == np.float32
    inside = (np.array([255, 128, 0]) / 255 - MEAN) / STD
    np.testing.assert_allclose(x[:, 32, 16], inside, rtol=1e-5)
    np.testing.assert_allclose(x[:, 2, 16], (0 - np.array(MEAN)) / STD, rtol=1e-5)  # letterbox band
    np.testing.assert_allclose(m, crop_transform(None, (100, 100), (64, 32)))


def test_image_files_sorted_case_insensitive(tmp_path) -> None:
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", "d.Jpeg"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPG", "c.webp", "d.Jpeg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        image_files(empty)
    with pytest.raises(UserError, match="does not exist"):
        image_files(tmp_path / "nope")


def test_sample_photos_are_skimage_pixels(tmp_path) -> None:
    from skimage import data

    from hrdeploy.pose.samples import write_sample_photos

    paths = write_sample_photos(tmp_path / "s", names=("astronaut", "chelsea"))
    assert [p.name for p in paths] == ["astronaut.png", "chelsea.png"]
    np.testing.assert_array_equal(read_image(paths[0]), data.astronaut())
    np.testing.assert_array_equal(read_image(paths[1]), data.chelsea())
    with pytest.raises(UserError, match="no sample photo"):
        write_sample_photos(tmp_path / "t", names=("not_a_photo",))
