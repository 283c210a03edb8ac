"""CI parity: every zoo model exports with a dynamic batch and matches its eager model (small inputs)."""

from __future__ import annotations

import pytest

from hrdeploy.export import export_bundle
from hrdeploy.registry import get_spec, list_models


def small_input(name: str) -> tuple[int, int]:
    """The smallest input at which every branch has at least 2x2 pixels (2 x the network stride)."""
    spec = get_spec(name)
    h, w = spec.default_input_size
    scale = 2 * spec.stride / min(h, w)
    return round(h * scale / spec.stride) * spec.stride, round(w * scale / spec.stride) * spec.stride


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_exports_with_dynamic_batch(tmp_path, name):
    result = export_bundle(name, tmp_path / name, input_size=small_input(name), dynamic_batch=True)
    rows = result.parity["rows"]
    assert {r["batch"] for r in rows} == {1, 4}
    assert {r["output"] for r in rows} == set(get_spec(name).output_names)
    worst = max(r["max_rel"] for r in rows)
    assert result.passed, f"{name}: worst max_rel {worst:.2e}"
    assert worst <= 1e-4 and min(r["cosine"] for r in rows) >= 0.99999
    assert result.simplify_error is None
