"""hrdeploy.parity: the comparator's metrics, the verdict and the tolerance table (pure numpy, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from hrdeploy.errors import UserError
from hrdeploy.parity.compare import (
    COCO_SIGMAS,
    argmax_agreement,
    judge,
    keypoint_agreement,
    label_agreement,
    tensor_stats,
)
from hrdeploy.parity.tolerances import FLOOR_FACTOR, TOLERANCES, Tolerance, parse_tolerances


def _peaks(coords: np.ndarray, h: int, w: int) -> np.ndarray:
    """Heatmaps [1, K, h, w] with a single peak at each (x, y) of coords [K, 2]."""
    hm = np.zeros((1, len(coords), h, w), dtype=np.float32)
    for k, (x, y) in enumerate(coords):
        hm[0, k, y, x] = 1.0
    return hm


def test_argmax_agreement_counts_moved_peaks() -> None:
    ref_xy = np.array([[3, 4], [10, 20], [23, 31]])
    out_xy = ref_xy.copy()
    out_xy[0] = [3, 7]  # 3 heatmap px off
    m = argmax_agreement(_peaks(ref_xy, 32, 24), _peaks(out_xy, 32, 24))
    assert m["argmax_agreement_pct"] == pytest.approx(100 * 2 / 3)
    assert m["max_kpt_err_px"] == pytest.approx(3.0) and m["mean_kpt_err_px"] == pytest.approx(1.0)


def test_keypoint_agreement_oks_pck_and_confident_joints_only() -> None:
    ref = np.zeros((1, 17, 3))
    ref[0, :, 0] = np.arange(17) * 10.0
    ref[0, :, 2] = 0.9
    ref[0, 16, 2] = 0.1  # not confident: never judged
    out = ref.copy()
    out[0, 0, 0] += 5.0  # nose 5 px off
    out[0, 16, 0] += 500.0
    m = keypoint_agreement(ref, out, np.array([[100.0, 200.0]]))
    area, k = 100.0 * 200.0, COCO_SIGMAS[0]
    expected = (np.exp(-(25.0) / (2 * area * (2 * k) ** 2)) + 15) / 16  # COCO's OKS over the 16 judged joints
    assert m["oks"] == pytest.approx(expected) and m["keypoints"] == 16
    # PCK: 0.05 x 200 = 10 px, the 5 px miss still counts
    assert m["pck@0.05"] == 100.0 and m["max_err_img_px"] == pytest.approx(5.0)
    out[0, 1, 1] += 11.0
    assert keypoint_agreement(ref, out, np.array([[100.0, 200.0]]))["pck@0.05"] == pytest.approx(100 * 15 / 16)


def test_label_agreement() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    out = ref.copy()
    labels = ref.argmax(axis=1)
    for n in range(2):  # one pixel of each image votes for another class
        out[n, (labels[n, 0, 0] + 1) % 5, 0, 0] = ref[n, :, 0, 0].max() + 1
    assert label_agreement(ref, out)["label_agreement_pct"] == pytest.approx(100 * (1 - 2 / 128))


def test_tensor_stats_and_non_finite_values_fail() -> None:
    ref = np.linspace(-2, 2, 1000, dtype=np.float32)
    m = tensor_stats(ref, ref + 0.01)
    assert m["max_rel"] == pytest.approx(0.01 / 2, rel=1e-3) and m["p99_rel"] == pytest.approx(m["p99_abs"] / 2)
    bad = ref.copy()
    bad[3] = np.inf
    stats = tensor_stats(ref, bad)
    assert stats["non_finite"] == 1
    assert judge(stats, TOLERANCES["fp32"])[0] == "1 non-finite values (inf/nan)"


def test_judge_checks_only_the_metrics_it_is_given() -> None:
    tol = Tolerance(max_rel=1e-4, min_cosine=0.999, max_ap_drop=2.0, min_oks=0.95, min_pck=90.0)
    assert judge({"ap_drop": 1.9}, tol) == []
    assert judge({"ap_drop": 2.1}, tol) == ["AP drop 2.10 (needs <= 2)"]
    assert judge({"ap_drop": -5.0}, tol) == []  # better than eager passes
    fails = judge({"oks": 0.9, "pck@0.05": 95.0, "cosine": 0.99}, tol)
    assert [f.split()[0] for f in fails] == ["cosine", "keypoint"]
    assert judge({"oks": float("nan")}, tol) != []


@pytest.mark.parametrize(("err", "floor", "passed"), [(5e-5, None, True), (3e-4, 1e-4, True), (5e-4, 1e-4, False),
                                                      (3e-4, None, False)])
def test_fp32_max_rel_passes_within_the_floor(err: float, floor: float | None, passed: bool) -> None:
    metrics = {"max_rel": err, **({"fp32_floor_rel": floor} if floor else {})}
    assert (judge(metrics, TOLERANCES["fp32"]) == []) is passed
    assert FLOOR_FACTOR * 1e-4 > 3e-4


def test_the_table_orders_precisions_and_the_gates_of_the_issue() -> None:
    assert TOLERANCES["fp16"].max_ap_drop == 0.5 and TOLERANCES["int8"].max_ap_drop == 2.0
    assert TOLERANCES["fp32"].max_rel == 1e-4
    assert TOLERANCES["fp32"].min_oks > TOLERANCES["fp16"].min_oks > TOLERANCES["int8"].min_oks


def test_parse_tolerances_overrides_one_or_all_precisions() -> None:
    tol = parse_tolerances(["min_oks=0.9", "fp16.min_cosine=0.99,int8.max_ap_drop=3"])
    assert all(tol[p].min_oks == 0.9 for p in ("fp32", "fp16", "int8"))
    assert tol["fp16"].min_cosine == 0.99 and tol["fp32"].min_cosine == TOLERANCES["fp32"].min_cosine
    assert tol["int8"].max_ap_drop == 3 and TOLERANCES["int8"].max_ap_drop == 2.0  # defaults not mutated


@pytest.mark.parametrize("spec", ["max_rel", "bf16.min_cosine=0.9", "speed=3", "min_oks=abc", "max_rel=inf"])
def test_parse_tolerances_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(UserError, match="--tolerance"):
        parse_tolerances([spec])


def test_calibration_boxes_from_mpii_and_coco_annotations(shared_data) -> None:
    import json

    from hrdeploy.parity.crops import boxes_from_annotations, candidate_boxes

    mpii = json.loads((shared_data / "mpii" / "test_mpii.json").read_text())
    boxes = boxes_from_annotations(shared_data / "mpii" / "test_mpii.json", shared_data / "mpii", (256, 192))
    assert [b.file.name for b in boxes] == [r["image"] for r in mpii]
    for b, r in zip(boxes, mpii, strict=True):
        x, y, w, h = b.box
        assert h == pytest.approx(r["scale"] * 200) and w == pytest.approx(h * 0.75)
        assert (x + w / 2, y + h / 2) == pytest.approx(tuple(r["center"]))
    coco = boxes_from_annotations(shared_data / "coco" / "test_coco.json", shared_data / "coco", (256, 192))
    assert len(coco) == 12  # the annotated people with keypoints
    # the person search starts from the centred crop and tiles the photo with smaller windows
    cands = candidate_boxes((480, 640), (256, 192))
    assert len(cands) > 10 and cands[0][2] / cands[0][3] == pytest.approx(0.75)
    # every padded window (x1.25 around the box) lies inside the photo
    assert all(x - 0.125 * w >= -1e-6 and x + 1.125 * w <= 640 + 1e-6 for x, _, w, _ in cands[1:])
