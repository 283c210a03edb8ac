"""The paired bootstrap of COCO AP differences against hand computations and pycocotools itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from hrdeploy.parity.bootstrap import average_precision, paired_differences, paired_interval, resample_indices
from hrdeploy.parity.coco import CocoKeypoints
from hrdeploy.parity.compare import COCO_SIGMAS

AREA = 2000.0


def _person(i: int) -> np.ndarray:
    """17 visible joints of person i, spread over a 64x64 image."""
    rng = np.random.default_rng(i)
    return np.concatenate([rng.uniform(10, 50, (17, 2)), np.full((17, 1), 2.0)], axis=1)


def _shifted(kp: np.ndarray, oks: float) -> np.ndarray:
    """kp moved along x so that every joint's OKS term, hence the person's OKS, is exactly `oks`."""
    d = np.sqrt(-math.log(oks) * 2.0 * AREA * (2.0 * COCO_SIGMAS) ** 2)
    out = kp.copy()
    out[:, 0] += d
    return out


def _dataset(tmp_path, people: int) -> CocoKeypoints:
    """`people` annotated people, each alone in a 64x64 image (so matching is within a person)."""
    images, anns = [], []
    for i in range(people):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": AREA,
                     "bbox": [5, 5, 50, 50], "num_keypoints": 17, "keypoints": _person(i).ravel().tolist()})
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(17)], "skeleton": []}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return CocoKeypoints(path, tmp_path)


def _results(kps: list[np.ndarray], scores: list[float]) -> list[dict]:
    return [{"image_id": i + 1, "category_id": 1, "keypoints": kp.ravel().tolist(), "score": s}
            for i, (kp, s) in enumerate(zip(kps, scores, strict=True))]


@pytest.fixture
def three(tmp_path):
    """Person 0 predicted exactly (score 0.9), person 1 at OKS 0.72 (score 0.95), person 2 at OKS 0.3 (0.8)."""
    coco = _dataset(tmp_path, 3)
    kps = [_person(0), _shifted(_person(1), 0.72), _shifted(_person(2), 0.3)]
    stats, outcomes = coco.evaluate(_results(kps, [0.9, 0.95, 0.8]), [100, 101, 102])
    return coco, stats, outcomes


def test_identity_resample_is_cocoeval(three):
    _, stats, outcomes = three
    assert outcomes.kind == "person" and outcomes.keys() == [100, 101, 102]
    # by hand: at OKS thresholds 0.50-0.70 the ranking is TP (p1), TP (p0), FP (p2): precision 1 up to recall
    # 2/3 (67 of COCO's 101 recall points); at 0.75-0.95 FP, TP, FP: precision 1/2 up to recall 1/3 (34 points)
    hand = (5 * 67 / 101 + 5 * 0.5 * 34 / 101) / 10
    assert average_precision(outcomes) == pytest.approx(hand, abs=1e-12)
    assert stats["AP"] == pytest.approx(hand, abs=1e-12)


def test_resample_with_repeats_by_hand(three):
    _, _, outcomes = three
    # people 1, 1, 0: at 0.50-0.70 three TPs (precision 1 everywhere); at 0.75-0.95 FP, FP, TP: precision 1/3
    # up to recall 1/3
    hand = (5 * 1.0 + 5 * (34 / 3) / 101) / 10
    assert average_precision(outcomes, [1, 1, 0]) == pytest.approx(hand, abs=1e-12)


def test_paired_differences_match_pycocotools_on_resampled_datasets(tmp_path):
    """Each bootstrap difference equals pycocotools' AP difference on a dataset made of the resampled people."""
    n = 5
    rng = np.random.default_rng(3)
    oks = rng.uniform(0.45, 1.0, n)
    scores = rng.uniform(0.5, 1.0, n).round(6).tolist()
    truth = [_person(i) for i in range(n)]
    good = [_shifted(kp, 0.97) for kp in truth]
    bad = [_shifted(kp, float(o)) for kp, o in zip(truth, oks, strict=True)]
    base = _dataset(tmp_path, n)
    owners = [100 + i for i in range(n)]
    _, ref = base.evaluate(_results(good, scores), owners)
    _, cand = base.evaluate(_results(bad, scores), owners)
    diffs = paired_differences(ref, cand, resamples=6, seed=11)
    for k, idx in enumerate(resample_indices(n, 6, 11)):
        folder = tmp_path / f"r{k}"
        folder.mkdir()
        images, anns = [], []
        for j, i in enumerate(idx):  # person i copied into its own image j
            Image.new("RGB", (64, 64)).save(folder / f"{j}.png")
            images.append({"id": j + 1, "file_name": f"{j}.png", "width": 64, "height": 64})
            anns.append({"id": 100 + j, "image_id": j + 1, "category_id": 1, "iscrowd": 0, "area": AREA,
                         "bbox": [5, 5, 50, 50], "num_keypoints": 17, "keypoints": truth[i].ravel().tolist()})
        cats = [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(17)], "skeleton": []}]
        (folder / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        coco = CocoKeypoints(folder / "ann.json", folder)
        ap_ref = coco.score(_results([good[i] for i in idx], [scores[i] for i in idx]))["AP"]
        ap_cand = coco.score(_results([bad[i] for i in idx], [scores[i] for i in idx]))["AP"]
        assert diffs[k] == pytest.approx(100 * (ap_cand - ap_ref), abs=1e-9)


def test_interval_and_call(three):
    coco, _, cand = three
    _, ref = coco.evaluate(_results([_person(i) for i in range(3)], [0.9, 0.95, 0.8]), [100, 101, 102])
    out = paired_interval(ref, cand, resamples=200, seed=0, bar=2.0)
    diffs = paired_differences(ref, cand, 200, 0)
    assert out["dap"] == pytest.approx(100 * (average_precision(cand) - average_precision(ref)))
    assert (out["low"], out["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert out["low"] <= out["dap"] <= out["high"]
    assert out["call"] == ("fail" if out["high"] < -2 else "inconclusive" if out["low"] < -2 else "pass")
    assert out["unit"] == "person" and out["units"] == 3
    # the same seed gives the same interval; paired means an identical model has a zero-width interval at 0
    assert paired_interval(ref, cand, 200, 0, 2.0) == out
    same = paired_interval(ref, ref, 50, 0, 2.0)
    assert (same["low"], same["dap"], same["high"], same["call"]) == (0.0, 0.0, 0.0, "pass")
