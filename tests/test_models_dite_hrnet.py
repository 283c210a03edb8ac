"""Dite-HRNet reference networks: registry facts, exact counts, state_dict layout and upstream quirks.

Every quirk is checked against the formula computed independently (numpy or per-sample torch loops).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrdeploy import build_model, get_spec
from hrdeploy.counting import count_macs, count_params
from hrdeploy.models.common import ChannelShuffle
from hrdeploy.models.dite_hrnet import (
    DenseContextModeling,
    DiteHRModule,
    DynamicKernelAggregation,
    DynamicSplitConvolution,
    GlobalContextModeling,
    KernelAggregation,
    KernelAttention,
    split_channels,
)

NAMES = ["dite_hrnet_18", "dite_hrnet_30"]
# Params at COCO 17 keypoints (exact), MACs (FlopCounterMode / 2) at 256x192 and 384x288.
COUNTS = {"dite_hrnet_18": (1_186_933, 246.6e6, 554.6e6), "dite_hrnet_30": (1_862_549, 396.8e6, 892.5e6)}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_model(name) for name in NAMES}


def _meta_model(name: str, dataset: str = "coco") -> nn.Module:
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.builder(spec.num_outputs(dataset))


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (not identity), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.2))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module.eval()


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


# ------------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", NAMES)
def test_spec_fields(name: str) -> None:
    spec = get_spec(name)
    assert spec.family == "dite_hrnet" and spec.task == "pose_topdown"
    assert spec.datasets == ("coco", "mpii")
    assert spec.input_size("coco") == (256, 192) and spec.input_size("mpii") == (256, 256)
    assert spec.stride == 32 and spec.output_names == ("heatmaps",) and spec.output_strides == (4,)
    assert spec.num_outputs("coco") == 17 and spec.num_outputs("mpii") == 16
    assert "ditehrnet.py" in spec.upstream
    by_size = {p.input_size: p for p in spec.published}
    assert set(by_size) == {(256, 192), (384, 288), (256, 256)}
    assert by_size[(384, 288)].macs > by_size[(256, 192)].macs and "README" in by_size[(256, 192)].source


@pytest.mark.parametrize("name", NAMES)
def test_exact_params_and_macs(name: str) -> None:
    params, macs_256, macs_384 = COUNTS[name]
    assert count_params(_meta_model(name)) == params
    assert count_macs(_meta_model(name), (256, 192)) == pytest.approx(macs_256, rel=0.01)
    assert count_macs(_meta_model(name), (384, 288)) == pytest.approx(macs_384, rel=0.01)
    # MPII head: 16 keypoints -> 41 fewer parameters (40 weights + 1 bias).
    assert count_params(_meta_model(name, "mpii")) == params - 41


def test_state_dict_key_families() -> None:
    sd = _meta_model("dite_hrnet_18").state_dict()
    b = "backbone."
    expected = {
        # stem: plain conv1, dynamic dw (K=4), GCM, dynamic 1x1
        b + "stem.conv1.conv.weight": (32, 3, 3, 3),
        b + "stem.branch1.0.conv.attention.conv1.weight": (4, 16, 1, 1),
        b + "stem.branch1.0.conv.attention.conv2.bias": (4,),
        b + "stem.branch1.0.conv.aggregation.weight": (4, 16, 1, 3, 3),
        b + "stem.branch1.1.conv_mask.weight": (1, 16, 1, 1),
        b + "stem.branch1.1.channel_attention.0.weight": (4, 16, 1, 1),
        b + "stem.branch1.1.channel_attention.3.bias": (16,),
        b + "stem.branch1.1.bn.running_var": (16,),
        b + "stem.branch1.2.conv.aggregation.weight": (4, 16, 16, 1, 1),
        b + "stem.branch2.2.conv.aggregation.weight": (4, 4, 16, 1, 1),
        b + "stem.branch2.3.conv.aggregation.weight": (4, 16, 4, 1, 1),
        b + "stem.branch2.4.conv.aggregation.weight": (4, 16, 1, 3, 3),
        # transitions
        b + "transition0.0.0.weight": (32, 1, 3, 3),
        b + "transition0.0.2.weight": (40, 32, 1, 1),
        b + "transition0.1.0.0.weight": (32, 1, 3, 3),
        b + "transition0.1.0.2.weight": (80, 32, 1, 1),
        b + "transition1.2.0.2.weight": (160, 80, 1, 1),
        b + "transition2.3.0.2.weight": (320, 160, 1, 1),
        # DMC blocks: DCM with one conv_mask per branch (the last unused), split convs, GCMs
        b + "stage2.0.layers.0.dcm.conv_mask.3.weight": (1, 160, 1, 1),
        b + "stage2.0.layers.0.dcm.channel_attention.0.weight": (37, 300, 1, 1),
        b + "stage2.0.layers.0.dcm.channel_attention.1.running_mean": (37,),
        b + "stage2.0.layers.0.dcm.channel_attention.3.weight": (300, 37, 1, 1),
        b + "stage2.0.layers.0.conv.0.conv.0.conv.aggregation.weight": (4, 20, 1, 3, 3),
        b + "stage2.0.layers.0.conv.1.conv.0.conv.attention.conv1.weight": (10, 40, 1, 1),
        b + "stage2.0.layers.0.conv.2.conv.1.conv.aggregation.weight": (2, 40, 1, 5, 5),
        b + "stage2.0.layers.0.conv.3.conv.3.conv.weight": (40, 1, 9, 9),  # K = 1: a plain conv
        b + "stage2.0.layers.0.conv.3.conv.0.bn.weight": (40,),
        b + "stage2.0.layers.0.gcm.3.channel_attention.0.weight": (20, 160, 1, 1),  # reduction 8
        b + "stage2.0.layers.0.gcm.0.channel_attention.0.weight": (5, 20, 1, 1),  # reduction 4
        # fuse layers, iterative head, keypoint head (mmpose 0.x layout)
        b + "stage2.1.fuse_layers.0.3.0.weight": (40, 320, 1, 1),
        b + "stage2.1.fuse_layers.3.0.2.3.weight": (320,),
        b + "head_layer.projects.0.depthwise_conv.conv.weight": (320, 1, 3, 3),
        b + "head_layer.projects.3.pointwise_conv.conv.weight": (40, 40, 1, 1),
        "keypoint_head.final_layer.weight": (17, 40, 1, 1),
        "keypoint_head.final_layer.bias": (17,),
    }
    for key, shape in expected.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert not any(".shuffle" in k or "avg_pool" in k for k in sd)  # parameter-free modules add no keys
    assert (
        len([k for k in sd if k.endswith("aggregation.weight")]) == 6 + 4 * 2 + 8 * 4 + 4 * 4
    )  # stem, stages (blocks x dynamic convs)


def test_checkpoint_round_trip_strict(tmp_path) -> None:
    model = build_model("dite_hrnet_18", seed=3)
    path = tmp_path / "dite18.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = build_model("dite_hrnet_18", checkpoint=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_output_on_a_photo(models, name: str) -> None:
    from skimage import data
    from skimage.transform import resize

    spec = get_spec(name)
    img = resize(data.astronaut(), (256, 192), anti_aliasing=True)
    x = (img - np.array(spec.mean)) / np.array(spec.std)
    x = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = models[name](x)
    assert y.shape == (1, 17, 64, 48)
    assert torch.isfinite(y).all()
    assert 0.05 <= float(y.std()) <= 20


# ------------------------------------------------------------------------------------------------ quirks


def test_kernel_attention_is_a_sigmoid_not_a_softmax() -> None:
    att = _randomise(KernelAttention(16, num_kernels=4))
    x = torch.randn(3, 16, 12, 10)
    with torch.no_grad():
        got = att(x)
        pooled = x.mean(dim=(2, 3))
        h = F.relu(_bn((pooled @ att.conv1.weight[:, :, 0, 0].T)[:, :, None, None], att.bn))[:, :, 0, 0]
        logits = h @ att.conv2.weight[:, :, 0, 0].T + att.conv2.bias
    assert att.conv1.out_channels == 4  # channels // 4
    assert KernelAttention(3, num_kernels=4).conv1.out_channels == 4  # channels == 3: num_kernels
    torch.testing.assert_close(got, torch.sigmoid(logits), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got.sum(dim=1), torch.ones(3), atol=1e-2)  # not normalised like a softmax


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=16, out_channels=16, kernel_size=3, stride=1, padding=1, groups=16),
        dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, padding=1, groups=16),
        dict(in_channels=16, out_channels=4, kernel_size=1, stride=1, padding=0, groups=1),
        dict(in_channels=8, out_channels=12, kernel_size=3, stride=1, padding=1, groups=2),
    ],
)
def test_kernel_aggregation_batch_folded_grouped_conv(cfg) -> None:
    agg = KernelAggregation(**cfg, num_kernels=4)
    torch.nn.init.normal_(agg.weight)
    x = torch.randn(3, cfg["in_channels"], 10, 8)
    a = torch.rand(3, 4)
    with torch.no_grad():
        got = agg(x, a)
        expected = torch.cat(
            [
                F.conv2d(
                    x[n : n + 1],
                    (a[n].view(4, 1, 1, 1, 1) * agg.weight).sum(0),
                    None,
                    cfg["stride"],
                    cfg["padding"],
                    1,
                    cfg["groups"],
                )
                for n in range(3)
            ]
        )
    assert agg.bias is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # samples do not mix: changing sample 0's attention leaves samples 1 and 2 unchanged
    a2 = a.clone()
    a2[0] = 1 - a2[0]
    with torch.no_grad():
        other = agg(x, a2)
    assert torch.equal(other[1:], got[1:]) and not torch.allclose(other[0], got[0])


def test_dynamic_kernel_aggregation_wires_attention_into_aggregation() -> None:
    dka = _randomise(DynamicKernelAggregation(10, 10, 3, 1, 1, groups=10, num_kernels=4))
    x = torch.randn(2, 10, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(dka(x), dka.aggregation(x, dka.attention(x)))


def test_split_convolution_layout() -> None:
    assert split_channels(37, 4) == [10, 9, 9, 9] and split_channels(40, 2) == [20, 20]
    conv = _randomise(DynamicSplitConvolution(40, 1, num_groups=4, num_kernels=1))
    assert [c.conv.kernel_size for c in conv.conv] == [(3, 3), (5, 5), (7, 7), (9, 9)]
    assert [c.conv.padding for c in conv.conv] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    x = torch.randn(2, 40, 8, 6)
    with torch.no_grad():
        parts = [m(t) for m, t in zip(conv.conv, x.split(10, dim=1), strict=True)]
        expected = ChannelShuffle(4)(torch.cat(parts, dim=1))
        torch.testing.assert_close(conv(x), expected)


def _np_gcm_pool(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    n, c = x.shape[:2]
    out = np.zeros((n, c, 1, 1))
    for i in range(n):
        e = np.exp(logits[i].ravel() - logits[i].max())
        w = e / e.sum()
        out[i, :, 0, 0] = x[i].reshape(c, -1) @ w
    return out


def test_global_context_modeling_formula() -> None:
    gcm = _randomise(GlobalContextModeling(12, reduction=4))
    x = torch.randn(2, 12, 7, 5)
    with torch.no_grad():
        logits = gcm.conv_mask(x).numpy().astype(np.float64)
        pooled = torch.from_numpy(_np_gcm_pool(x.numpy().astype(np.float64), logits)).float()
        torch.testing.assert_close(gcm.global_spatial_pool(x), pooled, rtol=1e-5, atol=1e-5)
        expected = gcm.bn(x * gcm.channel_attention(pooled))
        torch.testing.assert_close(gcm(x), expected, rtol=1e-5, atol=1e-5)


def _np_dcm_pool(x: np.ndarray, logits: np.ndarray, mini: tuple[int, int]) -> np.ndarray:
    """Upstream's raw pooling, from its definition: per sample, the flat C*H*W values form M blocks of
    C rows of L consecutive values; block m, row c is dotted with mask positions m*L .. m*L+L-1."""
    n, c, h, w = x.shape
    m = mini[0] * mini[1]
    L = h * w // m
    out = np.zeros((n, c, m))
    for i in range(n):
        flat = x[i].ravel()
        e = np.exp(logits[i].ravel() - logits[i].max())
        mask = e / e.sum()
        for blk in range(m):
            for ch in range(c):
                start = blk * c * L + ch * L
                out[i, ch, blk] = flat[start : start + L] @ mask[blk * L : blk * L + L]
    return out.reshape(n, c, *mini)


def test_dense_context_modeling_raw_view_pooling() -> None:
    dcm = _randomise(DenseContextModeling([6, 10, 14], reduction=8))
    xs = [torch.randn(2, 6, 16, 12), torch.randn(2, 10, 8, 6), torch.randn(2, 14, 4, 3)]
    with torch.no_grad():
        for i in range(2):
            logits = dcm.conv_mask[i](xs[i]).numpy().astype(np.float64)
            expected = _np_dcm_pool(xs[i].numpy().astype(np.float64), logits, (4, 3))
            got = dcm.global_spatial_pool(xs[i], (4, 3), i)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
        # the mask chunks of L consecutive positions are not normalised (they sum to ~1/M, not 1)
        mask = torch.softmax(dcm.conv_mask[0](xs[0]).flatten(1), dim=1).view(2, 12, 16)
        assert not torch.allclose(mask.sum(-1), torch.ones(2, 12), atol=0.1)
        # forward: attention from [pooled..., last branch raw], nearest-upsampled back and multiplied in
        cat = torch.cat(
            [dcm.global_spatial_pool(xs[0], (4, 3), 0), dcm.global_spatial_pool(xs[1], (4, 3), 1), xs[2]], dim=1
        )
        att = torch.split(dcm.channel_attention(cat), [6, 10, 14], dim=1)
        expected_out = [
            s * a.repeat_interleave(f, 2).repeat_interleave(f, 3) for s, a, f in zip(xs, att, (4, 2, 1), strict=True)
        ]
        for got, exp in zip(dcm(xs), expected_out, strict=True):
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def test_dense_context_modeling_last_conv_mask_is_unused() -> None:
    dcm = _randomise(DenseContextModeling([6, 10, 14]))
    xs = [torch.randn(1, 6, 16, 12), torch.randn(1, 10, 8, 6), torch.randn(1, 14, 4, 3)]
    assert len(dcm.conv_mask) == 3 and "conv_mask.2.weight" in dcm.state_dict()
    with torch.no_grad():
        before = dcm(xs)
        dcm.conv_mask[2].weight.add_(5.0)
        dcm.conv_mask[2].bias.add_(5.0)
        after_last = dcm(xs)
        dcm.conv_mask[0].weight.add_(5.0)
        after_first = dcm(xs)
    for a, b in zip(before, after_last, strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(before[0], after_first[0])  # a used mask does change the output


def test_fuse_in_place_relu_variant() -> None:
    torch.manual_seed(0)
    module = _randomise(DiteHRModule(3, 1, [8, 16, 32]))
    xs = [torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)]
    fuse = module.fuse_layers
    with torch.no_grad():
        got = module([t.clone() for t in xs])
        x = module.layers([t.clone() for t in xs])
        y0 = 2 * x[0] + fuse[0][1](x[1]) + fuse[0][2](x[2])
        r0 = F.relu(y0)
        expected = [
            r0,
            F.relu(2 * fuse[1][0](r0) + x[1] + fuse[1][2](x[2])),
            F.relu(2 * fuse[2][0](r0) + fuse[2][1](x[1]) + x[2]),
        ]
        lite = F.relu(2 * fuse[1][0](y0) + x[1] + fuse[1][2](x[2]))  # Lite-HRNet's variant (not in place)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1], lite, atol=1e-3)
    assert isinstance(module.relu, nn.ReLU) and module.relu.inplace
