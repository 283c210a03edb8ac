"""TensorRT on a real GPU: build engines, run them with TrtRunner, compare with ONNX Runtime.

Run with `make test-gpu` (installs the tensorrt extra, runs `-m gpu` with `-rs`). Every test here is
skipped, with the reason printed, on a host without the tensorrt module or without a CUDA device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_engine_plan import tiny_bundle

from hrdeploy.engine.device import cuda_devices, cudart
from hrdeploy.engine.version import installed_tensorrt_version


def _skip_reason() -> str | None:
    if installed_tensorrt_version() is None:
        return "tensorrt is not installed (pip install 'hrdeploy[tensorrt]' on a CUDA host)"
    if not cuda_devices():
        return "no CUDA device visible: TensorRT needs an NVIDIA GPU (or Jetson)"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


MEMORIES = [
    # only when the module is not skipped anyway, so that its reason is the one printed
    pytest.param("torch", marks=pytest.mark.skipif(SKIP is None and not _torch_cuda(),
                                                   reason="torch has no CUDA on this host")),
    pytest.param("cuda-python", marks=pytest.mark.skipif(SKIP is None and cudart() is None,
                                                         reason="cuda-python is not installed")),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny bundle with fp32 and fp16 engines (dynamic batch 1..4) built through the CLI."""
    from click.testing import CliRunner

    from hrdeploy.cli import cli

    bundle = tiny_bundle(tmp_path_factory.mktemp("gpu") / "tiny", with_fp16=True)  # TRT 11 builds fp16 from it
    runner = CliRunner()
    for precision in ("fp32", "fp16"):
        args = ["build", str(bundle), "--precision", precision, "--max-batch", "4",
                "--timing-cache", str(bundle / "timing.cache")]
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
    return bundle


def _ort(bundle, x):
    from hrdeploy.runtime.onnxruntime import OrtRunner

    return OrtRunner(bundle / "model.onnx").run(x)["heatmaps"]


@pytest.mark.parametrize("memory", MEMORIES)
def test_fp32_engine_matches_onnxruntime(built, memory):
    from hrdeploy.runtime.tensorrt import TrtRunner

    runner = TrtRunner(built / "model.fp32.engine", memory=memory)
    assert runner.output_names == ["heatmaps"] and runner.profile_range() == ((1, 3, 64, 48), (4, 3, 64, 48))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 48)).astype(np.float32)
        out = runner.run(x)["heatmaps"]
        ref = _ort(built, x)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.max(np.abs(out - ref)) < 1e-3 * max(1.0, np.max(np.abs(ref)))
    runner.close()


def test_fp16_engine_is_close_and_recorded(built):
    from hrdeploy.bundle import Bundle
    from hrdeploy.runtime.tensorrt import TrtRunner

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)
    out = TrtRunner(built / "model.fp16.engine").run(x)["heatmaps"]
    ref = _ort(built, x)
    cos = float(np.dot(out.ravel(), ref.ravel()) / (np.linalg.norm(out) * np.linalg.norm(ref)))
    assert cos > 0.999
    artifacts = Bundle.open(built).manifest.artifacts
    assert {"engine_fp32", "engine_fp16"} <= set(artifacts)
    meta = json.loads((built / "model.fp16.engine.json").read_text())
    assert meta["tensorrt"] == installed_tensorrt_version() and meta["gpu"] == cuda_devices()[0].name
    assert (built / "timing.cache").stat().st_size > 0


def test_cuda_graph_replay_matches_plain_enqueue(built):
    from hrdeploy.runtime.tensorrt import TrtRunner

    plain = TrtRunner(built / "model.fp32.engine")
    graph = TrtRunner(built / "model.fp32.engine", cuda_graph=True)
    for batch in (2, 2, 4):  # same shape twice (replay), then a new shape (re-capture)
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 48)).astype(np.float32)
        np.testing.assert_allclose(graph.run(x)["heatmaps"], plain.run(x)["heatmaps"], rtol=1e-5, atol=1e-6)


def test_out_of_profile_batch_and_foreign_engine_are_clear_errors(built, tmp_path):
    from hrdeploy.errors import UserError
    from hrdeploy.runtime.tensorrt import TrtRunner

    runner = TrtRunner(built / "model.fp32.engine")
    with pytest.raises(UserError, match=r"outside the engine's profile"):
        runner.run(np.zeros((8, 3, 64, 48), np.float32))
    foreign = tmp_path / "model.fp32.engine"
    foreign.write_bytes((built / "model.fp32.engine").read_bytes())
    meta = json.loads((built / "model.fp32.engine.json").read_text())
    meta["tensorrt"] = "9.9.9"
    (tmp_path / "model.fp32.engine.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="built with TensorRT 9.9.9"):
        TrtRunner(foreign)
    (tmp_path / "model.fp32.engine.json").unlink()
    foreign.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="could not load"):
        TrtRunner(foreign)


@pytest.mark.slow
def test_lite_hrnet_18_fp16_engine_keeps_the_keypoints(lite18_bundle, cli_runner):
    from hrdeploy.cli import cli
    from hrdeploy.runtime.onnxruntime import OrtRunner
    from hrdeploy.runtime.tensorrt import TrtRunner

    res = cli_runner.invoke(cli, ["build", str(lite18_bundle), "--precision", "fp16", "--max-batch", "4"])
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(0).standard_normal((4, 3, 128, 96)).astype(np.float32)
    out = TrtRunner(lite18_bundle / "model.fp16.engine").run(x)["heatmaps"]
    ref = OrtRunner(lite18_bundle / "model.onnx").run(x)["heatmaps"]
    flat_out, flat_ref = out.reshape(*out.shape[:2], -1), ref.reshape(*ref.shape[:2], -1)
    agreement = np.mean(flat_out.argmax(-1) == flat_ref.argmax(-1))
    assert agreement > 0.95
