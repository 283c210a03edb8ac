"""Lite-HRNet reference networks: registry facts, exact counts, state_dict layout and upstream quirks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hrdeploy import build_model, get_spec
from hrdeploy.counting import count_macs, count_params
from hrdeploy.models.common import ChannelShuffle
from hrdeploy.models.lite_hrnet import (
    CrossResolutionWeighting,
    IterativeHead,
    LiteHRModule,
    fuse_forward,
    make_fuse_layers,
    make_transition,
)

NAMES = ["lite_hrnet_18", "lite_hrnet_30", "naive_lite_hrnet_18", "wider_naive_lite_hrnet_18"]

# (params at COCO 17 keypoints, MACs 256x192, MACs 384x288) as measured by hrdeploy.counting.
COUNTS = {
    "lite_hrnet_18": (1_130_769, 242.3e6, 545.1e6),
    "lite_hrnet_30": (1_763_717, 386.1e6, 868.5e6),
    "naive_lite_hrnet_18": (760_365, 211.0e6, 474.9e6),
    "wider_naive_lite_hrnet_18": (1_318_625, 346.1e6, 778.6e6),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks of many tiny ops: one intra-op thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta_model(name: str, dataset: str = "coco") -> nn.Module:
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.builder(spec.num_outputs(dataset))


@pytest.mark.parametrize("name", NAMES)
def test_spec_fields(name: str) -> None:
    spec = get_spec(name)
    assert spec.task == "pose_topdown"
    assert spec.datasets == ("coco", "mpii")
    assert spec.input_size("coco") == (256, 192) and spec.input_size("mpii") == (256, 256)
    assert spec.stride == 32 and spec.output_names == ("heatmaps",) and spec.output_strides == (4,)
    assert spec.num_outputs("coco") == 17 and spec.num_outputs("mpii") == 16
    assert "litehrnet.py" in spec.upstream
    coco = [p for p in spec.published if p.input_size == (256, 192)]
    assert len(coco) == 1 and coco[0].macs and coco[0].params and "README" in coco[0].source


@pytest.mark.parametrize("name", NAMES)
def test_params_and_macs(name: str) -> None:
    params, macs_small, macs_large = COUNTS[name]
    model = _meta_model(name)
    assert count_params(model) == params
    assert count_macs(model, (256, 192)) == pytest.approx(macs_small, rel=0.01)
    assert count_macs(model, (384, 288)) == pytest.approx(macs_large, rel=0.01)
    # MPII: 16 keypoints -> the 1x1 head loses one output row (in_channels weights + 1 bias)
    head_in = 30 if name == "naive_lite_hrnet_18" else 40
    assert count_params(_meta_model(name, "mpii")) == params - head_in - 1


def test_state_dict_keys_lite_18() -> None:
    sd = _meta_model("lite_hrnet_18").state_dict()
    shapes = {
        "backbone.stem.conv1.conv.weight": (32, 3, 3, 3),
        "backbone.stem.branch1.0.conv.weight": (16, 1, 3, 3),
        "backbone.stem.branch1.1.bn.running_mean": (16,),
        "backbone.stem.expand_conv.conv.weight": (32, 16, 1, 1),
        "backbone.stem.depthwise_conv.conv.weight": (32, 1, 3, 3),
        "backbone.stem.linear_conv.conv.weight": (16, 32, 1, 1),
        "backbone.transition0.0.0.weight": (32, 1, 3, 3),
        "backbone.transition0.0.2.weight": (40, 32, 1, 1),
        "backbone.transition0.0.3.running_var": (40,),
        "backbone.transition0.1.0.0.weight": (32, 1, 3, 3),
        "backbone.transition0.1.0.2.weight": (80, 32, 1, 1),
        "backbone.transition1.2.0.2.weight": (160, 80, 1, 1),
        "backbone.transition2.3.0.2.weight": (320, 160, 1, 1),
        "backbone.stage0.0.layers.0.cross_resolution_weighting.conv1.conv.weight": (7, 60, 1, 1),
        "backbone.stage0.0.layers.0.cross_resolution_weighting.conv2.bn.weight": (60,),
        "backbone.stage0.1.layers.1.depthwise_convs.1.conv.weight": (40, 1, 3, 3),
        "backbone.stage0.0.layers.0.spatial_weighting.0.conv1.conv.weight": (5, 20, 1, 1),
        "backbone.stage0.0.layers.0.spatial_weighting.0.conv1.conv.bias": (5,),
        "backbone.stage1.3.layers.1.cross_resolution_weighting.conv2.conv.weight": (140, 17, 1, 1),
        "backbone.stage2.1.layers.0.spatial_weighting.3.conv2.conv.bias": (160,),
        "backbone.stage2.0.fuse_layers.0.3.0.weight": (40, 320, 1, 1),
        "backbone.stage2.0.fuse_layers.0.3.1.running_mean": (40,),
        "backbone.stage2.0.fuse_layers.3.0.0.2.weight": (40, 40, 1, 1),
        "backbone.stage2.0.fuse_layers.3.0.2.0.weight": (40, 1, 3, 3),
        "backbone.stage2.0.fuse_layers.3.0.2.2.weight": (320, 40, 1, 1),
        "backbone.stage2.0.fuse_layers.3.0.2.3.running_var": (320,),
        "backbone.head_layer.projects.0.depthwise_conv.conv.weight": (320, 1, 3, 3),
        "backbone.head_layer.projects.0.pointwise_conv.conv.weight": (160, 320, 1, 1),
        "backbone.head_layer.projects.3.pointwise_conv.bn.running_var": (40,),
        "keypoint_head.final_layer.weight": (17, 40, 1, 1),
        "keypoint_head.final_layer.bias": (17,),
    }
    for key, shape in shapes.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    # plain Conv2d(bias=False) in transitions/fuse, no bias on BN'd ConvModules, no stray families
    assert "backbone.transition0.0.0.bias" not in sd
    assert "backbone.stem.conv1.conv.bias" not in sd
    assert not any(k.startswith("backbone.transition0.1.0.4") for k in sd)  # ReLU carries no state
    assert {k.split(".")[0] for k in sd} == {"backbone", "keypoint_head"}
    assert {k.split(".")[1] for k in sd} - {"final_layer"} == {
        "stem", "transition0", "transition1", "transition2", "stage0", "stage1", "stage2", "head_layer"
    }
    # stage module counts (2,4,2) and blocks per module 2
    assert max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.stage1.")) == 3
    assert max(int(k.split(".")[4]) for k in sd if k.startswith("backbone.stage0.0.layers.")) == 1


def test_state_dict_keys_naive_and_30() -> None:
    naive = _meta_model("naive_lite_hrnet_18").state_dict()
    assert tuple(naive["backbone.stage0.0.layers.0.0.branch2.0.conv.weight"].shape) == (15, 15, 1, 1)
    assert tuple(naive["backbone.stage2.1.layers.3.1.branch2.1.conv.weight"].shape) == (120, 1, 3, 3)
    assert tuple(naive["backbone.stage1.3.layers.2.1.branch2.2.bn.running_var"].shape) == (60,)
    assert tuple(naive["keypoint_head.final_layer.weight"].shape) == (17, 30, 1, 1)
    assert not any("cross_resolution_weighting" in k or "spatial_weighting" in k for k in naive)
    wider = _meta_model("wider_naive_lite_hrnet_18").state_dict()
    assert tuple(wider["backbone.stage2.0.layers.3.0.branch2.0.conv.weight"].shape) == (160, 160, 1, 1)
    assert tuple(wider["keypoint_head.final_layer.weight"].shape) == (17, 40, 1, 1)
    l30 = _meta_model("lite_hrnet_30").state_dict()
    assert "backbone.stage1.7.layers.1.cross_resolution_weighting.conv1.conv.weight" in l30
    assert not any(k.startswith("backbone.stage1.8.") for k in l30)
    assert "backbone.stage2.2.fuse_layers.3.2.0.0.weight" in l30


def test_strict_load_roundtrip_changes_output() -> None:
    a = build_model("naive_lite_hrnet_18", seed=0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ya, yb = a(x), b(x)
        assert not torch.allclose(ya, yb)
        b.load_state_dict(a.state_dict(), strict=True)
        torch.testing.assert_close(b(x), ya, rtol=0, atol=0)


def test_cross_resolution_weighting_sizes() -> None:
    model = _meta_model("lite_hrnet_30")
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, CrossResolutionWeighting):
            s = sum(m.channels)
            seen.setdefault(name.split(".")[1], set()).add((s, m.conv1.conv.out_channels, m.conv2.conv.in_channels))
    assert seen == {"stage0": {(60, 7, 7)}, "stage1": {(140, 17, 17)}, "stage2": {(300, 37, 37)}}


def test_naive_18_backbone_has_30_channels() -> None:
    model = build_model("naive_lite_hrnet_18")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        heat = model(x)
    assert len(feats) == 1 and tuple(feats[0].shape) == (2, 30, 16, 24)
    assert tuple(heat.shape) == (2, 17, 16, 24)
    torch.testing.assert_close(heat, model.keypoint_head.final_layer(feats[0]))


@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_semantics(groups: int) -> None:
    n, c, h, w = 3, 8 * groups, 2, 3
    x = torch.randn(n, c, h, w)
    out = ChannelShuffle(groups)(x)
    per = c // groups
    # output channel i*groups + k comes from input channel k*(c/groups) + i
    expected = torch.stack([x[:, k * per + i] for i in range(per) for k in range(groups)], dim=1)
    assert torch.equal(out, expected)
    assert not torch.equal(out, x)


def _fuse_module() -> nn.Module:
    module = LiteHRModule([8, 16, 32], num_blocks=1, reduce_ratio=8, module_type="LITE")
    return _init(module)


def _init(module: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.5)
    return module.eval()


def _branches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(2, c, 16 // 2**i, 12 // 2**i, generator=gen) for i, c in enumerate([8, 16, 32])]


def _expected_fuse(fuse: nn.ModuleList, x: list[torch.Tensor], inplace: bool) -> list[torch.Tensor]:
    """The documented closed form, computed with fresh tensors and no in-place arithmetic."""
    n = len(x)
    y0 = 2 * x[0] + sum(fuse[0][j](x[j].clone()) for j in range(1, n))
    first = torch.relu(y0) if inplace else y0
    outs = [torch.relu(y0)]
    for i in range(1, n):
        rest = sum(fuse[i][j](x[j].clone()) for j in range(1, n) if j != i)
        outs.append(torch.relu(2 * fuse[i][0](first.clone()) + x[i] + rest))
    return outs


@pytest.mark.parametrize("inplace", [False, True])
def test_fuse_loop_quirk(inplace: bool) -> None:
    module = _fuse_module()
    fuse = module.fuse_layers
    x = _branches()
    with torch.no_grad():
        got = fuse_forward(fuse, [t.clone() for t in x], nn.ReLU(inplace=inplace))
        want = _expected_fuse(fuse, x, inplace)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        # the quirk matters: a plain HRNet fuse (identity counted once) gives different numbers
        plain0 = torch.relu(x[0] + sum(fuse[0][j](x[j]) for j in range(1, 3)))
        assert (got[0] - plain0).abs().max() > 0.1
        other = _expected_fuse(fuse, x, not inplace)
        assert (got[1] - other[1]).abs().max() > 1e-3


def test_lite_module_uses_not_inplace_relu_and_quirk() -> None:
    module = _fuse_module()
    assert isinstance(module.relu, nn.ReLU) and not module.relu.inplace
    x = _branches()
    with torch.no_grad():
        got = module([t.clone() for t in x])
        blocks = module.layers([t.clone() for t in x])
        want = _expected_fuse(module.fuse_layers, blocks, inplace=False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_transition_and_fuse_layout() -> None:
    for inplace in (False, True):
        t = make_transition([32], [40, 80], inplace_relu=inplace)
        assert isinstance(t[0][4], nn.ReLU) and t[0][4].inplace == inplace
        assert t[0][0].stride == (1, 1) and t[1][0][0].stride == (2, 2)
        assert list(t.state_dict()) == list(make_transition([32], [40, 80], not inplace).state_dict())
    t = make_transition([40, 80], [40, 80, 160], inplace_relu=False)
    assert t[0] is None and t[1] is None and len(t[2]) == 1
    f = make_fuse_layers([8, 16, 32, 64], inplace_relu=True)
    assert f[1][1] is None and isinstance(f[0][3][2], nn.Upsample) and f[0][3][2].scale_factor == 8
    assert len(f[3][0]) == 3 and isinstance(f[3][0][0][4], nn.ReLU) and len(f[3][0][2]) == 4


def test_iterative_head_formula() -> None:
    head = _init(IterativeHead([8, 16, 32]))
    assert [p.pointwise_conv.conv.out_channels for p in head.projects] == [16, 8, 8]
    x = _branches()
    with torch.no_grad():
        got = head(x)
        s2 = head.projects[0](x[2])
        up = nn.functional.interpolate(s2, size=(8, 6), mode="bilinear", align_corners=True)
        s1 = head.projects[1](x[1] + up)
        up = nn.functional.interpolate(s1, size=(16, 12), mode="bilinear", align_corners=True)
        s0 = head.projects[2](x[0] + up)
    for g, w in zip(got, [s0, s1, s2], strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", NAMES)
def test_astronaut_output_scale(name: str) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    spec = get_spec(name)
    img = Image.fromarray(skimage_data.astronaut()).resize((96, 128), Image.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    x = torch.from_numpy(arr.transpose(2, 0, 1)[None].astype(np.float32))
    model = build_model(name)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (1, 17, 32, 24)
    assert torch.isfinite(y).all()
    assert 0.05 <= y.std().item() <= 20
    # the MPII variant has 16 heatmaps (shape only: meta device)
    with torch.no_grad():
        assert tuple(_meta_model(name, "mpii")(x.to("meta")).shape) == (1, 16, 32, 24)
