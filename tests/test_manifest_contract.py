"""The manifest schema both ways: written and read through hrdeploy.manifest, never as raw keys elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_bundles import tiny_bundle, tiny_manifest

from hrdeploy.bundle import LOCK, MANIFEST, Bundle
from hrdeploy.errors import UserError
from hrdeploy.manifest import FORMAT, FORMAT_V1, Manifest, parse_manifest

PACKAGE = Path(__file__).resolve().parents[1] / "hrdeploy"
BUNDLE_LAYER = {"bundle.py", "manifest.py"}
# Raw reads of a manifest (or of an artifact's manifest entry) that only the bundle layer may do.
RAW_READS = [
    (re.compile(r"\bmanifest\[|\bmanifest\.get\("), "a manifest dict indexed by key"),
    (re.compile(r"\binfo\[|\binfo\.get\("), "an artifact entry read as a dict"),
    (re.compile(r"json\.loads?\(.*(manifest|MANIFEST)"), "manifest.json parsed outside the bundle"),
    (re.compile(r"(MANIFEST|manifest\.json['\"]?|manifest_path)\)?\.read_(text|bytes)\("), "manifest.json read"),
    (re.compile(r"\.section\(['\"](stages|model|input|outputs|keypoints|artifacts)['\"]"),
     "a typed section read as a free one"),
]


def test_no_raw_manifest_read_outside_the_bundle_layer() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in BUNDLE_LAYER and path.parent == PACKAGE:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in RAW_READS:
                if pattern.search(line):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {what}: {line.strip()}")
    assert not found, "read the manifest through hrdeploy.bundle.Bundle:\n" + "\n".join(found)


def test_the_grep_catches_raw_reads() -> None:
    for line in ('task = manifest["model"]["task"]', "kps = b.manifest.get('keypoints')",
                 'size = entry_info["size_bytes"] if info["x"] else 0',
                 "m = json.loads((root / MANIFEST).read_text())", 'p = (bundle / "manifest.json").read_text()',
                 'b.section("stages", {})'):
        assert any(p.search(line) for p, _ in RAW_READS), line


def test_round_trip_write_then_read(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b", with_fp16=True)
    b = Bundle.open(root)
    assert json.loads((root / MANIFEST).read_text())["format"] == FORMAT
    again = Manifest.model_validate_json(json.dumps(b.manifest.to_json()))
    assert again == b.manifest
    assert b.manifest.input.height == 64 and b.manifest.input.shape == ("batch", 3, 64, 48)
    assert b.manifest.artifacts["fp16"].precision == "fp16" and len(b.manifest.artifacts["onnx"].sha256) == 64
    b.record_section("eval", {"passed": True})
    assert Bundle.open(root).manifest == b.manifest and b.section("eval") == {"passed": True}


def test_stages_are_typed_and_only_given_keys_are_written(tmp_path: Path) -> None:
    manifest = tiny_manifest()
    manifest["stages"] = {"quantize": {"precision": "int8", "calib_samples": 8}}
    m = parse_manifest(manifest, tmp_path / MANIFEST)
    assert m.stages.quantize.calib_samples == 8 and m.stages.quantize.method is None
    assert m.to_json()["stages"] == {"quantize": {"precision": "int8", "calib_samples": 8}}


def test_a_format_1_bundle_opens_and_is_written_back_as_format_2(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "v1")
    data = json.loads((root / MANIFEST).read_text())
    data["format"] = FORMAT_V1
    data["input"].update(color="RGB", scale=255.0)  # format 1 recorded them; nothing read them
    data.pop("stages", None)
    (root / MANIFEST).write_text(json.dumps(data))
    b = Bundle.open(root)
    assert b.input.size == (64, 48) and b.manifest.format == FORMAT and b.artifact("onnx").precision == "fp32"
    b.record_section("eval", {"passed": True})
    written = json.loads((root / MANIFEST).read_text())
    assert written["format"] == FORMAT and "color" not in written["input"] and "scale" not in written["input"]


@pytest.mark.parametrize(("key", "value"), [("color", "BGR"), ("scale", 1.0)])
def test_a_format_1_input_other_than_rgb_over_255_is_refused(tmp_path: Path, key: str, value) -> None:  # noqa: ANN001
    data = {**tiny_manifest(), "format": FORMAT_V1}
    data["input"] = {**data["input"], key: value}
    with pytest.raises(UserError, match=rf"input.{key} {value!r} is not supported: hrdeploy feeds RGB pixels / 255"):
        parse_manifest(data, tmp_path / MANIFEST)


@pytest.mark.parametrize("fmt", ["hrdeploy-bundle/0", "hrdeploy-bundle/3", None, 2])
def test_an_unknown_format_is_one_clear_line(tmp_path: Path, fmt) -> None:  # noqa: ANN001
    root = tiny_bundle(tmp_path / "b")
    data = json.loads((root / MANIFEST).read_text())
    data["format"] = fmt
    (root / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"not an hrdeploy manifest \(format .*expected 'hrdeploy-bundle/2' or "
                                        r"'hrdeploy-bundle/1'\); re-create") as err:
        Bundle.open(root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda m: m["input"].update(height=10**30), r"input.height must be an integer in 1..4096, not 10{30}"),
    (lambda m: m["input"].update(height=True), "input.height must be an integer in 1..4096, not True"),
    (lambda m: m["model"].update(seed=-1), "model.seed must be an integer in 0..4294967295"),
    (lambda m: m.update(stages={"quantize": {"calib_samples": "abc"}}),
     r"stages \(the preset for later stages\): quantize.calib_samples must be an integer in 1..100000, not 'abc'"),
    (lambda m: m.update(stages={"build": {"dla_core": 99}}), "build.dla_core must be an integer in 0..15"),
])
def test_numbers_are_bounded_one_line_errors(tmp_path: Path, change, needle: str) -> None:  # noqa: ANN001
    data = tiny_manifest()
    change(data)
    with pytest.raises(UserError, match=needle) as err:
        parse_manifest(data, tmp_path / MANIFEST)
    assert "\n" not in str(err.value) and "damaged" in str(err.value)


def test_preset_numbers_and_types_are_checked(tmp_path: Path) -> None:
    from hrdeploy.export.options import load_preset

    for text, needle in (("quantize:\n  calib_samples: abc\n", "quantize.calib_samples must be an integer"),
                         ("export:\n  batch: 1000000000000000000000000000000\n",
                          r"export.batch must be an integer in 1..1024"),
                         ("build:\n  workspace: .inf\n", "build.workspace must be a number above 0"),
                         ("export:\n  bacth: 4\n", "unknown key 'bacth' in 'export'; known: batch, ")):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(UserError, match=needle) as err:
            load_preset(tmp_path / "p.yaml")
        assert "\n" not in str(err.value)


def test_a_corrupt_report_is_an_error_naming_it_not_empty(tmp_path: Path) -> None:
    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    (b.root / "parity.json").write_text("{truncated")
    with pytest.raises(UserError, match=r"parity.json in bundle .* is not a JSON object .*move it away"):
        b.read_report("parity.json")
    with pytest.raises(UserError, match="parity.json in bundle"):
        b.update_report("parity.json", "validate", {"passed": True})
    assert (b.root / "parity.json").read_text() == "{truncated" and not (b.root / LOCK).exists()
    assert b.read_report("bench.json") == {}


def test_build_reads_its_preset_and_the_command_line_wins(tmp_path: Path, cli_runner) -> None:  # noqa: ANN001
    from hrdeploy.cli import cli

    root = tiny_bundle(tmp_path / "b")
    data = json.loads((root / MANIFEST).read_text())
    data["stages"] = {"build": {"opt_batch": 8, "max_batch": 32, "workspace": 4}}
    (root / MANIFEST).write_text(json.dumps(data))
    base = ["build", str(root), "--print-trtexec", "--trt", "10"]
    preset = cli_runner.invoke(cli, base)
    assert preset.exit_code == 0 and "--maxShapes=input:32x3x64x48" in preset.output
    assert "--optShapes=input:8x3x64x48" in preset.output and "workspace:4096M" in preset.output
    flag = cli_runner.invoke(cli, [*base, "--max-batch", "16"])
    assert flag.exit_code == 0 and "--maxShapes=input:16x3x64x48" in flag.output
