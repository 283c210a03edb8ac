"""`hrdeploy eval` end to end on seeded bundles and a hand-made COCO keypoint json (pycocotools scores it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_bundles import tiny_coco

from hrdeploy.cli import cli


@pytest.fixture(scope="module")
def higher_hrnet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """higher_hrnet_w32 (bottom-up, seeded weights) exported at 128x128."""
    from hrdeploy.export import export_bundle

    out = tmp_path_factory.mktemp("bottomup") / "higher_hrnet_w32"
    export_bundle("higher_hrnet_w32", out, input_size=(128, 128))
    return out


@pytest.mark.slow
def test_eval_scores_a_bottom_up_bundle(higher_hrnet_bundle: Path, tmp_path: Path, cli_runner) -> None:
    ann = tiny_coco(tmp_path / "coco")
    result = cli_runner.invoke(cli, ["eval", str(higher_hrnet_bundle), "--ann", str(ann), "--images",
                                     str(ann.parent), "--flip-test", "--threads", "1"])
    assert result.exit_code in (0, 1), result.output  # seeded weights: the verdict is not the point, the run is
    report = json.loads((higher_hrnet_bundle / "eval.json").read_text())
    assert [r["artifact"] for r in report["rows"]] == ["eager", "onnx"]
    assert report["boxes"] == "none (bottom-up)" and report["flip_test"] is True
    assert all(0.0 <= r["AP"] <= 1.0 for r in report["rows"])
    assert ".hrdeploy.lock" not in os.listdir(higher_hrnet_bundle)
