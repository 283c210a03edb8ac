"""Parity metrics and tolerances: pure numpy, no models."""

from __future__ import annotations

import numpy as np
import pytest

from hrdeploy.errors import UserError
from hrdeploy.validate.metrics import label_metrics, pck, pose_metrics, tensor_metrics
from hrdeploy.validate.tolerances import DEFAULT_TOLERANCES, check, parse_tolerances


def _peaks(coords: np.ndarray, h: int, w: int) -> np.ndarray:
    """Heatmaps [1, K, h, w] with a single peak at each (x, y) of coords [K, 2]."""
    hm = np.zeros((1, len(coords), h, w), dtype=np.float32)
    for k, (x, y) in enumerate(coords):
        hm[0, k, y, x] = 1.0
    return hm


def test_pck_counts_keypoints_within_alpha_of_the_longer_side() -> None:
    ref = np.array([[0, 0], [10, 10], [5, 5], [20, 30]], dtype=np.float32)
    out = ref.copy()
    out[1] += [3, 0]  # 3 px away
    out[2] += [0, 4]  # 4 px away
    # norm 64 * 0.05 = 3.2 px: the 3 px shift counts, the 4 px one does not -> 3 of 4
    assert pck(ref, out, norm=64) == pytest.approx(75.0)
    assert pck(ref, out, norm=80) == pytest.approx(100.0)  # threshold 4.0 px includes both


def test_pose_metrics_scales_errors_by_stride_and_reports_pck() -> None:
    h, w = 32, 24
    ref_xy = np.array([[3, 4], [10, 20], [23, 31]])
    out_xy = ref_xy.copy()
    out_xy[0] = [3, 7]  # 3 heatmap px off
    m = pose_metrics(_peaks(ref_xy, h, w), _peaks(out_xy, h, w), stride=4)
    assert m["argmax_agreement_pct"] == pytest.approx(100 * 2 / 3)
    assert m["max_kpt_err_px"] == pytest.approx(3.0)
    assert m["max_kpt_err_input_px"] == pytest.approx(12.0)
    assert m["mean_kpt_err_input_px"] == pytest.approx(4.0)
    # threshold 0.05 * 32 = 1.6 heatmap px: the shifted keypoint misses
    assert m["pck@0.05"] == pytest.approx(100 * 2 / 3)


def test_label_metrics_agreement() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    out = ref.copy()
    labels = ref.argmax(axis=1)
    # make one pixel of each image vote for another class
    for n in range(2):
        c = (labels[n, 0, 0] + 1) % 5
        out[n, c, 0, 0] = ref[n, :, 0, 0].max() + 1
    assert label_metrics(ref, out)["label_agreement_pct"] == pytest.approx(100 * (1 - 2 / 128))


def test_tensor_metrics_p99_rel_and_nan() -> None:
    ref = np.linspace(-2, 2, 1000, dtype=np.float32)
    out = ref + 0.01
    m = tensor_metrics(ref, out)
    assert m["max_rel"] == pytest.approx(0.01 / 2, rel=1e-3)
    assert m["p99_rel"] == pytest.approx(m["p99_abs"] / 2)
    bad = out.copy()
    bad[3] = np.nan
    assert check(tensor_metrics(ref, bad), {"max_rel": 1.0}) != []


def test_parse_tolerances_overrides_one_or_all_precisions() -> None:
    tol = parse_tolerances(["max_rel=1e-5", "fp16.cosine=0.99,int8.pck=50"])
    assert all(tol[p]["max_rel"] == 1e-5 for p in ("fp32", "fp16", "int8"))
    assert tol["fp16"]["cosine"] == 0.99 and tol["fp32"]["cosine"] == DEFAULT_TOLERANCES["fp32"]["cosine"]
    assert tol["int8"]["pck"] == 50
    assert DEFAULT_TOLERANCES["fp32"]["max_rel"] != 1e-5  # the defaults are not mutated


@pytest.mark.parametrize("spec", ["max_rel", "bf16.cosine=0.9", "speed=3", "cosine=abc", "max_rel=inf"])
def test_parse_tolerances_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(UserError, match="--tolerance"):
        parse_tolerances([spec])


def test_check_reports_upper_and_lower_bound_violations() -> None:
    metrics = {"max_rel": 0.2, "cosine": 0.97, "pck@0.05": 100.0}
    failures = check(metrics, {"max_rel": 0.1, "cosine": 0.99, "pck": 90.0, "label_agreement": 99.0})
    assert len(failures) == 2
    assert any(f.startswith("max_rel") for f in failures) and any(f.startswith("cosine") for f in failures)
    assert check(metrics, {"max_rel": 0.3, "cosine": 0.9}) == []
