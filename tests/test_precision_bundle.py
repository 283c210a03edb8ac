"""`hrdeploy quantize` on a real lite_hrnet_18 bundle (128x96, dynamic batch): FP16 and INT8 (onnxruntime
backend), checked against the eager model, plus the bad-input paths (exit 2, bundle unchanged)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from hrdeploy.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hrdeploy.pose.samples import write_sample_photos

    folder = tmp_path_factory.mktemp("photos")
    write_sample_photos(folder)
    return folder


@pytest.fixture
def bundle(lite18_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's lite_hrnet_18 bundle (quantize writes into it)."""
    return Path(shutil.copytree(lite18_bundle, tmp_path / "l18"))


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


VAL_IMAGES = 3


@pytest.fixture(scope="module")
def eager_ref(lite18_bundle: Path, photos: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the first photos preprocessed here, and the eager fp32 model rebuilt from the
    manifest on them (computed once: eager Lite-HRNet is the slow part on a busy CPU)."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.images import image_files, read_image
    from hrdeploy.pose.preprocess import preprocess
    from hrdeploy.runtime.eager import EagerRunner

    b = Bundle.open(lite18_bundle)
    x = np.stack([
        preprocess(read_image(p), b.input.size, b.input.mean, b.input.std)[0]
        for p in image_files(photos)[:VAL_IMAGES]
    ])
    return x, EagerRunner(b.eager_model(), ["heatmaps"]).run(x)["heatmaps"]


def _variant(bundle: Path, variant: str, x: np.ndarray) -> np.ndarray:
    from hrdeploy.runtime.onnxruntime import OrtRunner

    return OrtRunner(bundle / variant).run(x)["heatmaps"]


@pytest.mark.slow
def test_int8_ort_quantizes_most_convs_and_reports_parity(bundle: Path, photos: Path, eager_ref, cli_runner) -> None:
    from hrdeploy.parity.crops import PEOPLE_PER_PHOTO
    from hrdeploy.precision.int8 import qdq_summary

    fp32_hash = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    # bounds above 1 cannot be met: exercises the "converted but out of tolerance" exit 1 whatever the gate's mode
    result = cli_runner.invoke(cli, [
        "quantize", str(bundle), "--precision", "int8", "--calib-dir", str(photos), "--calib-samples", "4",
        "--val-samples", str(VAL_IMAGES), "--backend", "ort", "--exclude", "*spatial_weighting*",
        "--tolerance", "int8.min_cosine=1.5,int8.min_oks=1.5", "--shift-activations",
    ])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "needs >= 1.5" in result.output
    assert hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest() == fp32_hash

    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["artifacts"]["int8"]
    assert entry["file"] == "model.int8.onnx" and entry["backend"] == "ort" and entry["method"] == "percentile"
    # the people the fp32 model finds in the first 4 of the 6 photos: one to PEOPLE_PER_PHOTO crops each
    calib_files = json.loads((bundle / "quantize.int8.json").read_text())["calibration"]["files"]
    assert len({f.split("@")[0] for f in calib_files}) == 4 and entry["calibration"]["available"] == 6
    assert entry["samples"] == len(calib_files) and 4 <= entry["samples"] <= 4 * PEOPLE_PER_PHOTO
    assert entry["sha256"] == hashlib.sha256((bundle / "model.int8.onnx").read_bytes()).hexdigest()

    fp32 = onnx.load(bundle / "model.onnx")
    n_convs = sum(n.op_type == "Conv" for n in fp32.graph.node)
    qdq = onnx.load(bundle / "model.int8.onnx")
    summary = qdq_summary(qdq)
    assert entry["convs_quantized"] == summary["convs_quantized"]
    assert entry["convs_quantized"] + entry["convs_unquantized"] == n_convs
    assert entry["convs_quantized"] > n_convs / 2  # "quantizes most convolutions"
    assert summary["per_channel_weights"] == summary["convs_quantized"]
    assert summary["nonzero_zero_points"] == 0 and summary["outputs_quantized"] == []
    # --shift-activations: the INT8 convs reading ReLU outputs read them shifted onto all 256 codes
    assert 0 < entry["shifted_convs"] == summary["shifted_convs"] < entry["convs_quantized"]
    # the excluded attention convs and the auto-excluded depthwise convs are exactly the fp32 ones
    excluded_convs = set(entry["excluded_nodes"]) & {n.name for n in fp32.graph.node if n.op_type == "Conv"}
    assert excluded_convs and excluded_convs | set(entry["auto_excluded"]) == set(entry["unquantized_convs"])

    # seeded weights: calibration and validation run on person crops of the photos (one per photo)
    val = entry["validation"]
    assert val["passed"] is False and val["inputs"] == VAL_IMAGES
    assert "person crops found by the fp32 model" in entry["calibration"]["source"]
    assert val["mode"] == "tensor" and val["failures"]  # seeded keypoints are noise: the heatmaps are judged
    parity = json.loads((bundle / "parity.json").read_text())
    assert set(parity) == {"export", "int8"} and parity["int8"]["passed"] is False
    assert manifest["parity"]["int8"] == {"passed": False, "file": "parity.json"}

    report = json.loads((bundle / "quantize.int8.json").read_text())
    sens = report["validation"]["sensitivity"]
    # every conv back in float (the shifts undone): the fp32 graph
    assert sens["bypass_rel_l2"] < 1e-4 and len(sens["blocks"]) >= 5
    assert [b["rel_l2"] for b in sens["blocks"]] == sorted((b["rel_l2"] for b in sens["blocks"]), reverse=True)
    assert len(report["validation"]["drift"]) == 5
    assert 0 < report["validation"]["input_noise"]["cosine"] <= 1
    md = (bundle / "quantize.int8.md").read_text()
    assert "Block sensitivity" in md and "Layers that drift most" in md
    assert f"INT8 convs reading shifted non-negative inputs (all 256 codes): {entry['shifted_convs']}" in md


@pytest.mark.slow
def test_fp16_keeps_fp32_io_and_matches_eager(bundle: Path, photos: Path, eager_ref, cli_runner) -> None:
    result = cli_runner.invoke(cli, [
        "quantize", str(bundle), "--precision", "fp16", "--backend", "ort", "--calib-dir", str(photos),
        "--val-samples", str(VAL_IMAGES),
    ])
    assert result.exit_code == 0, result.output
    model = onnx.load(bundle / "model.fp16.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    fp16_convs = [n for n in convs if inits.get(n.input[1]) == onnx.TensorProto.FLOAT16]
    assert len(fp16_convs) == len(convs)

    entry = json.loads((bundle / "manifest.json").read_text())["artifacts"]["fp16"]
    assert entry["converter"] == "onnxconverter_common.float16"
    assert entry["kept_fp32_by_op"]["ReduceMean"] == sum(n.op_type == "ReduceMean" for n in model.graph.node)
    assert entry["kept_fp32_count"] == sum(entry["kept_fp32_by_op"].values())
    x, ref = eager_ref
    assert _cosine(ref, _variant(bundle, "model.fp16.onnx", x)) > 0.999  # independent check on whole photos
    assert entry["validation"]["passed"] is True and entry["validation"]["cosine"] > 0.999
    assert not (bundle / ".hrdeploy.lock").exists()  # the lock file lives only while quantize writes


def _fails_cleanly(cli_runner, bundle: Path, args: list[str], match: str) -> None:
    before = _snapshot(bundle)
    result = cli_runner.invoke(cli, ["quantize", str(bundle), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0], lines[0]
    assert _snapshot(bundle) == before


def test_bad_input_is_one_line_exit_2_and_leaves_the_bundle(bundle: Path, photos: Path, tmp_path: Path,
                                                            cli_runner) -> None:
    _fails_cleanly(cli_runner, bundle, ["--precision", "int8"], "int8 needs calibration images")
    _fails_cleanly(cli_runner, bundle, ["--precision", "int4"], "unknown precision 'int4'")
    _fails_cleanly(cli_runner, bundle, ["--precision", "int8", "--method", "kl"], "unknown calibration method")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_cleanly(cli_runner, bundle, ["--precision", "int8", "--calib-dir", str(empty), "--backend", "ort"],
                   "holds no images")
    broken = tmp_path / "broken"
    shutil.copytree(photos, broken)
    (broken / "aaa.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _fails_cleanly(cli_runner, bundle, ["--precision", "int8", "--calib-dir", str(broken), "--backend", "ort"],
                   "aaa.jpg")
    _fails_cleanly(cli_runner, bundle, ["--precision", "fp16", "--backend", "ort", "--exclude", "no_such_node*"],
                   "matches no node")
    # without --precision, the preset the bundle was exported with decides (here: int8, which needs images)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"] = {"quantize": {"precision": "int8", "calib_samples": 8}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _fails_cleanly(cli_runner, bundle, [], "int8 needs calibration images")
    (bundle / "model.onnx").unlink()
    _fails_cleanly(cli_runner, bundle, ["--precision", "fp16"], "its file model.onnx is missing")


def test_modelopt_backend_without_modelopt_is_a_user_error(bundle: Path, photos: Path, cli_runner) -> None:
    from hrdeploy.precision.quantize import modelopt_available

    if modelopt_available():
        pytest.skip("nvidia-modelopt is installed here; the error path is for environments without it")
    _fails_cleanly(cli_runner, bundle, ["--precision", "int8", "--calib-dir", str(photos), "--backend", "modelopt"],
                   "nvidia-modelopt[onnx] is not installed")


def test_not_a_bundle(tmp_path: Path, cli_runner) -> None:
    result = cli_runner.invoke(cli, ["quantize", str(tmp_path / "nope"), "--precision", "fp16"])
    assert result.exit_code == 2 and "does not exist" in result.output
