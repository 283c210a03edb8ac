"""Bottom-up decoding (hrdeploy.pose.bottomup): aggregation, NMS, tag grouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrdeploy.datasets import COCO
from hrdeploy.pose.bottomup import (
    GroupParams,
    aggregate_outputs,
    group_people,
    heatmap_nms,
    resize_bilinear,
)

K, S = 17, 64


def test_resize_and_nms_match_torch() -> None:
    x = np.random.default_rng(1).random((1, 3, 9, 7)).astype(np.float32)
    for hw in ((18, 14), (36, 28), (5, 4)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=hw, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(resize_bilinear(x, hw), ref.numpy(), atol=1e-6)
    t = torch.from_numpy(x)
    ref = (t * (torch.nn.functional.max_pool2d(t, 5, 1, 2) == t)).numpy()
    np.testing.assert_array_equal(heatmap_nms(x, 5), ref)


def test_aggregate_averages_resolutions_and_undoes_the_flip() -> None:
    rng = np.random.default_rng(2)
    coarse = rng.random((1, 2 * K, 8, 8)).astype(np.float32)  # heatmaps + tags at 1/4
    fine = rng.random((1, K, 16, 16)).astype(np.float32)  # heatmaps at 1/2
    hm, tags = aggregate_outputs([coarse, fine], K, project_hw=(32, 32))
    up = lambda a, hw: torch.nn.functional.interpolate(torch.from_numpy(a), size=hw, mode="bilinear")  # noqa: E731
    ref_hm = up(((up(coarse[:, :K], (16, 16)) + torch.from_numpy(fine)) / 2).numpy(), (32, 32)).numpy()
    ref_tag = up(up(coarse[:, K:], (16, 16)).numpy(), (32, 32)).numpy()
    np.testing.assert_allclose(hm, ref_hm, atol=1e-6)
    assert tags.shape == (1, K, 32, 32, 1)
    np.testing.assert_allclose(tags[..., 0], ref_tag, atol=1e-6)
    # a flip-equivariant network gives mirrored, channel-swapped outputs on the mirrored image:
    idx = COCO.flip_index()
    mirrored = [np.ascontiguousarray(o[:, np.r_[idx, [K + i for i in idx]][: o.shape[1]], :, ::-1])
                for o in (coarse, fine)]
    hm_f, tags_f = aggregate_outputs([coarse, fine], K, flipped_outputs=mirrored, flip_index=idx, project_hw=(32, 32))
    np.testing.assert_allclose(hm_f, hm, atol=1e-6)
    np.testing.assert_allclose(tags_f[..., 1], tags[..., 0], atol=1e-6)


def _scene(people: list[np.ndarray], tag_values: list[float], amp: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps at each person's joints, tag maps equal to the person's tag around its joints."""
    ys, xs = np.mgrid[0:S, 0:S]
    det = np.zeros((K, S, S), dtype=np.float32)
    tags = np.full((K, S, S), -50.0, dtype=np.float32)
    for joints, tag in zip(people, tag_values, strict=True):
        for j, (x, y) in enumerate(joints):
            if np.isnan(x):
                continue
            g = amp * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
            det[j] = np.maximum(det[j], g)
            near = (np.abs(xs - x) <= 3) & (np.abs(ys - y) <= 3)
            tags[j][near] = tag
    return det, tags


def _person(x0: int, y0: int) -> np.ndarray:
    # a COCO-ish layout; peaks at integer + 0.25 so upstream's adjust (+-0.25, +0.5) lands on peak + 0.5
    offsets = [(0, 0), (-2, -2), (2, -2), (-4, -1), (4, -1), (-6, 6), (6, 6), (-8, 13), (8, 13), (-9, 20),
               (9, 20), (-4, 20), (4, 20), (-4, 28), (4, 28), (-4, 35), (4, 35)]
    return np.array([(x0 + dx + 0.25, y0 + dy + 0.25) for dx, dy in offsets], dtype=np.float64)


def test_grouping_separates_two_people_by_tag() -> None:
    a, b = _person(15, 10), _person(45, 14)
    det, tags = _scene([a, b], [0.0, 3.0])
    people, scores = group_people(det, tags[..., None])
    assert people.shape == (2, K, 3)
    order = np.argsort(people[:, 0, 0])  # left person first
    np.testing.assert_allclose(people[order[0], :, :2], a + 0.5, atol=1e-6)
    np.testing.assert_allclose(people[order[1], :, :2], b + 0.5, atol=1e-6)
    np.testing.assert_allclose(scores, np.exp(-2 * 0.25**2 / (2 * 1.5**2)), rtol=1e-6)  # value at the grid peak


def test_tag_threshold_and_refine() -> None:
    a = _person(30, 10)
    # the right wrist's tag differs by 0.8 (< threshold 1): same person
    det, tags = _scene([a], [0.0])
    tags[10][np.abs(tags[10]) < 1] = 0.8
    people, _ = group_people(det, tags)
    assert len(people) == 1
    # by 1.5: a person of its own
    tags[10][np.abs(tags[10] - 0.8) < 1e-6] = 1.5
    people, _ = group_people(det, tags)
    assert len(people) == 2
    # a joint below the detection threshold (0.1) is filled in by refine, at its peak, with its low score
    weak = a.copy()
    weak[9] = np.nan
    det, tags = _scene([weak], [0.0])
    det_w, tags_w = _scene([a], [0.0], amp=0.05)
    det[9], tags[9] = det_w[9], tags_w[9]
    no_refine, _ = group_people(det, tags, GroupParams(refine=False))
    assert no_refine[0, 9, 2] == 0
    refined, _ = group_people(det, tags)
    assert refined[0, 9, 2] == pytest.approx(0.05 * np.exp(-2 * 0.25**2 / (2 * 1.5**2)), rel=1e-5)
    np.testing.assert_allclose(refined[0, 9, :2], a[9] + 0.5, atol=1e-6)
