"""CI parity: every zoo model exports with a dynamic batch and matches its eager model (small inputs)."""

from __future__ import annotations

import json

import pytest
from zoo_sizes import small_input

from hrdeploy.export import export_bundle
from hrdeploy.registry import get_spec, list_models

# Exported by other tests, whose bundles this file checks instead of exporting again (exports are most of
# the suite's time): lite_hrnet_18 by the session fixture `lite18_bundle` (128x96), dite_hrnet_18
# at its full 256x192 by tests/test_rewrite_dite.py (which checks the same parity rows and batch 3).
EXPORTED_ELSEWHERE = {"lite_hrnet_18", "dite_hrnet_18"}


def check_parity(name: str, parity: dict, simplify_error: str | None) -> None:
    rows = parity["rows"]
    assert {r["batch"] for r in rows} == {1, 4}
    assert {r["output"] for r in rows} == set(get_spec(name).output_names)
    worst = max(r["max_rel"] for r in rows)
    assert parity["passed"], f"{name}: worst max_rel {worst:.2e}"
    assert worst <= 1e-4 and min(r["cosine"] for r in rows) >= 0.99999
    assert simplify_error is None


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in EXPORTED_ELSEWHERE])
def test_zoo_model_exports_with_dynamic_batch(tmp_path, name):
    result = export_bundle(name, tmp_path / name, input_size=small_input(name), dynamic_batch=True)
    check_parity(name, result.parity, result.simplify_error)


def test_lite_hrnet_18_bundle_parity(lite18_bundle):
    manifest = json.loads((lite18_bundle / "manifest.json").read_text())
    parity = json.loads((lite18_bundle / "parity.json").read_text())["export"]
    check_parity("lite_hrnet_18", parity, manifest["export"].get("simplify_error"))



@pytest.mark.slow
def test_lite_hrnet_30_passes_at_its_default_size(tmp_path):
    """At 256x192 onnxruntime and eager differ by ~1-3e-4 because the eager fp32 model is itself ~1e-4 from
    float64 (the fuse quirk's doubling stream): rows over 1e-4 carry that floor and stay within 4x of it.
    (TorchScript exporter for speed; the dynamo export behaves the same, see benchmarks/RESULTS.md.)"""
    result = export_bundle("lite_hrnet_30", tmp_path / "l30", dynamic_batch=True, exporter="torchscript")
    assert result.passed
    for row in result.parity["rows"]:
        if row["max_rel"] > 1e-4:
            assert 0 < row["fp32_floor_rel"] and row["max_rel"] <= 4 * row["fp32_floor_rel"]
        assert row["cosine"] >= 0.99999
