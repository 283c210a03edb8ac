"""Top-down heatmap decoding (hrdeploy.pose.decode) and the flip test."""

from __future__ import annotations

import numpy as np
import pytest

from hrdeploy.datasets import COCO
from hrdeploy.pose.decode import (
    decode_heatmaps,
    flip_back,
    flip_test_average,
    gaussian_blur,
    gaussian_kernel1d,
    get_max_preds,
    heatmap_to_input,
)

H, W = 64, 48


def gaussian_maps(peaks: list[tuple[float, float]], sigma: float = 2.0) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    maps = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in peaks]
    return np.stack(maps)[None].astype(np.float64)


def test_integer_peaks_are_exact_for_every_post_process() -> None:
    peaks = [(20.0, 30.0), (8.0, 7.0), (40.0, 55.0), (6.0, 57.0)]
    hm = gaussian_maps(peaks)
    for post in ("none", "default", "dark"):
        coords, scores = decode_heatmaps(hm, post)
        np.testing.assert_allclose(coords[0], peaks, atol=1e-9, err_msg=post)
        np.testing.assert_allclose(scores[0], 1.0)
    # next to the border argmax and the quarter shift stay exact (DARK's zero-padded blur pulls inwards there)
    edge = [(0.0, 0.0), (47.0, 63.0), (1.0, 62.0), (3.0, 60.0)]
    for post in ("none", "default"):
        coords, _ = decode_heatmaps(gaussian_maps(edge), post)
        np.testing.assert_allclose(coords[0], edge, atol=1e-9, err_msg=post)


def test_quarter_offset_recovers_quarter_pixel_peaks() -> None:
    # mmpose 'default': argmax moves 0.25 px towards the higher neighbour in x and y independently
    peaks = [(20.25, 30.0), (10.75, 40.25), (33.25, 12.75), (24.0, 51.75)]
    coords, _ = decode_heatmaps(gaussian_maps(peaks), "default")
    np.testing.assert_allclose(coords[0], peaks, atol=1e-12)
    coords_none, _ = decode_heatmaps(gaussian_maps(peaks), "none")
    np.testing.assert_allclose(coords_none[0], np.round(peaks))


def test_dark_recovers_arbitrary_subpixel_peaks() -> None:
    peaks = [(20.3, 30.6), (10.9, 40.1), (33.45, 12.55), (24.6, 51.2)]
    hm = gaussian_maps(peaks)
    # the log of a Gaussian is quadratic, so one Taylor step is exact without the modulation blur
    coords, _ = decode_heatmaps(hm, "dark", kernel=None)
    np.testing.assert_allclose(coords[0], peaks, atol=1e-9)
    # with the Gaussian modulation (kernel 11 = sigma 2) the peak moves by far less than 0.001 px
    coords, _ = decode_heatmaps(hm, "dark", kernel=11)
    np.testing.assert_allclose(coords[0], peaks, atol=1e-3)
    # the quarter shift cannot: it is off by up to 0.2 px here
    coords_default, _ = decode_heatmaps(hm, "default")
    assert np.abs(coords_default[0] - peaks).max() > 0.1


def test_non_positive_maps_give_minus_one_as_mmpose() -> None:
    hm = gaussian_maps([(10.0, 10.0), (20.0, 20.0)])
    hm[0, 1] = -hm[0, 1]
    coords, scores = get_max_preds(hm)
    np.testing.assert_array_equal(coords[0, 1], [-1, -1])
    assert scores[0, 1] <= 0
    np.testing.assert_array_equal(coords[0, 0], [10, 10])


def test_gaussian_kernel_and_blur_match_opencv_definition() -> None:
    g = gaussian_kernel1d(11)
    sigma = 0.3 * ((11 - 1) * 0.5 - 1) + 0.8
    assert sigma == pytest.approx(2.0)
    np.testing.assert_allclose(g[5] / g[4], np.exp(1 / (2 * sigma**2)))
    assert g.sum() == pytest.approx(1.0)
    impulse = np.zeros((1, 1, 21, 21))
    impulse[0, 0, 10, 10] = 3.0
    blurred = gaussian_blur(impulse, 11)
    # blur of an impulse is the outer product of the kernel, rescaled to the original maximum
    expected = np.zeros((21, 21))
    expected[5:16, 5:16] = np.outer(g, g)
    np.testing.assert_allclose(blurred[0, 0], expected * 3.0 / expected.max(), atol=1e-12)


def test_heatmap_to_input_scales_by_the_stride() -> None:
    out = heatmap_to_input(np.array([[1.0, 2.0], [47.0, 63.0]]), (64, 48), (256, 192))
    np.testing.assert_allclose(out, [[4.0, 8.0], [188.0, 252.0]])


def test_flip_back_mirrors_and_swaps_pairs() -> None:
    rng = np.random.default_rng(0)
    hm = rng.random((1, 17, 8, 6))
    back = flip_back(hm, COCO.flip_index(), shift=False)
    np.testing.assert_array_equal(back[0, 1], hm[0, 2, :, ::-1])  # left_eye <- mirrored right_eye
    np.testing.assert_array_equal(back[0, 0], hm[0, 0, :, ::-1])  # nose stays nose
    np.testing.assert_array_equal(flip_back(back, COCO.flip_index(), shift=False), hm)
    shifted = flip_back(hm, COCO.flip_index(), shift=True)
    np.testing.assert_array_equal(shifted[..., 1:], back[..., :-1])
    np.testing.assert_array_equal(shifted[..., 0], back[..., 0])


@pytest.fixture(scope="module")
def lite18_runner():
    from hrdeploy import build_model
    from hrdeploy.runtime.eager import EagerRunner

    return EagerRunner(build_model("lite_hrnet_18"), ["heatmaps"], threads=1)


def test_flip_test_on_a_mirror_symmetric_input(lite18_runner) -> None:
    """A mirror-symmetric image: left/right keypoints come out as exact mirror images of each other."""
    from skimage.data import astronaut

    from hrdeploy.pose.pipeline import config_from_spec, predict_topdown

    cfg = config_from_spec("lite_hrnet_18", input_size=(64, 64))
    half = astronaut()[100:164:1, 200:232]  # 64x32
    image = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))  # 64x64, symmetric
    assert np.array_equal(image, image[:, ::-1])
    # image size == input size, so the letterbox transform is the identity and the input stays symmetric
    (person,) = predict_topdown(lite18_runner, image, cfg, flip_test=True, shift_heatmap=False)
    kp = person.keypoints
    stride = 4  # mmpose maps heatmap pixel i to input pixel 4 i, so mirrored x pairs sum to W - 4
    for a, b in COCO.flip_pairs:
        assert kp[a, 0] + kp[b, 0] == pytest.approx(64 - stride, abs=1e-9), (a, b)
        assert kp[a, 1] == pytest.approx(kp[b, 1], abs=1e-9)
        assert kp[a, 2] == pytest.approx(kp[b, 2], rel=1e-6)
    # without the flip test the seeded network is not symmetric, so the pairs do not mirror
    (plain,) = predict_topdown(lite18_runner, image, cfg, flip_test=False)
    sums = [plain.keypoints[a, 0] + plain.keypoints[b, 0] for a, b in COCO.flip_pairs]
    assert not np.allclose(sums, 64 - stride)


def test_flip_test_average_is_mean_with_flipped_back() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 17, 8, 6)), rng.random((1, 17, 8, 6))
    avg = flip_test_average(a, b, COCO.flip_index(), shift=True)
    np.testing.assert_allclose(avg, (a + flip_back(b, COCO.flip_index(), True)) / 2)
