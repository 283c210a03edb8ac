"""Dite-HRNet (Li et al., IJCAI-ECAI 2022), the top-down pose networks dite_hrnet_18 / dite_hrnet_30.

Follows upstream ZiyiZhang27/Dite-HRNet `models/backbones/ditehrnet.py` (class `DiteHRNet`) and its
configs `configs/top_down/dite_hrnet/{coco,mpii}/ditehrnet_{18,30}_*.py` (mmpose 0.x `TopDown` with a
`TopdownHeatmapSimpleHead` of one 1x1 conv). Parameter names follow upstream, so an upstream checkpoint
loads with strict=True into the built network (children `backbone` and `keypoint_head.final_layer`).

Upstream quirks reproduced on purpose (the official checkpoints were trained with them):
- `KernelAttention` ends in a Sigmoid (not a softmax): the K kernel weights do not sum to 1.
- `KernelAggregation` folds the batch into channels and runs one conv with `groups = g * N`, so the
  per-sample kernel is the attention-weighted sum of K stacked kernels (bias None as used).
- `DenseContextModeling` pools branch i to the last branch's size (MH, MW) by a raw reinterpretation:
  view(N, C, H*W) -> view(N, MH*MW, C, L) with L = H*W / (MH*MW); the mask is softmaxed over all H*W
  positions and cut into MH*MW chunks of L consecutive raster positions. Channels and positions mix;
  the chunks do not sum to 1. Its last `conv_mask` (last branch) exists in the state_dict but is
  never used; the last branch enters the channel attention unpooled.
- The module fuse loop starts at j = 0 with in-place adds and an in-place ReLU (shared with
  Lite-HRNet's `fuse_forward`), so out_0 = ReLU(Y0) with Y0 = 2*x0 + sum_{j>=1} F_0j(x_j), and for
  i >= 1: out_i = ReLU(2*F_i0(ReLU(Y0)) + x_i + sum_{j not in {0, i}} F_ij(x_j)).

Transitions, fuse layers and IterativeHead are Lite-HRNet's (hrdeploy.models.lite_hrnet), with
`nn.ReLU(inplace=True)` wherever Dite-HRNet uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrdeploy.models.common import ChannelShuffle
from hrdeploy.models.lite_hrnet import (
    IterativeHead,
    TopDownPoseNet,
    fuse_forward,
    make_fuse_layers,
    make_transition,
    transition_forward,
)
from hrdeploy.registry import Published, register_model

UPSTREAM = "ZiyiZhang27/Dite-HRNet models/backbones/ditehrnet.py"

# Hard-coded in upstream code (not in the configs), indexed by branch (or by num_branches - 2 for DCM).
DCM_REDUCTION = (8, 8, 8)
SPLIT_NUM_GROUPS = (1, 1, 2, 4)
SPLIT_NUM_KERNELS = (4, 4, 2, 1)
GCM_REDUCTION = (4, 4, 8, 8)
STEM_GCM_REDUCTION = 4
STEM_NUM_KERNELS = 4

STAGE_CHANNELS = ((40, 80), (40, 80, 160), (40, 80, 160, 320))


# --------------------------------------------------------------------------------------------------
# Dynamic kernels
# --------------------------------------------------------------------------------------------------


class KernelAttention(nn.Module):
    """Per-sample weights of the K kernels: GAP -> 1x1 conv -> BN -> ReLU -> 1x1 conv (bias) -> Sigmoid.

    Middle width is channels // 4 (num_kernels when channels == 3, as upstream). Output [N, K].
    """

    def __init__(self, channels: int, num_kernels: int = 4, reduction: int = 4) -> None:
        super().__init__()
        mid_channels = channels // reduction if channels != 3 else num_kernels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(channels, mid_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, num_kernels, kernel_size=1, bias=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(self.avg_pool(x))))
        x = self.conv2(x).view(x.shape[0], -1)
        return self.sigmoid(x)


class KernelAggregation(nn.Module):
    """K stacked kernels `weight` [K, out, in/groups, k, k], aggregated per sample by `attention` [N, K].

    Upstream arithmetic: the batch is folded into channels (x.view(1, N*C, H, W)), the per-sample kernels
    attention @ weight.view(K, -1) are stacked to [N*out, in/groups, k, k], and one conv runs with
    groups = groups * N. Bias is None (every upstream use passes bias=False).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        num_kernels: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.num_kernels = num_kernels
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias = None
        for i in range(num_kernels):
            nn.init.kaiming_uniform_(self.weight[i])

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        batch_size, _, height, width = x.size()
        x = x.contiguous().view(1, batch_size * self.in_channels, height, width)
        weight = self.weight.contiguous().view(self.num_kernels, -1)
        weight = (
            torch.mm(attention, weight)
            .contiguous()
            .view(batch_size * self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)
        )
        x = F.conv2d(
            x,
            weight=weight,
            bias=None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups * batch_size,
        )
        return x.contiguous().view(batch_size, self.out_channels, x.shape[-2], x.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, num_kernels={self.num_kernels}"
        )


class DynamicKernelAggregation(nn.Module):
    """A conv whose kernel is a per-sample mix of K kernels: `.attention` then `.aggregation`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        num_kernels: int = 4,
    ) -> None:
        super().__init__()
        assert in_channels % groups == 0
        self.attention = KernelAttention(in_channels, num_kernels=num_kernels)
        self.aggregation = KernelAggregation(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(x, self.attention(x))


class ConvBN(nn.Module):
    """Upstream ConvBN / ConvBNReLU / Conv1x1BN / Conv1x1BNReLU: `.conv` (plain Conv2d without bias, or a
    DynamicKernelAggregation when num_kernels > 1), `.bn`, and an in-place `.relu` when `relu`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        groups: int = 1,
        num_kernels: int = 1,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if num_kernels > 1:
            self.conv: nn.Module = DynamicKernelAggregation(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, num_kernels=num_kernels
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.relu is not None:
            x = self.relu(x)
        return x


def conv1x1_bn(in_channels: int, out_channels: int, num_kernels: int = 1, relu: bool = False) -> ConvBN:
    """Upstream Conv1x1BN(ReLU): a 1x1 ConvBN without padding."""
    return ConvBN(in_channels, out_channels, 1, 1, 0, num_kernels=num_kernels, relu=relu)


def split_channels(channels: int, num_groups: int) -> list[int]:
    """channels // g per group, the remainder added to the first group (upstream `_split_channels`)."""
    split = [channels // num_groups] * num_groups
    split[0] += channels - sum(split)
    return split


class DynamicSplitConvolution(nn.Module):
    """Split channels into g groups; group i is a depthwise ConvBN with kernel 2i+3, padding i+1 (dynamic
    with K kernels when K > 1); concat and channel-shuffle by g when g > 1."""

    def __init__(self, channels: int, stride: int, num_groups: int, num_kernels: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_kernels = num_kernels
        self.split_channels = split_channels(channels, num_groups)
        self.conv = nn.ModuleList(
            ConvBN(c, c, kernel_size=2 * i + 3, stride=stride, padding=i + 1, groups=c, num_kernels=num_kernels)
            for i, c in enumerate(self.split_channels)
        )
        self.shuffle = ChannelShuffle(num_groups) if num_groups > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle is None:
            return self.conv[0](x)
        parts = torch.split(x, self.split_channels, dim=1)
        x = torch.cat([conv(t) for conv, t in zip(self.conv, parts, strict=True)], dim=1)
        return self.shuffle(x)


# --------------------------------------------------------------------------------------------------
# Context modelling
# --------------------------------------------------------------------------------------------------


def _channel_attention(channels: int, mid_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, mid_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, channels, kernel_size=1, bias=True),
        nn.Sigmoid(),
    )


class GlobalContextModeling(nn.Module):
    """GC block: softmax(conv_mask(x)) over H*W pools x to [N, C, 1, 1]; channel attention
    [1x1 C->C//r, BN, ReLU, 1x1 (bias), Sigmoid]; output bn(x * attention)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.reduction = reduction
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1, bias=True)
        self.softmax = nn.Softmax(dim=2)
        self.channel_attention = _channel_attention(channels, channels // reduction)
        self.bn = nn.BatchNorm2d(channels)

    def global_spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.size()
        x_m = x.view(batch, channel, height * width).unsqueeze(1)  # [N, 1, C, HW]
        mask = self.softmax(self.conv_mask(x).view(batch, 1, height * width)).unsqueeze(-1)  # [N, 1, HW, 1]
        return torch.matmul(x_m, mask).permute(0, 2, 1, 3)  # [N, C, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x * self.channel_attention(self.global_spatial_pool(x)))


class DenseContextModeling(nn.Module):
    """Cross-branch context: every branch but the last is pooled to the last branch's size by the raw
    view/softmax pooling (see the module docstring), concatenated with the last branch, channel attention
    [1x1 S->S//r, BN, ReLU, 1x1 (bias), Sigmoid], split, nearest-upsampled back, multiplied in.

    `conv_mask` holds one conv per branch, the last one unused (upstream keeps it in the state_dict).
    """

    def __init__(self, channels: list[int], reduction: int = 8) -> None:
        super().__init__()
        self.channels = list(channels)
        self.reduction = reduction
        total = sum(channels)
        self.conv_mask = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=True) for c in channels)
        self.softmax = nn.Softmax(dim=2)
        self.channel_attention = _channel_attention(total, total // reduction)

    def global_spatial_pool(self, x: torch.Tensor, mini_size: tuple[int, int], i: int) -> torch.Tensor:
        batch, channel, height, width = x.size()
        mini_height, mini_width = mini_size
        m = mini_height * mini_width
        chunk = (height * width) // m
        x_m = x.view(batch, channel, height * width).view(batch, m, channel, chunk)  # raw reinterpretation
        mask = self.softmax(self.conv_mask[i](x).view(batch, 1, height * width))  # softmax over all H*W
        mask = mask.view(batch, m, chunk).unsqueeze(-1)  # [N, M, L, 1]: chunks of consecutive positions
        out = torch.matmul(x_m, mask).permute(0, 2, 1, 3)  # [N, C, M, 1]
        return out.view(batch, channel, mini_height, mini_width)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        mini_size = x[-1].size()[-2:]
        out = [self.global_spatial_pool(s, mini_size, i) for i, s in enumerate(x[:-1])] + [x[-1]]
        att = torch.split(self.channel_attention(torch.cat(out, dim=1)), self.channels, dim=1)
        return [s * F.interpolate(a, size=s.size()[-2:], mode="nearest") for s, a in zip(x, att, strict=True)]


# --------------------------------------------------------------------------------------------------
# Blocks, stem, module, backbone
# --------------------------------------------------------------------------------------------------


class DynamicMultiScaleContextBlock(nn.Module):
    """Upstream DynamicMultiScaleContextBlock (DMC/DGC): split each branch in halves; second halves ->
    DCM -> per-branch DynamicSplitConvolution (`conv`) -> per-branch GCM (`gcm`); concat; shuffle by 2."""

    def __init__(self, in_channels: list[int], stride: int = 1) -> None:
        super().__init__()
        branch_channels = [c // 2 for c in in_channels]
        self.dcm = DenseContextModeling(branch_channels, reduction=DCM_REDUCTION[len(in_channels) - 2])
        self.conv = nn.ModuleList(
            DynamicSplitConvolution(c, stride, SPLIT_NUM_GROUPS[b], SPLIT_NUM_KERNELS[b])
            for b, c in enumerate(branch_channels)
        )
        self.gcm = nn.ModuleList(GlobalContextModeling(c, GCM_REDUCTION[b]) for b, c in enumerate(branch_channels))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        halves = [s.chunk(2, dim=1) for s in x]
        x2 = self.dcm([h[1] for h in halves])
        x2 = [gcm(conv(s)) for s, conv, gcm in zip(x2, self.conv, self.gcm, strict=True)]
        return [self.shuffle(torch.cat([h[0], s2], dim=1)) for h, s2 in zip(halves, x2, strict=True)]


class Stem(nn.Module):
    """conv1 3x3 s2 ConvBNReLU; split in halves; branch1 [dw3x3 s2 (K=4), GCM, 1x1 ReLU (K=4)];
    branch2 [dw3x3 (K=4), GCM, 1x1 -> c/4 ReLU (K=4), 1x1 -> c (K=4), dw3x3 s2 BN ReLU (K=4)];
    concat (branch1 first) and shuffle by 2. Output `out_channels` at 1/4."""

    def __init__(self, in_channels: int, stem_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        c = stem_channels // 2
        mid = c // 4
        k = STEM_NUM_KERNELS
        self.conv1 = ConvBN(in_channels, stem_channels, 3, 2, 1, relu=True)
        self.branch1 = nn.Sequential(
            ConvBN(c, c, 3, 2, 1, groups=c, num_kernels=k),
            GlobalContextModeling(c, STEM_GCM_REDUCTION),
            conv1x1_bn(c, c, num_kernels=k, relu=True),
        )
        self.branch2 = nn.Sequential(
            ConvBN(c, c, 3, 1, 1, groups=c, num_kernels=k),
            GlobalContextModeling(c, STEM_GCM_REDUCTION),
            conv1x1_bn(c, mid, num_kernels=k, relu=True),
            conv1x1_bn(mid, c, num_kernels=k),
            ConvBN(c, c, 3, 2, 1, groups=c, num_kernels=k, relu=True),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        return self.shuffle(torch.cat((self.branch1(x1), self.branch2(x2)), dim=1))


class DiteHRModule(nn.Module):
    """`num_blocks` DynamicMultiScaleContextBlocks, then Lite-HRNet fuse layers with Dite's in-place ReLUs."""

    def __init__(self, num_branches: int, num_blocks: int, in_channels: list[int]) -> None:
        super().__init__()
        if num_branches != len(in_channels):
            raise ValueError(f"num_branches ({num_branches}) != len(in_channels) ({len(in_channels)})")
        self.in_channels = list(in_channels)
        self.num_branches = num_branches
        self.layers = nn.Sequential(*(DynamicMultiScaleContextBlock(self.in_channels) for _ in range(num_blocks)))
        self.fuse_layers = make_fuse_layers(self.in_channels, inplace_relu=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return fuse_forward(self.fuse_layers, self.layers(x), self.relu)


class DiteHRNet(nn.Module):
    """Backbone: stem, 3 x (transition{i}, stage{i}), IterativeHead `head_layer`; returns [x at 1/4]."""

    def __init__(
        self,
        num_modules: tuple[int, int, int],
        num_blocks: tuple[int, int, int] = (2, 2, 2),
        num_channels: tuple[tuple[int, ...], ...] = STAGE_CHANNELS,
        in_channels: int = 3,
        stem_channels: int = 32,
        stem_out_channels: int = 32,
    ) -> None:
        super().__init__()
        self.stem = Stem(in_channels, stem_channels, stem_out_channels)
        self.num_stages = len(num_modules)
        last = [stem_out_channels]
        for i, (n_mod, n_blk, chans) in enumerate(zip(num_modules, num_blocks, num_channels, strict=True)):
            chans = list(chans)
            setattr(self, f"transition{i}", make_transition(last, chans, inplace_relu=True))
            setattr(self, f"stage{i}", nn.Sequential(*(DiteHRModule(len(chans), n_blk, chans) for _ in range(n_mod))))
            last = chans
        self.head_layer = IterativeHead(last)

    def refine_seeded_init(self, model: nn.Module, gen: torch.Generator, calib_size: tuple[int, int]) -> None:
        """Hook of hrdeploy.models.init.init_weights: see `condition_seeded_init`."""
        condition_seeded_init(model, gen, calib_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = [self.stem(x)]
        for i in range(self.num_stages):
            y = transition_forward(getattr(self, f"transition{i}"), y)
            y = getattr(self, f"stage{i}")(y)
        return [self.head_layer(y)[0]]


@torch.no_grad()
def condition_seeded_init(
    model: nn.Module,
    gen: torch.Generator,
    calib_size: tuple[int, int] = (128, 128),
    logit_scale: float = 0.1,
    batches: int = 4,
) -> None:
    """Make a seeded random Dite-HRNet numerically well-conditioned in fp32 (never used for checkpoints).

    With generic Kaiming weights, Dite-HRNet is chaotic: its sigmoid gates (KernelAttention, the DCM/GCM
    channel attentions) and its softmax context masks (`conv_mask`, applied to the un-normalised fused
    stream whose scale doubles per module through the fuse quirk) have logits of tens to thousands, and
    each module amplifies a relative perturbation ~4x, so fp32 vs fp64 of the *same* network differ by
    100% at the output and no parity test could pass. Here, from `gen`:
    - the last conv before every sigmoid gate is scaled by `logit_scale`,
    - every context mask conv is rescaled on its first calibration call so its logits have std
      `logit_scale` (a trained network's masks are smooth too),
    - BN statistics are re-measured in train mode on one batch of `batches` photo-like noise pairs (the
      pooled [N, C, 1, 1] attention BNs need more samples than the generic calibration's batches of 2).
    Called by hrdeploy.models.init.init_weights through `DiteHRNet.refine_seeded_init`.
    """
    from hrdeploy.models.init import photo_like_noise

    masks: list[nn.Conv2d] = []
    for m in model.modules():
        if isinstance(m, KernelAttention):
            m.conv2.weight.mul_(logit_scale)
        elif isinstance(m, GlobalContextModeling):
            m.channel_attention[3].weight.mul_(logit_scale)
            masks.append(m.conv_mask)
        elif isinstance(m, DenseContextModeling):
            m.channel_attention[3].weight.mul_(logit_scale)
            masks.extend(m.conv_mask)

    def unit_logits(conv: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        scale = logit_scale / max(float(out.std()), 1e-12)
        conv.weight.mul_(scale)
        conv.bias.mul_(scale)
        handles.pop(id(conv)).remove()
        return out * scale

    handles = {id(c): c.register_forward_hook(unit_logits) for c in masks}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        model(torch.cat([photo_like_noise(calib_size, gen) for _ in range(batches)]))
    finally:
        for h in handles.values():  # DCM's last conv_mask is never called
            h.remove()
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def build_dite_hrnet(num_modules: tuple[int, int, int], num_keypoints: int) -> TopDownPoseNet:
    """mmpose 0.x TopDown layout: `backbone` (DiteHRNet) + `keypoint_head.final_layer` (1x1 40->K, bias)."""
    return TopDownPoseNet(DiteHRNet(num_modules), STAGE_CHANNELS[-1][0], num_keypoints)


# --------------------------------------------------------------------------------------------------
# Registered models
# --------------------------------------------------------------------------------------------------

_README = "ZiyiZhang27/Dite-HRNet README.md"


def _published(params: float, macs: tuple[float, float, float], metrics: tuple[str, str, str]) -> tuple:
    """COCO 256x192, COCO 384x288, MPII 256x256 rows of the README (its FLOPs are MACs)."""
    sizes = ((256, 192), (384, 288), (256, 256))
    return tuple(Published(s, params, m, t, _README) for s, m, t in zip(sizes, macs, metrics, strict=True))


_COMMON = dict(
    family="dite_hrnet",
    task="pose_topdown",
    default_input_size=(256, 192),
    datasets=("coco", "mpii"),
    input_sizes={"mpii": (256, 256)},
    stride=32,
    output_names=("heatmaps",),
    output_strides=(4,),
    upstream=UPSTREAM,
)


@register_model(
    name="dite_hrnet_18",
    published=_published(
        1.1e6, (209.8e6, 471.8e6, 279.5e6), ("COCO val AP .659", "COCO val AP .690", "MPII val PCKh@0.5 .870")
    ),
    **_COMMON,
)
def dite_hrnet_18(num_outputs: int) -> TopDownPoseNet:
    """Dite-HRNet-18: num_modules (2, 4, 2)."""
    return build_dite_hrnet((2, 4, 2), num_outputs)


@register_model(
    name="dite_hrnet_30",
    published=_published(
        1.8e6, (329.8e6, 741.7e6, 439.5e6), ("COCO val AP .683", "COCO val AP .715", "MPII val PCKh@0.5 .876")
    ),
    **_COMMON,
)
def dite_hrnet_30(num_outputs: int) -> TopDownPoseNet:
    """Dite-HRNet-30: num_modules (3, 8, 3)."""
    return build_dite_hrnet((3, 8, 3), num_outputs)
