"""The ModelOpt backend of `hrdeploy quantize` (needs nvidia-modelopt[onnx]; run with `make test-modelopt`,
which uses the separate .venv-modelopt environment so the main one keeps its onnx / onnxruntime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

pytestmark = [pytest.mark.modelopt, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hrdeploy.pose.samples import write_sample_photos

    folder = tmp_path_factory.mktemp("photos")
    write_sample_photos(folder)
    return folder


@pytest.fixture
def bundle(lite18_bundle: Path, tmp_path: Path) -> Path:
    from hrdeploy.precision.quantize import modelopt_available

    if not modelopt_available():
        pytest.skip("nvidia-modelopt[onnx] is not installed (make test-modelopt sets up .venv-modelopt)")
    return Path(shutil.copytree(lite18_bundle, tmp_path / "l18"))


def test_modelopt_int8_is_tensorrt_style_qdq(bundle: Path, photos: Path) -> None:
    from hrdeploy.precision import quantize_bundle
    from hrdeploy.precision.int8 import qdq_summary

    path = quantize_bundle(bundle, "int8", calib_dir=photos, calib_samples=4, backend="modelopt", val_samples=3,
                           sensitivity=False).path
    entry = json.loads((bundle / "manifest.json").read_text())["artifacts"]["int8"]
    assert entry["backend"] == "modelopt" and entry["method"] == "entropy"
    assert entry["converter"] == "modelopt.onnx.quantization"
    qdq = onnx.load(path)
    summary = qdq_summary(qdq)
    n_convs = sum(n.op_type == "Conv" for n in qdq.graph.node)
    assert summary["convs_quantized"] == entry["convs_quantized"] > n_convs / 2
    assert summary["per_channel_weights"] == summary["convs_quantized"]
    assert summary["nonzero_zero_points"] == 0 and summary["outputs_quantized"] == []
    # high_precision_dtype="fp32": nothing outside the Q/DQ pairs was cast to fp16
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in qdq.graph.initializer)
    assert set(entry["auto_excluded"]) <= set(entry["unquantized_convs"])
    assert 0 < entry["validation"]["cosine"] <= 1


def test_modelopt_fp16_autocast_matches_eager(bundle: Path, photos: Path) -> None:
    from hrdeploy.precision import quantize_bundle

    path = quantize_bundle(bundle, "fp16", calib_dir=photos, backend="modelopt", val_samples=4).path
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    entry = json.loads((bundle / "manifest.json").read_text())["artifacts"]["fp16"]
    assert entry["converter"] == "modelopt.autocast"
    assert entry["fp16_compute_nodes"] > entry["kept_fp32_count"]
    assert entry["validation"]["cosine"] > 0.999 and entry["validation"]["passed"]
