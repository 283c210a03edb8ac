"""`hrdeploy validate` on real bundles: a tiny registered pose net (fast) and lite_hrnet_18 (shared fixture).

The tiny net is registered for this module only and removed afterwards, so the zoo seen by other tests
is unchanged. Its bundles are exported with the real export_bundle and onnxsim: the dynamic-shape one with
the dynamo exporter, the static one with the default (TorchScript), so both localisation paths are covered.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hrdeploy.bundle import MANIFEST, Bundle
from hrdeploy.cli import cli

TINY = "_tiny_pose_validate_test"


class TinyPose(nn.Module):
    """Two stride-2 conv+BN+ReLU stems, a residual conv+BN block, a 1x1 heatmap head (stride 4)."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.block(x))


@pytest.fixture(scope="module")
def tiny_model():
    from hrdeploy import registry

    registry.list_models()  # load the zoo first, so the test entry is added last and removed cleanly
    registry.register_model(
        name=TINY, family="test", task="pose_topdown", default_input_size=(64, 48), stride=8,
        upstream="tests/test_validate_cli.py",
    )(TinyPose)
    yield TINY
    registry._REGISTRY.pop(TINY, None)


@pytest.fixture(scope="module")
def tiny_bundles(tiny_model, tmp_path_factory):
    """(dynamic-shape bundle, static batch-1 bundle) of the tiny net, exported once for this module."""
    from hrdeploy.export import export_bundle

    root = tmp_path_factory.mktemp("tiny_bundles")
    export_bundle(tiny_model, root / "dyn", dynamic_shape=True)  # dynamic H/W: dynamo by default
    export_bundle(tiny_model, root / "static", batch=1)
    return root / "dyn", root / "static"


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err


def test_validate_passes_and_keeps_export_report(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[0], tmp_path)
    export_before = json.loads((bundle / "parity.json").read_text())["export"]
    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output

    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["export"] == export_before  # export's own check is kept under its key
    report = parity["validate"]
    assert report["passed"] is True
    (row,) = report["rows"]  # no rewrites in the tiny net: only the ONNX row runs
    assert (row["target"], row["backend"], row["precision"]) == ("onnx", "ort", "fp32")
    m = row["outputs"]["heatmaps"]
    assert m["cosine"] > 0.99999 and m["max_rel"] < 1e-4 and m["argmax_agreement_pct"] == 100.0
    # 6 photos + 2 seeded at 64x48 + 1 seeded at a second size (dynamic shape bundle)
    sizes = [tuple(i["size"]) for i in report["inputs"]]
    assert sizes.count((64, 48)) == 8 and sizes.count((72, 56)) == 1
    assert {i["kind"] for i in report["inputs"]} == {"photo", "seeded"}
    reasons = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "engine" in reasons["trt"] and "rewrites" in reasons["eager"]

    md = (bundle / "parity.md").read_text()
    assert "# Validation" in md and "# Export parity" in md and "skipped" in md
    assert Bundle.open(bundle).section("parity")["validate"]["passed"] is True


def test_validate_fails_and_names_the_tampered_node(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[0], tmp_path)
    assert json.loads((bundle / MANIFEST).read_text())["export"]["exporter"] == "dynamo"
    path = bundle / "model.onnx"
    model = onnx.load(path)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    target = convs[2]  # the residual block's conv (BN folded into it by the exporter)
    inits = {i.name: i for i in model.graph.initializer}
    weight = numpy_helper.to_array(inits[target.input[1]]).copy()
    weight[0] *= -3.0  # break one output channel
    inits[target.input[1]].CopyFrom(numpy_helper.from_array(weight, target.input[1]))
    onnx.save(model, path)
    _rerecord(bundle)

    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1"])
    assert result.exit_code == 1, result.output
    row = json.loads((bundle / "parity.json").read_text())["validate"]["rows"][0]
    assert row["passed"] is False and row["failures"]
    first = row["divergence"]["first_divergence"]
    assert first["node"] == target.name
    assert first["module"].startswith("block.")  # mapped back to the eager module (torch.export FX names)
    assert row["divergence"]["last_agreeing"] is not None and first["position"] > 0  # the stem agreed
    assert target.name in result.output and target.name in (bundle / "parity.md").read_text()


def test_torchscript_bundle_localises_the_tampered_conv_to_its_module(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[1], tmp_path)
    assert json.loads((bundle / MANIFEST).read_text())["export"]["exporter"] == "torchscript"
    broken = _tamper(bundle / "model.onnx", bundle / "model.onnx", 2, -3.0)  # the residual block's conv
    assert broken.startswith("/block/block.0/")  # TorchScript names nodes by module scope
    _rerecord(bundle)

    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1", "--no-photos", "--backends", "ort"])
    assert result.exit_code == 1, result.output
    divergence = json.loads((bundle / "parity.json").read_text())["validate"]["rows"][0]["divergence"]
    assert divergence["reference"] == "eager" and "TorchScript" in divergence["method"]
    first = divergence["first_divergence"]
    assert first["node"] == broken and first["module"] == "block.0"
    assert first["position"] > 0 and divergence["last_agreeing"]["module"].startswith("stem.")  # the stem agreed
    # every conv before it agreed although BatchNorm is folded into it (compared with the BN module's output)
    assert divergence["compared"] >= 5
    assert "block.0" in result.output


def _rerecord(bundle: Path) -> None:
    """Record the changed model.onnx as the bundle's own: a recorded artifact that computes the wrong thing."""
    b = Bundle.open(bundle)
    info = b.artifacts["onnx"].info.model_dump(exclude={"file", "sha256"}, exclude_none=True)
    b.record_artifact("onnx", "model.onnx", **info)


def test_validate_refuses_an_artifact_changed_since_it_was_recorded(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[1], tmp_path)
    _tamper(bundle / "model.onnx", bundle / "model.onnx", 2, -3.0)
    report = (bundle / "parity.json").read_text()
    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1", "--no-photos"])
    _one_line_error(result, "model.onnx is damaged or was replaced", "its sha256 differs")
    assert (bundle / "parity.json").read_text() == report


def _tamper(src: Path, dst: Path, conv_index: int, scale: float) -> str:
    """Scale conv `conv_index`'s weight in a copy of `src`; return that node's name."""
    model = onnx.load(src)
    node = [n for n in model.graph.node if n.op_type == "Conv"][conv_index]
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save(model, dst)
    return node.name


def test_precision_artifacts_use_their_tolerance_and_localize_against_fp32(cli_runner, tiny_bundles, tmp_path):
    from onnxconverter_common import float16


    bundle = _copy(tiny_bundles[1], tmp_path)
    fp16 = float16.convert_float_to_float16(onnx.load(bundle / "model.onnx"), keep_io_types=True)
    onnx.save(fp16, bundle / "model.fp16.onnx")
    Bundle.open(bundle).record_artifact("fp16", "model.fp16.onnx", precision="fp16")
    broken = _tamper(bundle / "model.onnx", bundle / "model.int8.onnx", 2, -3.0)
    Bundle.open(bundle).record_artifact("int8", "model.int8.onnx", precision="int8")

    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1", "--no-photos", "--backends", "ort"])
    assert result.exit_code == 1, result.output
    rows = {r["target"]: r for r in json.loads((bundle / "parity.json").read_text())["validate"]["rows"]}
    assert [rows[k]["precision"] for k in ("onnx", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    assert rows["onnx"]["passed"] and rows["fp16"]["passed"] and not rows["int8"]["passed"]
    # fp16 rounding is visible but within the fp16 bound, far above fp32's summation-order noise
    assert rows["fp16"]["outputs"]["heatmaps"]["max_rel"] > 10 * rows["onnx"]["outputs"]["heatmaps"]["max_rel"]
    divergence = rows["int8"]["divergence"]
    assert divergence["reference"] == "onnx" and "model.onnx" in divergence["method"]
    assert divergence["first_divergence"]["node"] == broken


def test_weights_changed_since_export_are_diagnosed(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[0], tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["model"]["seed"] = 1  # the eager reference is now rebuilt with other weights than were exported
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1", "--no-photos", "--seeded", "1"])
    assert result.exit_code == 1, result.output
    divergence = json.loads((bundle / "parity.json").read_text())["validate"]["rows"][0]["divergence"]
    assert divergence["first_divergence"]["position"] == 0
    assert "re-export" in divergence["summary"]


def test_tolerance_option_reaches_the_verdict(cli_runner, tiny_bundles, tmp_path) -> None:
    bundle = _copy(tiny_bundles[1], tmp_path)
    args = ["validate", str(bundle), "--threads", "1", "--no-photos", "--no-localize", "--backends", "ort"]
    # a cosine above 1 cannot be met: the option must turn the same artifact into a failure
    failed = cli_runner.invoke(cli, [*args, "--tolerance", "fp32.min_cosine=1.5"])
    assert failed.exit_code == 1, failed.output
    report = json.loads((bundle / "parity.json").read_text())["validate"]
    assert report["tolerances"]["fp32"]["min_cosine"] == 1.5
    assert any("cosine" in f for f in report["rows"][0]["failures"])
    assert len(report["inputs"]) == 2  # seeded only
    assert cli_runner.invoke(cli, args).exit_code == 0


def test_bad_inputs_are_one_line_errors(cli_runner, tiny_bundles, tmp_path) -> None:
    static = tiny_bundles[1]
    _one_line_error(cli_runner.invoke(cli, ["validate", str(tmp_path / "nope")]), "does not exist")
    _one_line_error(cli_runner.invoke(cli, ["validate", str(static), "--batch", "3"]), "static batch of 1",
                    "--dynamic-batch")
    _one_line_error(cli_runner.invoke(cli, ["validate", str(static), "--backends", "cuda"]), "unknown backend")
    _one_line_error(cli_runner.invoke(cli, ["validate", str(static), "--tolerance", "speed=1"]), "--tolerance")
    _one_line_error(cli_runner.invoke(cli, ["validate", str(static), "--backends", "trt"]), "nothing to validate")

    empty = _copy(static, tmp_path)
    manifest = json.loads((empty / MANIFEST).read_text())
    manifest["artifacts"] = {}
    (empty / MANIFEST).write_text(json.dumps(manifest))
    _one_line_error(cli_runner.invoke(cli, ["validate", str(empty)]), "has no artifacts")


def test_validate_config_checks_the_options_before_the_bundle_is_read(tmp_path) -> None:
    from hrdeploy.errors import UserError
    from hrdeploy.validate.run import ValidateConfig, validate_bundle

    ValidateConfig().check()  # the defaults are a valid run
    cases = [({"ann": "x.json"}, "--ann needs --images"), ({"backends": "cuda"}, "unknown backend 'cuda'"),
             ({"tolerances": ["speed=1"]}, "bad --tolerance 'speed=1'"), ({"batch": 0}, "--batch must be a positive")]
    for options, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            validate_bundle(tmp_path / "nope", **options)  # the option's error, not the missing bundle's


def test_batch_option_pads_the_last_batch(tiny_bundles, tmp_path) -> None:
    from hrdeploy.validate.run import validate_bundle

    bundle = _copy(tiny_bundles[0], tmp_path)
    threads = torch.get_num_threads()
    one = validate_bundle(bundle, batch=1, photos=False, seeded=3, threads=1 if threads != 1 else 2)
    assert torch.get_num_threads() == threads  # the eager runner's setting does not leak
    two = validate_bundle(bundle, batch=2, photos=False, seeded=3, threads=1)  # 3 inputs: last batch padded
    assert one["rows"][0]["batch"] == 1 and two["rows"][0]["batch"] == 2
    m1, m2 = one["rows"][0]["outputs"]["heatmaps"], two["rows"][0]["outputs"]["heatmaps"]
    assert m2["cosine"] > 0.99999 and m1["argmax_agreement_pct"] == m2["argmax_agreement_pct"] == 100.0
    assert [r["input"] for r in two["rows"][0]["per_input"]] == ["seeded:0", "seeded:1", "seeded:2", "seeded:3"]


def test_validate_lite_hrnet_18_bundle(cli_runner, lite18_bundle, tmp_path) -> None:
    """The issue's done-when: an exported lite_hrnet_18 validates on eager (rewritten) and onnxruntime."""
    bundle = _copy(lite18_bundle, tmp_path)
    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((bundle / "parity.json").read_text())["validate"]
    rows = {r["target"]: r for r in report["rows"]}
    assert set(rows) == {"eager", "onnx"} and all(r["passed"] for r in rows.values())
    assert np.isclose(rows["eager"]["outputs"]["heatmaps"]["cosine"], 1.0, atol=1e-9)
    assert rows["onnx"]["outputs"]["heatmaps"]["argmax_agreement_pct"] == 100.0
    assert (bundle / "parity.md").is_file()


def test_localize_in_small_chunks_finds_the_same_node(tiny_bundles, tmp_path) -> None:
    from hrdeploy.validate.localize import localize

    bundle = tiny_bundles[1]  # static batch 1, no rewrites: the eager model is the exported one
    kw = {"exporter": "torchscript"}  # the default export's path; chunking is the same for dynamo
    broken = _tamper(bundle / "model.onnx", tmp_path / "broken.onnx", 1, 2.0)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 48), dtype=np.float32)
    eager = Bundle.open(bundle).eager_model()
    whole = localize(tmp_path / "broken.onnx", x, eager_model=eager, **kw)
    chunked = localize(tmp_path / "broken.onnx", x, eager_model=eager, budget_bytes=1, **kw)  # one tensor per chunk
    assert whole["first_divergence"]["node"] == chunked["first_divergence"]["node"] == broken
    assert whole["compared"] == chunked["compared"] >= 2
    clean = localize(bundle / "model.onnx", x, eager_model=eager, budget_bytes=1, **kw)
    assert clean["first_divergence"] is None and clean["compared"] >= 5


def test_static_batch_bundle_finds_people_one_window_at_a_time(cli_runner, tiny_bundles, tmp_path) -> None:
    """The person search of the pose check feeds a static batch-1 graph exactly one window per run."""
    from onnxconverter_common import float16

    bundle = _copy(tiny_bundles[1], tmp_path)
    assert Bundle.open(bundle).input.static_batch == 1
    fp16 = float16.convert_float_to_float16(onnx.load(bundle / "model.onnx"), keep_io_types=True)
    onnx.save(fp16, bundle / "model.fp16.onnx")
    Bundle.open(bundle).record_artifact("fp16", "model.fp16.onnx", precision="fp16")

    result = cli_runner.invoke(cli, ["validate", str(bundle), "--threads", "1", "--backends", "ort"])
    assert result.exit_code == 0, result.output
    rows = {r["target"]: r for r in json.loads((bundle / "parity.json").read_text())["validate"]["rows"]}
    assert rows["fp16"]["pose"]["people"] > 0, rows["fp16"]


def test_quantize_finds_people_with_a_static_batch_graph(cli_runner, tiny_bundles, tmp_path) -> None:
    """quantize's person search (calibration photos, held-out samples) also feeds a static graph its batch."""
    bundle = _copy(tiny_bundles[1], tmp_path)
    result = cli_runner.invoke(cli, ["quantize", str(bundle), "--precision", "fp16", "--backend", "ort",
                                     "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert Bundle.open(bundle).artifacts["fp16"].exists
