"""`hrdeploy export`: bundle contents, metadata, presets, and the bad-input paths of the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import hrdeploy
from hrdeploy.cli import cli
from hrdeploy.export.metadata import read_metadata
from hrdeploy.runtime.onnxruntime import OrtRunner


def test_bundle_contents(lite18_bundle):
    manifest = json.loads((lite18_bundle / "manifest.json").read_text())
    assert manifest["format"] == "hrdeploy-bundle/2"
    assert manifest["model"] == {
        "name": "lite_hrnet_18", "family": "lite_hrnet", "task": "pose_topdown", "dataset": "coco",
        "upstream": hrdeploy.get_spec("lite_hrnet_18").upstream, "checkpoint": None, "seed": 0,
    }
    assert manifest["input"]["shape"] == ["batch", 3, 128, 96]
    assert manifest["outputs"] == [{"name": "heatmaps", "stride": 4, "channels": 17}]
    assert len(manifest["keypoints"]["names"]) == 17 and [1, 2] in manifest["keypoints"]["flip_pairs"]
    assert "adaptive_pool" in manifest["rewrites"] and "channel_shuffle" in manifest["rewrites"]
    assert manifest["export"]["simplified"] is True and manifest["parity"]["export"]["passed"] is True
    parity = json.loads((lite18_bundle / "parity.json").read_text())["export"]
    assert [(r["batch"], r["output"]) for r in parity["rows"]] == [(1, "heatmaps"), (4, "heatmaps")]
    for row in parity["rows"]:
        assert row["max_rel"] <= 1e-4 and row["cosine"] > 0.99999 and row["argmax_agreement_pct"] == 100.0
    assert "| 4 | 128x96 | heatmaps |" in (lite18_bundle / "parity.md").read_text()


def test_onnx_graph_metadata_and_dynamic_batch(lite18_bundle):
    model = onnx.load(lite18_bundle / "model.onnx")
    meta = read_metadata(model)
    assert meta["model"] == "lite_hrnet_18" and meta["mean"] == [0.485, 0.456, 0.406]
    assert meta["keypoint_names"][0] == "nose" and meta["output_strides"] == [4]
    assert [o.name for o in model.graph.output] == ["heatmaps"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    runner = OrtRunner(lite18_bundle / "model.onnx")
    for batch in (1, 3):
        out = runner.run(np.zeros((batch, 3, 128, 96), np.float32))["heatmaps"]
        assert out.shape == (batch, 17, 32, 24)


def test_existing_bundle_needs_force(cli_runner, lite18_bundle):
    before = sorted(p.name for p in lite18_bundle.iterdir())
    result = cli_runner.invoke(cli, ["export", "lite_hrnet_18", "-o", str(lite18_bundle)])
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.output
    assert sorted(p.name for p in lite18_bundle.iterdir()) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "lite_hrnet18"], "unknown model 'lite_hrnet18'; did you mean lite_hrnet_18"),
        (["export", "lite_hrnet_18", "--input-size", "250x192"], "does not divide by lite_hrnet_18's stride 32"),
        (["export", "lite_hrnet_18", "--input-size", "big"], "is not HxW"),
        (["export", "lite_hrnet_18", "--opset", "9"],
         "opset 9 is out of range for the torchscript exporter; use 13..20"),
        (["export", "hrnetv2_w48", "--dataset", "coco"], "has no 'coco' variant"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli_runner, tmp_path, args, message):
    out = tmp_path / "bundle"
    result = cli_runner.invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_path_is_a_file(cli_runner, tmp_path):
    target = tmp_path / "file.onnx"
    target.write_text("x")
    result = cli_runner.invoke(cli, ["export", "lite_hrnet_18", "-o", str(target)])
    assert result.exit_code == 2 and "is a file; pass a directory" in result.output


def test_checkpoint_mismatch(cli_runner, tmp_path):
    import torch

    torch.save(hrdeploy.build_model("naive_lite_hrnet_18").state_dict(), tmp_path / "naive.pth")
    result = cli_runner.invoke(
        cli, ["export", "lite_hrnet_18", "--checkpoint", str(tmp_path / "naive.pth"), "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "does not fit lite_hrnet_18" in result.output
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_preset_unknown_key_and_override(tmp_path):
    from hrdeploy.errors import UserError
    from hrdeploy.export import load_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  dynamic_batch: true\n  fp16: true\n")
    with pytest.raises(UserError, match="unknown key 'fp16' in 'export'"):
        load_preset(bad)
    bad.write_text("deploy:\n  x: 1\n")
    with pytest.raises(UserError, match="unknown section 'deploy'"):
        load_preset(bad)


@pytest.mark.parametrize("preset", ["onnxruntime_fp32_dynamic", "tensorrt_fp16_dynamic", "tensorrt_int8_static",
                                    "jetson_orin_fp16"])
def test_shipped_presets_load(preset):
    from pathlib import Path

    from hrdeploy.export import load_preset

    opts = load_preset(Path(__file__).parents[1] / "export_configs" / f"{preset}.yaml")
    assert opts.opset == 19
    assert opts.dynamic_batch == preset.endswith("dynamic")
    if preset == "tensorrt_fp16_dynamic":
        assert opts.stages.build.given() == {"precision": "fp16", "min_batch": 1, "opt_batch": 8, "max_batch": 32,
                                        "workspace": 4}


def test_cli_flag_overrides_preset(cli_runner, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("export:\n  dynamic_batch: true\n  opset: 19\n  input_size: 64x64\n")
    out = tmp_path / "n18"
    result = cli_runner.invoke(
        cli, ["export", "naive_lite_hrnet_18", "--config", str(preset), "--opset", "18", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["opset"] == 18 and manifest["input"]["shape"] == ["batch", 3, 64, 64]
    assert "parity PASS" in result.output


def test_stage_presets_are_the_defaults_of_build_and_quantize(cli_runner, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("export:\n  dynamic_batch: true\n  input_size: 64x64\nquantize:\n  precision: fp16\n"
                      "build:\n  precision: fp16\n  opt_batch: 2\n  max_batch: 4\n  workspace: 2\n")
    out = tmp_path / "n18"
    exported = cli_runner.invoke(cli, ["export", "naive_lite_hrnet_18", "--config", str(preset), "-o", str(out)])
    assert exported.exit_code == 0, exported.output

    line = cli_runner.invoke(cli, ["build", str(out), "--print-trtexec", "--trt", "10"])
    assert line.exit_code == 0, line.output
    assert "--fp16" in line.output and "--memPoolSize=workspace:2048M" in line.output
    assert "--maxShapes=input:4x3x64x64" in line.output and "--optShapes=input:2x3x64x64" in line.output
    given = cli_runner.invoke(cli, ["build", str(out), "--print-trtexec", "--trt", "10", "--max-batch", "2"])
    assert given.exit_code == 0 and "--maxShapes=input:2x3x64x64" in given.output  # the command line wins

    quantized = cli_runner.invoke(cli, ["quantize", str(out), "--backend", "ort", "--val-samples", "2"])
    assert quantized.exit_code == 0, quantized.output
    assert "fp16" in json.loads((out / "manifest.json").read_text())["artifacts"]


class _Fixed:
    """A runner returning `value + offset` for any input (one output, `heatmaps`)."""

    def __init__(self, name: str, offset: float, dtype=np.float32) -> None:
        self.name, self.offset, self.dtype, self.output_names = name, offset, dtype, ["heatmaps"]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        base = np.linspace(-1.0, 1.0, 64, dtype=np.float64).reshape(1, 1, 8, 8)
        return {"heatmaps": (base + self.offset).astype(self.dtype)}


@pytest.mark.parametrize(("candidate_err", "floor", "passed"), [(5e-5, None, True), (3e-4, 1e-4, True),
                                                               (5e-4, 1e-4, False), (3e-4, None, False)])
def test_parity_over_tolerance_is_judged_against_the_fp32_floor(candidate_err, floor, passed) -> None:
    """A row over 1e-4 passes only within FLOOR_FACTOR (4) x the reference's own distance from float64."""
    from hrdeploy.export.parity import ParityCase, compare

    exact = _Fixed("exact", 0.0, np.float64) if floor is not None else None
    reference = _Fixed("eager", floor or 0.0)
    report = compare(reference, _Fixed("ort", (floor or 0.0) + candidate_err), [ParityCase(1, (8, 8))],
                     exact_reference=exact)
    row = report["rows"][0]
    assert row["max_rel"] == pytest.approx(candidate_err, rel=1e-3)
    assert report["passed"] is passed
    assert ("fp32_floor_rel" in row) is (floor is not None and candidate_err > 1e-4)
    if "fp32_floor_rel" in row:
        assert row["fp32_floor_rel"] == pytest.approx(floor, rel=1e-3)


class _TinyCrossResolution(torch.nn.Module):
    """Two branches joined by upstream Lite-HRNet's CrossResolutionWeighting (adaptive pool to the other
    branch's size, which the TorchScript exporter refuses with a dynamic batch), then a 1x1 head."""

    def __init__(self, num_outputs: int) -> None:
        from hrdeploy.models.lite_hrnet import CrossResolutionWeighting

        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.down = torch.nn.Conv2d(8, 8, 3, 2, 1)
        self.weighting = CrossResolutionWeighting([8, 8], ratio=2)
        self.head = torch.nn.Conv2d(8, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.weighting([x, self.down(x)])[0])


@pytest.fixture
def tiny_cross_resolution():
    from hrdeploy import registry

    name = "_tiny_cross_resolution_export_test"
    registry.list_models()  # load the zoo first, so the test entry is added last and removed cleanly
    registry.register_model(name=name, family="test", task="pose_topdown", default_input_size=(64, 48), stride=8,
                            upstream="tests/test_export.py")(_TinyCrossResolution)
    yield name
    registry._REGISTRY.pop(name, None)


def test_torchscript_failure_falls_back_to_dynamo(tiny_cross_resolution, tmp_path, cli_runner):
    from hrdeploy.export import export_bundle

    steps: list[str] = []
    result = export_bundle(tiny_cross_resolution, tmp_path / "auto", rewrite=False, dynamic_batch=True,
                           step=steps.append)
    export = result.manifest.export
    assert result.passed and export["exporter"] == "dynamo"
    assert export["fallback_from"]["exporter"] == "torchscript"
    assert "adaptive pooling" in export["fallback_from"]["error"]
    assert {"export_torchscript", "export_dynamo"} <= set(export["phases"])
    assert [s for s in steps if "exporting with dynamo instead" in s and s.startswith("torchscript could not")]
    assert json.loads((tmp_path / "auto" / "manifest.json").read_text())["export"]["exporter"] == "dynamo"

    # the same export with the exporter chosen is the user's error, not a silent switch
    args = ["export", tiny_cross_resolution, "--no-rewrite", "--dynamic-batch", "--exporter", "torchscript",
            "-o", str(tmp_path / "chosen")]
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "error: the torchscript exporter could not export this model: Unsupported: ONNX export of operator " \
           "adaptive pooling" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "chosen").exists()


def test_default_exporter_is_torchscript_and_dynamic_shape_uses_dynamo():
    from hrdeploy.export import ExportOptions

    assert ExportOptions().first_exporter == "torchscript"
    assert ExportOptions(dynamic_shape=True).first_exporter == "dynamo"
    assert ExportOptions(dynamic_shape=True, exporter="torchscript").first_exporter == "torchscript"



def test_a_graph_that_fails_at_a_parity_input_is_one_error_line(tiny_cross_resolution, tmp_path, cli_runner,
                                                               monkeypatch):
    """onnxruntime refusing the exported graph at one parity input (as a TorchScript graph that kept the
    sample's H, W does at the second size) is the user's error: one line naming the other exporter."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from hrdeploy.runtime.onnxruntime import OrtRunner

    run = OrtRunner.run

    def run_at_export_size_only(self, x, *args, **kwargs):
        if tuple(x.shape[2:]) != (64, 48):
            raise RuntimeException(  # onnxruntime's own wording
                "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
                "Name:'/head/Reshape_6' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
                "reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(...) size != 0 && (input_shape_size % "
                "size) == 0 was false. The input tensor cannot be reshaped to the requested shape. Input shape:"
                "{2,16,27648}, requested shape:{-1,16,128,96}")
        return run(self, x, *args, **kwargs)

    monkeypatch.setattr(OrtRunner, "run", run_at_export_size_only)
    out = tmp_path / "baked"
    result = cli_runner.invoke(cli, ["export", tiny_cross_resolution, "--dynamic-shape", "--exporter", "torchscript",
                                     "-o", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: the torchscript-exported graph does not run on onnxruntime at every parity input "
                      "(node /head/Reshape_6 (Reshape): The input tensor cannot be reshaped to the requested shape. "
                      "Input shape:{2,16,27648}, requested shape:{-1,16,128,96}); export with --exporter dynamo"]
    assert "Traceback" not in result.output and not out.exists()
