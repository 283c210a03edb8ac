"""Dite-HRNet rewrites: dynamic_kernel_aggregation and context_pool.

Each rewrite is checked per module (exactness, same parameter tensors, same state_dict keys), on both
Dite-HRNet models at two input sizes and batch 1 and 3, and by an ONNX export with a dynamic batch.
The upstream form's own export behaviour (what the rewrites fix) is asserted too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hrdeploy import build_model
from hrdeploy.models.dite_hrnet import (
    ConvBN,
    DenseContextModeling,
    DynamicKernelAggregation,
    GlobalContextModeling,
    KernelAggregation,
    KernelAttention,
)
from hrdeploy.rewrite import apply, list_rewrites
from hrdeploy.rewrite.context_pool import ExportDenseContextModeling, ExportGlobalContextModeling
from hrdeploy.rewrite.dynamic_kernel import (
    ExportDynamicConvBN,
    ExportDynamicKernelAggregation,
    PerKernelConvAggregation,
    PerSampleMatMulAggregation,
    rewrite_dynamic_kernel,
)

NAMES = ["dite_hrnet_18", "dite_hrnet_30"]
DITE_REWRITES = ["context_pool", "dynamic_kernel_aggregation"]
UPSTREAM_TYPES = (
    DynamicKernelAggregation,
    KernelAggregation,
    KernelAttention,
    DenseContextModeling,
    GlobalContextModeling,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[nn.Module, nn.Module, list[str]]]:
    out = {}
    for name in NAMES:
        model = build_model(name)
        rewritten, applied = apply(model)
        out[name] = (model, rewritten, applied)
    return out


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.2))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module.eval()


def _max_rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref - out).abs().max() / ref.abs().max())


def _same_parameters(a: nn.Module, b: nn.Module) -> None:
    """b holds a's parameter tensors (the same objects) under the same state_dict keys."""
    assert a.state_dict().keys() == b.state_dict().keys()
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    assert all(pa[k] is pb[k] for k in pa)


def _quiet_export(*args, **kwargs):
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        return torch.onnx.export(*args, **kwargs)


def test_rewrites_are_registered_with_their_identity() -> None:
    docs = {r.name: r.doc for r in list_rewrites()}
    assert "linear" in docs["dynamic_kernel_aggregation"] and "Exact" in docs["dynamic_kernel_aggregation"]
    assert "divide by the network" in docs["context_pool"] and "Exact" in docs["context_pool"]


# ------------------------------------------------------------------------------ dynamic_kernel_aggregation


@pytest.mark.parametrize(
    ("cfg", "form"),
    [
        (
            dict(in_channels=16, out_channels=16, kernel_size=3, stride=1, padding=1, groups=16),
            PerKernelConvAggregation,
        ),
        (
            dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, padding=1, groups=16),
            PerKernelConvAggregation,
        ),
        (
            dict(in_channels=20, out_channels=20, kernel_size=5, stride=1, padding=2, groups=20),
            PerKernelConvAggregation,
        ),
        (dict(in_channels=8, out_channels=12, kernel_size=3, stride=1, padding=1, groups=2), PerKernelConvAggregation),
        (
            dict(in_channels=16, out_channels=4, kernel_size=1, stride=1, padding=0, groups=1),
            PerSampleMatMulAggregation,
        ),
        (
            dict(in_channels=4, out_channels=16, kernel_size=1, stride=1, padding=0, groups=1),
            PerSampleMatMulAggregation,
        ),
    ],
)
@pytest.mark.parametrize("num_kernels", [4, 2])
def test_dynamic_kernel_per_module(cfg, form, num_kernels: int) -> None:
    upstream = _randomise(DynamicKernelAggregation(**cfg, num_kernels=num_kernels))
    rewritten = ExportDynamicKernelAggregation(upstream).eval()
    assert isinstance(rewritten.aggregation, form)
    _same_parameters(upstream, rewritten)
    for batch, size in [(1, (16, 12)), (3, (10, 14))]:
        x = torch.randn(batch, cfg["in_channels"], *size)
        with torch.no_grad():
            ref, out = upstream(x), rewritten(x)
        assert out.shape == ref.shape
        assert _max_rel(ref, out) <= 1e-5


@pytest.mark.parametrize("form", ["stacked", "perkernel"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_dynamic_kernel_other_forms_are_exact_too(form: str, kernel_size: int) -> None:
    upstream = _randomise(DynamicKernelAggregation(16, 16, kernel_size, padding=kernel_size // 2, num_kernels=4))
    rewritten = ExportDynamicKernelAggregation(upstream, form=form).eval()
    if form == "stacked":
        assert rewritten.aggregation.stacked_weight().shape == (64, 16, kernel_size, kernel_size)
    x = torch.randn(3, 16, 8, 6)
    with torch.no_grad():
        assert _max_rel(upstream(x), rewritten(x)) <= 1e-5


def test_dynamic_kernel_rejects_unknown_or_impossible_forms() -> None:
    depthwise = _randomise(DynamicKernelAggregation(8, 8, 3, 1, 1, groups=8))
    with pytest.raises(ValueError, match="1x1"):
        ExportDynamicKernelAggregation(depthwise, form="matmul")
    with pytest.raises(ValueError, match="unknown form"):
        ExportDynamicKernelAggregation(depthwise, form="loop")


@pytest.mark.parametrize(
    ("kernel_size", "stride", "relu", "aggregation"),
    [(3, 1, True, PerKernelConvAggregation), (3, 2, False, PerKernelConvAggregation),
     (5, 1, False, PerKernelConvAggregation), (1, 1, True, PerSampleMatMulAggregation)],
)
def test_dynamic_conv_bn_folds_the_bn(kernel_size: int, stride: int, relu: bool, aggregation: type) -> None:
    """ConvBN(ReLU) around a dynamic conv: the BN folds into the per-kernel convs (weights scaled, shift as
    the first conv's bias); the upstream state_dict keys and tensors are kept."""
    groups = 16 if kernel_size > 1 else 1
    upstream = _randomise(ConvBN(16, 16, kernel_size, stride, kernel_size // 2, groups, num_kernels=4, relu=relu))
    rewritten = rewrite_dynamic_kernel(upstream).eval()
    assert isinstance(rewritten, ExportDynamicConvBN) and isinstance(rewritten.conv.aggregation, aggregation)
    _same_parameters(upstream, rewritten)
    for batch, size in [(1, (16, 12)), (3, (10, 14))]:
        x = torch.randn(batch, 16, *size)
        with torch.no_grad():
            ref, out = upstream(x), rewritten(x)
        assert out.shape == ref.shape
        assert _max_rel(ref, out) <= 1e-5


# ----------------------------------------------------------------------------------------- context_pool


@pytest.mark.parametrize("channels", [[20, 40], [20, 40, 80], [20, 40, 80, 160]])
def test_dense_context_pool_per_module(channels: list[int]) -> None:
    upstream = _randomise(DenseContextModeling(channels))
    rewritten = ExportDenseContextModeling(upstream).eval()
    _same_parameters(upstream, rewritten)
    assert f"conv_mask.{len(channels) - 1}.weight" in rewritten.state_dict()  # the unused one is kept
    n = len(channels)
    for batch, (h, w) in [(1, (64, 48)), (3, (96, 72))]:
        # branch i is 2^(n-1-i) times the last branch (input divisible by 32 at 1/4 resolution)
        xs = [torch.randn(batch, c, h >> i, w >> i) for i, c in enumerate(channels)]
        with torch.no_grad():
            # upstream reads its input as views of a larger tensor (the block's channel halves): do too
            halves = [torch.cat([torch.zeros_like(t), t], dim=1).chunk(2, dim=1)[1] for t in xs]
            ref, out = upstream(halves), rewritten(halves)
        for r, o in zip(ref, out, strict=True):
            assert _max_rel(r, o) <= 1e-5
        assert len(out) == n


def test_dense_context_pool_rejects_sizes_that_do_not_divide() -> None:
    rewritten = ExportDenseContextModeling(_randomise(DenseContextModeling([8, 16])))
    with pytest.raises(ValueError, match="divide by 32"):
        rewritten([torch.randn(1, 8, 10, 8), torch.randn(1, 16, 4, 4)])


def test_global_context_pool_per_module() -> None:
    upstream = _randomise(GlobalContextModeling(16, reduction=4))
    rewritten = ExportGlobalContextModeling(upstream).eval()
    _same_parameters(upstream, rewritten)
    for batch, size in [(1, (32, 24)), (3, (13, 7))]:  # any size: no reshaping of positions
        x = torch.randn(batch, 16, *size)
        with torch.no_grad():
            assert _max_rel(upstream(x), rewritten(x)) <= 1e-5


# ------------------------------------------------------------------------------------------ whole models


@pytest.mark.parametrize("name", NAMES)
def test_rewritten_model_holds_the_same_parameters(models, name: str) -> None:
    model, rewritten, applied = models[name]
    assert set(DITE_REWRITES) <= set(applied)
    # apply() works on a copy: same keys and values (per-module tests check the tensors are shared)
    ref, got = model.state_dict(), rewritten.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # in place, the rewritten model holds the very same parameter tensors
    copy_ = copy.deepcopy(model)
    before = dict(copy_.named_parameters())
    after = dict(apply(copy_, DITE_REWRITES, inplace=True)[0].named_parameters())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert not any(isinstance(m, UPSTREAM_TYPES) for m in rewritten.modules())
    assert any(isinstance(m, UPSTREAM_TYPES) for m in model.modules())  # the original is untouched


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("batch", "size"), [(1, (256, 192)), (3, (256, 192)), (1, (384, 288)), (3, (384, 288))])
def test_rewritten_model_matches_upstream(models, name: str, batch: int, size: tuple[int, int]) -> None:
    model, rewritten, _ = models[name]
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref, out = model(x), rewritten(x)
    assert out.shape == ref.shape == (batch, 17, size[0] // 4, size[1] // 4)
    assert _max_rel(ref, out) <= 1e-4


# ------------------------------------------------------------------------------------------------ export


def test_upstream_dynamic_kernel_export_behaviour() -> None:
    """What torch 2.13 does with the upstream (batch-folded) form: dynamic batch fails, batch 1 exports
    with a Conv whose weight is computed at run time and whose group is C (the batch is baked in)."""
    upstream = _randomise(DynamicKernelAggregation(16, 16, 3, 1, 1, groups=16, num_kernels=4))
    batch = torch.export.Dim("batch", min=1, max=64)
    with pytest.raises(Exception, match="(?i)convert|conv"):
        _quiet_export(
            upstream, (torch.randn(2, 16, 24, 16),), None, dynamo=True, opset_version=18, dynamic_shapes=({0: batch},)
        )
    program = _quiet_export(upstream, (torch.randn(1, 16, 24, 16),), None, dynamo=True, opset_version=18)
    graph = program.model_proto.graph
    initializers = {i.name for i in graph.initializer}
    dynamic_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] not in initializers]
    assert len(dynamic_convs) == 1
    assert {a.name: a.i for a in dynamic_convs[0].attribute}["group"] == 16


def test_rewritten_dynamic_kernel_exports_with_dynamic_batch() -> None:
    import onnxruntime as ort

    upstream = _randomise(ConvBN(16, 16, 3, 2, 1, groups=16, num_kernels=4, relu=True))
    rewritten = rewrite_dynamic_kernel(upstream).eval()
    program = _quiet_export(
        rewritten,
        (torch.randn(2, 16, 24, 16),),
        None,
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    graph = program.model_proto.graph
    initializers = {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 + 2  # the 4 kernels, and the attention's two 1x1 convs
    assert all(n.input[1] in initializers for n in convs)  # constant weights, the BN folded in
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 16, 24, 16)
        with torch.no_grad():
            ref = upstream(x).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-5


@pytest.mark.slow
def test_dite_hrnet_18_bundle_with_dynamic_batch(models, tmp_path) -> None:
    """The issue's scenario: `hrdeploy export dite_hrnet_18 --dynamic-batch` at 256x192 matches
    build_model("dite_hrnet_18") at batch 1, 3 and 4, with constant conv weights and the BNs folded.
    (tests/test_zoo_parity.py relies on this test for dite_hrnet_18.)"""
    import onnx
    from test_zoo_parity import check_parity

    from hrdeploy.export import export_bundle
    from hrdeploy.runtime.onnxruntime import OrtRunner

    result = export_bundle("dite_hrnet_18", tmp_path / "d18", dynamic_batch=True)
    check_parity("dite_hrnet_18", result.parity, result.simplify_error)
    assert set(result.manifest.rewrites) >= set(DITE_REWRITES)
    proto = onnx.load(str(tmp_path / "d18" / "model.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 256, 192]
    initializers = {i.name for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in initializers for n in convs)  # no run-time conv weights
    model, rewritten, _ = models["dite_hrnet_18"]
    # the BNs left are GlobalContextModeling's bn(x * attention) and those after the stem's three dynamic
    # 1x1 convs (per-sample MatMul form); every other BN is folded into a conv
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    pointwise = [m for m in rewritten.modules()
                 if isinstance(m, ExportDynamicConvBN) and isinstance(m.conv.aggregation, PerSampleMatMulAggregation)]
    assert len(pointwise) == 3
    assert len(bns) == sum(isinstance(m, GlobalContextModeling) for m in model.modules()) + len(pointwise)
    runner = OrtRunner(tmp_path / "d18" / "model.onnx")
    x = torch.randn(3, 3, 256, 192, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        ref = model(x).numpy()
    out = runner.run(x.numpy())["heatmaps"]
    assert out.shape == ref.shape == (3, 17, 64, 48)
    assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-4
