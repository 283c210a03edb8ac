"""Lite-HRNet rewrites (adaptive_pool, channel_shuffle): exact on every zoo model, dynamic batch in ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hrdeploy import build_model
from hrdeploy.models.common import ChannelShuffle, channel_shuffle
from hrdeploy.models.lite_hrnet import CrossResolutionWeighting, SpatialWeighting
from hrdeploy.rewrite import apply, list_rewrites
from hrdeploy.rewrite.adaptive_pool import ExportCrossResolutionWeighting, ExportSpatialWeighting
from hrdeploy.rewrite.channel_shuffle import ExportChannelShuffle

NAMES = ["lite_hrnet_18", "lite_hrnet_30", "naive_lite_hrnet_18", "wider_naive_lite_hrnet_18"]
LITE_REWRITES = ["adaptive_pool", "channel_shuffle"]
REL_TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks of many tiny ops: one intra-op thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rel_err(got: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_rewrites_registered_with_docs() -> None:
    docs = {r.name: r.doc for r in list_rewrites()}
    assert "exact" in docs["adaptive_pool"].lower() and "32" in docs["adaptive_pool"]
    assert "-1" in docs["channel_shuffle"]


@pytest.mark.parametrize("name", NAMES)
def test_rewritten_matches_eager(name: str) -> None:
    model = build_model(name)
    rewritten, applied = apply(model, LITE_REWRITES)
    lite = not name.startswith("naive") and not name.startswith("wider")
    assert applied == (LITE_REWRITES if lite else ["channel_shuffle"])
    kinds = {type(m) for m in rewritten.modules()}
    assert not kinds & {CrossResolutionWeighting, SpatialWeighting, ChannelShuffle, nn.AdaptiveAvgPool2d}
    assert ExportChannelShuffle in kinds
    assert (ExportCrossResolutionWeighting in kinds) == lite
    # same parameters under the same names: a checkpoint loads into either form
    ref_sd, new_sd = model.state_dict(), rewritten.state_dict()
    assert list(ref_sd) == list(new_sd)
    assert all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd)

    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for size in [(256, 192), (384, 288)]:
            x = torch.randn(3, 3, *size, generator=gen)
            for batch in (1, 3):
                ref = model(x[:batch])
                got = rewritten(x[:batch])
                assert got.shape == ref.shape == (batch, 17, size[0] // 4, size[1] // 4)
                assert _rel_err(got, ref) <= REL_TOL, (name, size, batch)


def test_adaptive_pool_rewrite_single_module_at_mpii_size() -> None:
    torch.manual_seed(0)
    crw = CrossResolutionWeighting([20, 40, 80, 160], ratio=8).eval()
    with torch.no_grad():
        for bn in (crw.conv1.bn, crw.conv2.bn):
            bn.running_mean.normal_()
            bn.weight.uniform_(0.5, 1.5)
    new = ExportCrossResolutionWeighting(crw)
    assert new.conv1 is crw.conv1 and new.conv2 is crw.conv2  # the same parameter tensors
    # MPII 256x256 -> branches 64, 32, 16, 8
    x = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([20, 40, 80, 160])]
    with torch.no_grad():
        for g, r in zip(new(x), crw(x), strict=True):
            assert _rel_err(g, r) <= 1e-6
    sw = SpatialWeighting(24).eval()
    xs = torch.randn(3, 24, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(ExportSpatialWeighting(sw)(xs), sw(xs))


@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_rewrite_dynamic_batch(groups: int) -> None:
    module = ExportChannelShuffle(groups)
    for n in (1, 3):
        x = torch.randn(n, 4 * groups, 5, 3)
        assert torch.equal(module(x), channel_shuffle(x, groups))
    # exported with a symbolic batch, the program must run at another batch
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(module, (torch.randn(2, 4 * groups, 5, 3),), dynamic_shapes=({0: batch},))
    x5 = torch.randn(5, 4 * groups, 5, 3)
    assert torch.equal(ep.module()(x5), channel_shuffle(x5, groups))


@pytest.mark.slow
def test_lite_hrnet_18_onnx_dynamic_batch(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build_model("lite_hrnet_18")
    rewritten, _ = apply(model, LITE_REWRITES)
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.onnx.export(
        rewritten,
        (torch.randn(2, 3, 256, 192),),
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: batch},),
        input_names=["input"],
        output_names=["heatmaps"],
    )
    path = tmp_path / "lite_hrnet_18.onnx"
    program.save(str(path))

    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not graph.input[0].type.tensor_type.shape.dim[0].dim_value
    ops = {node.op_type for node in graph.node}
    assert "AveragePool" in ops and "ReduceMean" in ops

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 256, 192, generator=torch.Generator().manual_seed(11))
    for n in (1, 3):
        with torch.no_grad():
            ref = model(x[:n]).numpy()
        (got,) = session.run(None, {"input": x[:n].numpy()})
        assert got.shape == (n, 17, 64, 48)
        assert _rel_err(got, ref) <= REL_TOL
