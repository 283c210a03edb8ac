"""onnxruntime session settings: `hrdeploy bench --tune` measures and records them; OrtRunner uses them."""

from __future__ import annotations

import json
import shutil

from hrdeploy.cli import cli
from hrdeploy.runtime.onnxruntime import OrtRunner
from hrdeploy.runtime.ort_options import OrtSettings, settings_for_onnx


def test_bench_tune_records_the_fastest_settings_and_runners_use_them(lite18_bundle, tmp_path, cli_runner):
    bundle = tmp_path / "b"
    shutil.copytree(lite18_bundle, bundle)
    onnx_path = bundle / "model.onnx"
    assert settings_for_onnx(onnx_path) is None  # never tuned: onnxruntime's defaults
    assert OrtRunner(onnx_path).settings == OrtSettings()

    result = cli_runner.invoke(cli, ["bench", str(bundle), "--tune", "--threads", "1", "--iterations", "5"])
    assert result.exit_code == 0, result.output
    section = json.loads((bundle / "manifest.json").read_text())["runtime"]["onnxruntime"]
    rows = section["tuning"]["candidates"]
    assert len(rows) == 4 and {(r["mem_reuse"], r["graph_optimization"]) for r in rows} == {
        (True, "extended"), (True, "all"), (False, "extended"), (False, "all")}
    assert all(r["p50_ms"] > 0 and r["peak_rss_growth_mb"] > 0 for r in rows)
    best = min(rows, key=lambda r: r["p50_ms"])
    chosen = OrtSettings(1, best["mem_reuse"], best["graph_optimization"])
    assert OrtSettings.from_dict(section) == chosen
    assert f"mem_reuse={chosen.mem_reuse}" in result.output

    assert OrtRunner(onnx_path).settings == chosen
    assert OrtRunner(onnx_path, threads=2).settings.threads == 2  # an explicit thread count wins
    loose = tmp_path / "loose.onnx"  # the same file outside the bundle: no manifest lists it
    shutil.copy(onnx_path, loose)
    assert OrtRunner(loose).settings == OrtSettings()


def test_bench_tune_needs_a_bundle(lite18_bundle, cli_runner):
    result = cli_runner.invoke(cli, ["bench", "--onnx", str(lite18_bundle / "model.onnx"), "--tune"])
    assert result.exit_code == 2
    assert "--tune records settings in a bundle; pass the bundle DIR" in result.output
