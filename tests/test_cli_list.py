"""`hrdeploy list` and the CLI group itself."""

from __future__ import annotations

import json
import subprocess
import sys

from hrdeploy.cli import cli

ZOO = {
    "hrnet_w32", "hrnet_w48", "higher_hrnet_w32", "higher_hrnet_w48", "hrnetv2_w18_small_v1",
    "hrnetv2_w18_small_v2", "hrnetv2_w48", "hrnetv2p_w32", "lite_hrnet_18", "lite_hrnet_30",
    "naive_lite_hrnet_18", "wider_naive_lite_hrnet_18", "dite_hrnet_18", "dite_hrnet_30",
}
# Measured on the upstream code (issue tracker, COCO 17 keypoints, default input).
UPSTREAM_PARAMS = {"lite_hrnet_18": 1_130_769, "dite_hrnet_18": 1_186_933, "hrnet_w32": 28_536_113,
                   "higher_hrnet_w32": 28_645_331}
UPSTREAM_MACS = {"lite_hrnet_18": 242.3e6, "dite_hrnet_18": 246.6e6, "hrnet_w32": 7.645e9,
                 "higher_hrnet_w32": 46.203e9}


def test_list_json(cli_runner):
    result = cli_runner.invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == ZOO
    for name, params in UPSTREAM_PARAMS.items():
        assert rows[name]["params"] == params
        assert abs(rows[name]["macs"] / UPSTREAM_MACS[name] - 1) < 0.01
    assert rows["lite_hrnet_18"]["input_size"] == [256, 192] and rows["lite_hrnet_18"]["task"] == "pose_topdown"
    assert rows["higher_hrnet_w48"]["input_size"] == [640, 640]
    assert rows["hrnetv2_w48"]["input_size"] == [512, 1024] and rows["hrnetv2_w48"]["task"] == "segmentation"
    assert rows["lite_hrnet_18"]["published_macs"] == 205.2e6


def test_list_table(cli_runner):
    result = cli_runner.invoke(cli, ["list"])
    assert result.exit_code == 0
    assert "lite_hrnet_18" in result.output and "1.13M" in result.output and "205.20M" in result.output


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from click.testing import CliRunner; from hrdeploy.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_command_and_version(cli_runner):
    assert cli_runner.invoke(cli, ["--version"]).output.startswith("hrdeploy, version")
    result = cli_runner.invoke(cli, ["exprot"])
    assert result.exit_code == 2 and "No such command 'exprot'" in result.output


def test_list_reads_the_checked_in_table_without_torch():
    code = (
        "import sys; from click.testing import CliRunner; from hrdeploy.cli import cli; "
        "r = CliRunner().invoke(cli, ['list', '--json']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cached_table_matches_a_fresh_count():
    """The table `hrdeploy list` prints equals what counting computes now (regenerate it with
    `python -m hrdeploy.counting` after changing a network or ModelSpec)."""
    from hrdeploy.counting import cached_zoo_rows, zoo_row
    from hrdeploy.registry import list_models

    cached = {r["name"]: r for r in cached_zoo_rows()}
    assert list(cached) == list_models()
    for name in ("lite_hrnet_18", "dite_hrnet_18"):
        assert cached[name] == json.loads(json.dumps(zoo_row(name)))
