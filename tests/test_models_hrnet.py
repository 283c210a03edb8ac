"""HRNet, HigherHRNet, HRNetV2 (segmentation) and HRNetV2p reference networks.

Counts run on the meta device (no arithmetic); output shapes and the fuse formula run real compute at
small sizes.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrdeploy import build_model
from hrdeploy.counting import count_macs, count_params
from hrdeploy.models.hrnet import HighResolutionModule
from hrdeploy.registry import get_spec

POSE = ["hrnet_w32", "hrnet_w48"]
HIGHER = ["higher_hrnet_w32", "higher_hrnet_w48"]
SEG = ["hrnetv2_w18_small_v1", "hrnetv2_w18_small_v2", "hrnetv2_w48"]
ALL = POSE + HIGHER + SEG + ["hrnetv2p_w32"]


@functools.cache
def meta_model(name: str, dataset: str | None = None) -> nn.Module:
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.builder(spec.num_outputs(dataset)).eval()


def materialize(module: nn.Module, seed: int) -> nn.Module:
    """A real-memory copy of a meta-device module with seeded random weights and BN statistics."""
    module = copy.deepcopy(module).to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return module


# ---------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "name, params",
    [
        ("hrnet_w32", 28_536_113),
        ("hrnet_w48", 63_595_745),
        ("higher_hrnet_w32", 28_645_331),
        ("higher_hrnet_w48", 63_827_139),
    ],
)
def test_param_counts_match_upstream_exactly(name: str, params: int) -> None:
    assert count_params(meta_model(name)) == params


@pytest.mark.parametrize(
    "name, size, gmacs",
    [
        ("hrnet_w32", (256, 192), 7.645),
        ("hrnet_w32", (384, 288), 17.201),
        ("hrnet_w48", (256, 192), 15.692),
        ("hrnet_w48", (384, 288), 35.307),
        ("higher_hrnet_w32", (512, 512), 46.203),
        ("higher_hrnet_w32", (640, 640), 72.193),
        ("higher_hrnet_w48", (512, 512), 95.660),
        ("higher_hrnet_w48", (640, 640), 149.469),
    ],
)
def test_macs_within_one_percent_of_upstream(name: str, size: tuple[int, int], gmacs: float) -> None:
    macs = count_macs(meta_model(name), size)
    assert macs == pytest.approx(gmacs * 1e9, rel=0.01)


@pytest.mark.parametrize("name", SEG)
def test_seg_params_match_published_figure(name: str) -> None:
    published = get_spec(name).published[0].params
    params = count_params(meta_model(name))
    # The README truncates to 0.1M (65,859,379 is listed as 65.8M, 1,540,819 as 1.5M, 3,939,579 as 3.9M).
    assert published <= params < published + 0.1e6


def test_mpii_variant_has_16_heatmaps() -> None:
    spec = get_spec("hrnet_w32")
    assert spec.input_size("mpii") == (256, 256)
    model = meta_model("hrnet_w32", "mpii")
    assert model.final_layer.out_channels == 16
    assert count_params(model) == 28_536_113 - 32 - 1  # one fewer 1x1 filter (32 weights + bias)


# ------------------------------------------------------------------------------------- output shapes


@pytest.mark.parametrize("name", HIGHER)
@pytest.mark.parametrize("side", [512, 640])
def test_higher_hrnet_outputs_quarter_and_half_resolution(name: str, side: int) -> None:
    model = meta_model(name)
    with torch.no_grad():
        tags, highres = model(torch.empty(1, 3, side, side, device="meta"))
    assert tuple(tags.shape) == (1, 34, side // 4, side // 4)
    assert tuple(highres.shape) == (1, 17, side // 2, side // 2)


# ------------------------------------------------------------------------------ the fuse formula quirks


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding)


def _fuse_reference(module: HighResolutionModule, xs: list[torch.Tensor], mode: str) -> list[torch.Tensor]:
    """HRNet's exchange unit written from the paper's formula: out_i = ReLU(sum_j f_ij(b_j))."""
    b = [branch(x) for branch, x in zip(module.branches, xs, strict=True)]
    outs = []
    for i in range(len(module.fuse_layers)):
        total = torch.zeros_like(b[i])
        for j, bj in enumerate(b):
            layer = module.fuse_layers[i][j]
            if j == i:
                term = bj
            elif j > i:
                term = _bn(_conv(bj, layer[0]), layer[1])
                if mode == "nearest":
                    f = 2 ** (j - i)
                    term = term.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)
                else:
                    term = F.interpolate(term, size=b[i].shape[-2:], mode="bilinear", align_corners=False)
            else:
                term = bj
                for k, step in enumerate(layer):
                    term = _bn(_conv(term, step[0]), step[1])
                    if k < i - j - 1:
                        term = term.clamp(min=0)
            total = total + term
        outs.append(total.clamp(min=0))
    return outs


def _branch_inputs(module: HighResolutionModule, h: int, w: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [
        torch.randn(2, c, h // 2**i, w // 2**i, generator=gen) for i, c in enumerate(module.num_inchannels)
    ]


def test_pose_stage4_last_module_is_single_scale_and_matches_formula() -> None:
    model = meta_model("hrnet_w32")
    keys = set(model.state_dict())
    assert len(model.stage4) == 3
    assert len(model.stage4[2].fuse_layers) == 1
    assert any(k.startswith("stage4.2.fuse_layers.0.") for k in keys)
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in keys)
    assert any(k.startswith("stage4.1.fuse_layers.3.") for k in keys)  # earlier modules stay multi-scale
    assert len(model.stage4[1].fuse_layers) == 4

    gen = torch.Generator().manual_seed(1)
    for index, n_out in ((2, 1), (1, 4)):
        module = materialize(model.stage4[index], seed=index)
        xs = _branch_inputs(module, 32, 24, gen)
        with torch.no_grad():
            out = module([x.clone() for x in xs])
            ref = _fuse_reference(module, xs, "nearest")
        assert len(out) == n_out
        assert out[0].shape == (2, 32, 32, 24)
        for o, r in zip(out, ref, strict=True):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_seg_fuse_uses_bilinear_without_upsample_module() -> None:
    model = meta_model("hrnetv2_w18_small_v1")
    assert not any(isinstance(m, nn.Upsample) for m in model.modules())
    module = materialize(model.stage4[0], seed=3)
    assert len(module.fuse_layers) == 4
    assert len(module.fuse_layers[0][1]) == 2  # conv + BN only; interpolation happens in forward
    xs = _branch_inputs(module, 32, 64, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = module([x.clone() for x in xs])
        ref = _fuse_reference(module, xs, "bilinear")
        nearest = _fuse_reference(module, xs, "nearest")
    for o, r in zip(out, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    assert (out[0] - nearest[0]).abs().max() > 1e-2  # and the bilinear choice matters


def test_hrfpn_neck_matches_mmdet_formula() -> None:
    neck = materialize(meta_model("hrnetv2p_w32").neck, seed=4)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, c, 16 // 2**i, 16 // 2**i, generator=gen) for i, c in enumerate((32, 64, 128, 256))]
    with torch.no_grad():
        outs = neck(xs)
        ups = [F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) for x in xs[1:]]
        red = neck.reduction_conv.conv
        reduced = F.conv2d(torch.cat([xs[0], *ups], 1), red.weight, red.bias)
    assert [tuple(o.shape) for o in outs] == [(2, 256, 16 // 2**i, 16 // 2**i) for i in range(5)]
    for i, out in enumerate(outs):
        k = 2**i  # level i: mean over k x k blocks, then that level's own 3x3 conv
        level = reduced.reshape(2, 256, 16 // k, k, 16 // k, k).mean(dim=(3, 5))
        conv = neck.fpn_convs[i].conv
        ref = F.conv2d(level, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- state-dict keys

KEYS = {
    "hrnet_w32": {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_mean": (64,),
        "bn2.weight": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_var": (64 * 4,),
        "layer1.3.conv3.weight": (256, 64, 1, 1),
        "transition1.0.0.weight": (32, 256, 3, 3),
        "transition1.0.1.weight": (32,),
        "transition1.1.0.0.weight": (64, 256, 3, 3),
        "transition2.2.0.0.weight": (128, 64, 3, 3),
        "transition3.3.0.0.weight": (256, 128, 3, 3),
        "stage2.0.branches.1.3.conv2.weight": (64, 64, 3, 3),
        "stage3.3.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3),
        "stage4.1.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3),
        "stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),
        "stage4.2.fuse_layers.0.3.1.running_var": (32,),
        "final_layer.weight": (17, 32, 1, 1),
        "final_layer.bias": (17,),
    },
    "higher_hrnet_w32": {
        "transition1.0.0.weight": (32, 256, 3, 3),
        "final_layers.0.weight": (34, 32, 1, 1),
        "final_layers.1.weight": (17, 32, 1, 1),
        "final_layers.1.bias": (17,),
        "deconv_layers.0.0.0.weight": (66, 32, 4, 4),
        "deconv_layers.0.0.1.running_mean": (32,),
        "deconv_layers.0.1.0.conv1.weight": (32, 32, 3, 3),
        "deconv_layers.0.4.0.bn2.weight": (32,),
    },
    "higher_hrnet_w48": {
        "final_layers.0.weight": (34, 48, 1, 1),
        "deconv_layers.0.0.0.weight": (82, 48, 4, 4),
        "deconv_layers.0.4.0.conv2.weight": (48, 48, 3, 3),
    },
    "hrnetv2_w48": {
        "stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
        "stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
        "last_layer.0.weight": (720, 720, 1, 1),
        "last_layer.0.bias": (720,),
        "last_layer.1.running_mean": (720,),
        "last_layer.3.weight": (19, 720, 1, 1),
        "last_layer.3.bias": (19,),
    },
    "hrnetv2_w18_small_v1": {
        "layer1.0.conv1.weight": (32, 64, 1, 1),
        "layer1.0.downsample.0.weight": (128, 64, 1, 1),
        "transition1.0.0.weight": (16, 128, 3, 3),
        "last_layer.0.weight": (240, 240, 1, 1),
    },
    "hrnetv2p_w32": {
        "backbone.conv1.weight": (64, 3, 3, 3),
        "backbone.stage4.2.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3),
        "neck.reduction_conv.conv.weight": (256, 480, 1, 1),
        "neck.reduction_conv.conv.bias": (256,),
        "neck.fpn_convs.4.conv.weight": (256, 256, 3, 3),
        "neck.fpn_convs.4.conv.bias": (256,),
    },
}

ABSENT = {
    # (the brief's example `stage4.2.fuse_layers.0.3.2.0.weight` does not exist upstream: fuse 0 <- 3 is an
    # upsampling path, conv .0 + BN .1 + parameter-free Upsample .2)
    "hrnet_w32": [
        "stage4.2.fuse_layers.1.0.0.weight",
        "stage4.2.fuse_layers.0.3.2.0.weight",
        "final_layers.0.weight",
    ],
    "higher_hrnet_w32": ["final_layer.weight", "deconv_layers.1.0.0.weight", "final_layers.2.weight"],
    "higher_hrnet_w48": ["final_layer.weight"],
    "hrnetv2_w48": ["final_layer.weight", "last_layer.2.weight"],
    "hrnetv2_w18_small_v1": ["layer1.1.conv1.weight", "stage3.1.branches.0.0.conv1.weight"],
    "hrnetv2p_w32": ["conv1.weight", "neck.fpn_convs.5.conv.weight", "neck.reduction_conv.bn.weight"],
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_state_dict_key_families(name: str) -> None:
    sd = meta_model(name).state_dict()
    for key, shape in KEYS[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    for key in ABSENT[name]:
        assert key not in sd, key


@pytest.mark.parametrize("name", ALL)
def test_spec_fields(name: str) -> None:
    spec = get_spec(name)
    assert spec.upstream
    h, w = spec.default_input_size
    assert h % spec.stride == 0 and w % spec.stride == 0
    for pub in spec.published:
        assert pub.source and pub.params


# ------------------------------------------------------------------------- seeded build on a real image

SIZES = {
    "hrnet_w32": (128, 96),
    "hrnet_w48": (128, 96),
    "higher_hrnet_w32": (128, 96),
    "higher_hrnet_w48": (128, 96),
    "hrnetv2_w18_small_v1": (128, 256),
    "hrnetv2_w18_small_v2": (128, 256),
    "hrnetv2_w48": (128, 256),
    "hrnetv2p_w32": (128, 128),
}
EXPECTED_SHAPES = {
    "hrnet_w32": [(2, 17, 32, 24)],
    "hrnet_w48": [(2, 17, 32, 24)],
    "higher_hrnet_w32": [(2, 34, 32, 24), (2, 17, 64, 48)],
    "higher_hrnet_w48": [(2, 34, 32, 24), (2, 17, 64, 48)],
    "hrnetv2_w18_small_v1": [(2, 19, 32, 64)],
    "hrnetv2_w18_small_v2": [(2, 19, 32, 64)],
    "hrnetv2_w48": [(2, 19, 32, 64)],
    "hrnetv2p_w32": [(2, 256, 32 // 2**i, 32 // 2**i) for i in range(5)],
}


def astronaut(size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()[:, 48:464]).resize((size[1], size[0]), Image.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.mark.parametrize(
    "name",
    # the W48 builds (63-66M parameters, BN calibration passes) are the slowest of this file
    [pytest.param(n, marks=pytest.mark.slow) if "w48" in n else n for n in ALL],
)
def test_seeded_build_shapes_and_output_scale(name: str) -> None:
    """Real compute at batch 2 (the astronaut crop and unit Gaussian noise) of the seeded build."""
    spec = get_spec(name)
    model = build_model(name)
    size = SIZES[name]
    image = astronaut(size, spec.mean, spec.std)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(torch.cat([image, noise]))
    outs = out if isinstance(out, tuple) else (out,)
    assert [tuple(o.shape) for o in outs] == EXPECTED_SHAPES[name]
    assert len(outs) == len(spec.output_names)
    for o, stride in zip(outs, spec.output_strides, strict=True):
        assert (o.shape[2] * stride, o.shape[3] * stride) == size
        assert torch.isfinite(o).all()
        assert 0.05 <= o[1].std().item() <= 20.0
    image_std = [o[0].std().item() for o in outs]
    assert all(s >= 0.05 for s in image_std), image_std
    assert max(image_std) <= 20.0, image_std
