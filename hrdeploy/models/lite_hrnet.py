"""Lite-HRNet reference networks (Yu et al., CVPR 2021), top-down pose estimation.

Follows HRNet/Lite-HRNet `models/backbones/litehrnet.py` (backbone) and the configs under
`configs/top_down/lite_hrnet/` (TopDown + TopDownSimpleHead with `num_deconv_layers=0`, a single 1x1
`final_layer`). Module and parameter names match upstream, so an upstream / mmpose 0.x checkpoint
(`backbone.*`, `keypoint_head.*`) loads with `strict=True`.

Upstream quirks reproduced on purpose (they change the numbers a checkpoint was trained with):

* Fuse loop (`fuse_forward`): `y = out[0]` for output 0 and the loop over inputs starts at j = 0 with
  an in-place `y += ...`, so the first input is counted twice and `out[0]` itself is overwritten.
* Naive-18's released checkpoint has a 30-channel keypoint head (its config says 40).

Transitions, fuse layers and `IterativeHead` are exposed for Dite-HRNet, which reuses them with in-place
ReLUs (`inplace_relu=True`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrdeploy.models.common import ChannelShuffle, ConvModule
from hrdeploy.registry import Published, register_model

UPSTREAM = "HRNet/Lite-HRNet models/backbones/litehrnet.py"
_README = "HRNet/Lite-HRNet README.md (results on COCO val2017 / MPII val)"


# --------------------------------------------------------------------------------------------------
# Pieces shared with Dite-HRNet: transitions, fuse layers, the fuse loop, IterativeHead, the head.
# --------------------------------------------------------------------------------------------------


def _dw_pw(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    """[dw3x3 (stride), BN, pw1x1 c_in->c_out, BN]: plain Conv2d(bias=False) + BatchNorm2d."""
    return [
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(c_out),
    ]


def make_transition(
    num_channels_pre: list[int], num_channels_cur: list[int], inplace_relu: bool
) -> nn.ModuleList:
    """Transition between stages (upstream `LiteHRNet._make_transition_layer`).

    Entry i is None when branch i keeps its width; `[dw3x3 s1, BN, 1x1, BN, ReLU]` when an existing
    branch changes width; for a new branch a Sequential of steps `[dw3x3 s2, BN, 1x1, BN, ReLU]` fed
    from the last existing branch (keys `transition{s}.{i}.{step}.{0..3}`). Lite-HRNet uses
    `nn.ReLU()` (inplace_relu=False), Dite-HRNet `nn.ReLU(inplace=True)`; the output is the same.
    """
    n_pre, n_cur = len(num_channels_pre), len(num_channels_cur)
    layers: list[nn.Module | None] = []
    for i in range(n_cur):
        if i < n_pre:
            if num_channels_cur[i] != num_channels_pre[i]:
                layers.append(
                    nn.Sequential(
                        *_dw_pw(num_channels_pre[i], num_channels_cur[i], 1), nn.ReLU(inplace=inplace_relu)
                    )
                )
            else:
                layers.append(None)
        else:
            steps = []
            for j in range(i + 1 - n_pre):
                c_in = num_channels_pre[-1]
                c_out = num_channels_cur[i] if j == i - n_pre else c_in
                steps.append(nn.Sequential(*_dw_pw(c_in, c_out, 2), nn.ReLU(inplace=inplace_relu)))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def transition_forward(transition: nn.ModuleList, y_list: list[Tensor]) -> list[Tensor]:
    """Apply a transition: a new branch is fed from the last existing one, None passes through."""
    out = []
    for j, layer in enumerate(transition):
        if layer is None:
            out.append(y_list[j])
        else:
            out.append(layer(y_list[-1] if j >= len(y_list) else y_list[j]))
    return out


def make_fuse_layers(in_channels: list[int], inplace_relu: bool) -> nn.ModuleList:
    """Fuse layers of a multiscale-output module (upstream `LiteHRModule._make_fuse_layers`).

    `fuse[i][j]` maps branch j to branch i: j > i `[1x1 c_j->c_i, BN, Upsample(2^(j-i), nearest)]`;
    j == i None; j < i (i-j) steps `[dw3x3 s2, BN, 1x1 c_j->c_j, BN, ReLU]`, the last one
    `[dw3x3 s2, BN, 1x1 c_j->c_i, BN]` without ReLU. `inplace_relu` only sets the intermediate
    steps' ReLU flag (upstream Lite-HRNet already has `inplace=True` there); it never changes values.
    Returns an empty ModuleList for a single branch (upstream: None).
    """
    n = len(in_channels)
    if n == 1:
        return nn.ModuleList()
    fuse_layers = []
    for i in range(n):
        row: list[nn.Module | None] = []
        for j in range(n):
            if j > i:
                row.append(
                    nn.Sequential(
                        nn.Conv2d(in_channels[j], in_channels[i], 1, 1, 0, bias=False),
                        nn.BatchNorm2d(in_channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    )
                )
            elif j == i:
                row.append(None)
            else:
                steps = []
                for k in range(i - j):
                    if k == i - j - 1:
                        steps.append(nn.Sequential(*_dw_pw(in_channels[j], in_channels[i], 2)))
                    else:
                        steps.append(
                            nn.Sequential(
                                *_dw_pw(in_channels[j], in_channels[j], 2), nn.ReLU(inplace=inplace_relu)
                            )
                        )
                row.append(nn.Sequential(*steps))
        fuse_layers.append(nn.ModuleList(row))
    return nn.ModuleList(fuse_layers)


def fuse_forward(fuse_layers: nn.ModuleList, out: list[Tensor], relu: nn.Module) -> list[Tensor]:
    """The upstream fuse loop, verbatim in semantics (quirk included; upstream keeps it on purpose).

    For each output i: `y = out[0] if i == 0 else fuse[i][0](out[0])`, then for j = 0..n-1
    `y += out[j] if i == j else fuse[i][j](out[j])` (in place), then `relu(y)`.

    Because `y` *is* `out[0]` for i == 0, the in-place adds double x0 and overwrite `out[0]`:
      Y0 = 2*x0 + sum_{j>=1} F0j(xj),  out_0 = relu(Y0),
    and with a not-in-place relu (Lite-HRNet) for i >= 1
      out_i = ReLU(2*F_i0(Y0) + x_i + sum_{j not in {0, i}} F_ij(x_j)).
    With an in-place relu (Dite-HRNet) `out[0]` becomes ReLU(Y0) before the other rows, so
      out_i = ReLU(2*F_i0(ReLU(Y0)) + x_i + sum_{j not in {0, i}} F_ij(x_j)).
    `out` is modified in place (its first tensor), exactly as upstream.
    """
    n = len(out)
    out_fuse = []
    for i in range(len(fuse_layers)):
        y = out[0] if i == 0 else fuse_layers[i][0](out[0])
        for j in range(n):
            if i == j:
                y += out[j]
            else:
                y += fuse_layers[i][j](out[j])
        out_fuse.append(relu(y))
    return out_fuse


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv DepthwiseSeparableConvModule as IterativeHead uses it: dw3x3 BN (no act), pw1x1 BN ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, 3, 1, 1, groups=in_channels, act=None)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class IterativeHead(nn.Module):
    """Upstream `IterativeHead` (`backbone.head_layer`): coarse-to-fine aggregation of the branches.

    Branches are visited from the lowest resolution up (channels reversed, e.g. [320,160,80,40]);
    `projects[k]` maps reversed channel k to k+1 (the last keeps its width). Each step:
    s = s + bilinear(prev, size of s, align_corners=True) (not for the first), s = projects[k](s).
    Returns the list in the original (high-resolution first) order.
    """

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        rev = list(in_channels)[::-1]
        self.in_channels = rev
        n = len(rev)
        self.projects = nn.ModuleList(
            DepthwiseSeparableConvModule(rev[i], rev[i + 1] if i != n - 1 else rev[i]) for i in range(n)
        )

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        y = []
        last = None
        for i, s in enumerate(x[::-1]):
            if last is not None:
                s = s + F.interpolate(last, size=s.shape[-2:], mode="bilinear", align_corners=True)
            s = self.projects[i](s)
            y.append(s)
            last = s
        return y[::-1]


class SimpleHead(nn.Module):
    """mmpose 0.x TopDownSimpleHead with `num_deconv_layers=0`, `final_conv_kernel=1`: one 1x1 conv."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 1, 1, 0, bias=True)

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        if not isinstance(x, Tensor):
            x = x[0]
        return self.final_layer(x)


class TopDownPoseNet(nn.Module):
    """mmpose 0.x TopDown layout: `backbone` (returns a list, first = 1/4 map) + `keypoint_head`.

    forward(x [N,3,H,W]) -> heatmaps [N,K,H/4,W/4] (inference only: no target arguments).
    """

    def __init__(self, backbone: nn.Module, head_in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.keypoint_head = SimpleHead(head_in_channels, num_keypoints)

    def forward(self, x: Tensor) -> Tensor:
        return self.keypoint_head(self.backbone(x))


# --------------------------------------------------------------------------------------------------
# Lite-HRNet blocks
# --------------------------------------------------------------------------------------------------


class SpatialWeighting(nn.Module):
    """SE-style weighting: AdaptiveAvgPool2d(1), 1x1 c->int(c/ratio) (bias) ReLU, 1x1 back (bias) Sigmoid."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvModule(channels, int(channels / ratio), 1, norm=False, act="relu")
        self.conv2 = ConvModule(int(channels / ratio), channels, 1, norm=False, act="sigmoid")

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv2(self.conv1(self.global_avgpool(x)))


class CrossResolutionWeighting(nn.Module):
    """Cross-resolution weights (ratio 8 in every config).

    Every branch but the last is `F.adaptive_avg_pool2d`-ed to the last branch's size, all are
    concatenated (S = sum(channels) channels), `conv1` 1x1 S->int(S/ratio) BN ReLU, `conv2` back to S
    BN Sigmoid; split per branch; each branch times its weights upsampled by `F.interpolate(nearest)`.
    """

    def __init__(self, channels: list[int], ratio: int = 8) -> None:
        super().__init__()
        self.channels = list(channels)
        total = sum(channels)
        self.conv1 = ConvModule(total, int(total / ratio), 1, act="relu")
        self.conv2 = ConvModule(int(total / ratio), total, 1, act="sigmoid")

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        mini_size = x[-1].shape[-2:]
        out = [F.adaptive_avg_pool2d(s, mini_size) for s in x[:-1]] + [x[-1]]
        w = self.conv2(self.conv1(torch.cat(out, dim=1)))
        ws = torch.split(w, self.channels, dim=1)
        return [s * F.interpolate(a, size=s.shape[-2:], mode="nearest") for s, a in zip(x, ws, strict=True)]


class ConditionalChannelWeighting(nn.Module):
    """The LITE block: halves; second halves -> cross-resolution weighting -> dw3x3 BN -> spatial
    weighting; concat with the untouched first halves; channel shuffle by 2 (stride 1 as used)."""

    def __init__(self, in_channels: list[int], reduce_ratio: int) -> None:
        super().__init__()
        branch_channels = [c // 2 for c in in_channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(branch_channels, ratio=reduce_ratio)
        self.depthwise_convs = nn.ModuleList(
            ConvModule(c, c, 3, 1, 1, groups=c, act=None) for c in branch_channels
        )
        self.spatial_weighting = nn.ModuleList(SpatialWeighting(c, ratio=4) for c in branch_channels)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        halves = [s.chunk(2, dim=1) for s in x]
        x1 = [h[0] for h in halves]
        x2 = self.cross_resolution_weighting([h[1] for h in halves])
        x2 = [dw(s) for s, dw in zip(x2, self.depthwise_convs, strict=True)]
        x2 = [sw(s) for s, sw in zip(x2, self.spatial_weighting, strict=True)]
        return [self.shuffle(torch.cat([a, b], dim=1)) for a, b in zip(x1, x2, strict=True)]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit, stride 1 (the only form Lite-HRNet builds): halves, `branch2` =
    [1x1 BN ReLU, dw3x3 BN, 1x1 BN ReLU] on the second half, concat, shuffle by 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        if channels != 2 * c:
            raise ValueError(f"ShuffleUnit needs an even channel count, got {channels}")
        self.branch2 = nn.Sequential(
            ConvModule(c, c, 1),
            ConvModule(c, c, 3, 1, 1, groups=c, act=None),
            ConvModule(c, c, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.shuffle(torch.cat((x1, self.branch2(x2)), dim=1))


class Stem(nn.Module):
    """Stem (expand_ratio 1, stem = out = 32): conv1 3x3 s2; halves; x1 -> branch1 [dw3x3 s2 BN,
    1x1 BN ReLU]; x2 -> expand_conv 1x1 ReLU -> depthwise_conv 3x3 s2 -> linear_conv 1x1 ReLU;
    concat (branch1 first); shuffle by 2. Output `out_channels` at 1/4."""

    def __init__(self, in_channels: int, stem_channels: int, out_channels: int, expand_ratio: float) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = ConvModule(in_channels, stem_channels, 3, 2, 1)
        mid = int(round(stem_channels * expand_ratio))
        branch = stem_channels // 2
        inc = out_channels - branch if stem_channels == out_channels else out_channels - stem_channels
        self.branch1 = nn.Sequential(
            ConvModule(branch, branch, 3, 2, 1, groups=branch, act=None),
            ConvModule(branch, inc, 1),
        )
        self.expand_conv = ConvModule(branch, mid, 1)
        self.depthwise_conv = ConvModule(mid, mid, 3, 2, 1, groups=mid, act=None)
        self.linear_conv = ConvModule(mid, branch if stem_channels == out_channels else stem_channels, 1)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x1, x2 = x.chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return self.shuffle(torch.cat((self.branch1(x1), x2), dim=1))


class LiteHRModule(nn.Module):
    """One high-resolution module: per-branch blocks (LITE: `layers` = Sequential of
    ConditionalChannelWeighting; NAIVE: `layers` = ModuleList of per-branch ShuffleUnit Sequentials),
    then the multiscale fuse (`fuse_layers`, `relu = nn.ReLU()` not in place; see `fuse_forward`)."""

    def __init__(
        self, in_channels: list[int], num_blocks: int, reduce_ratio: int, module_type: str, with_fuse: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_branches = len(in_channels)
        self.module_type = module_type
        self.with_fuse = with_fuse
        if module_type == "LITE":
            self.layers: nn.Module = nn.Sequential(
                *(ConditionalChannelWeighting(self.in_channels, reduce_ratio) for _ in range(num_blocks))
            )
        elif module_type == "NAIVE":
            self.layers = nn.ModuleList(
                nn.Sequential(*(ShuffleUnit(c) for _ in range(num_blocks))) for c in self.in_channels
            )
        else:
            raise ValueError(f"unknown module_type {module_type!r}")
        if with_fuse:
            self.fuse_layers = make_fuse_layers(self.in_channels, inplace_relu=True)
            self.relu = nn.ReLU()

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if self.module_type == "LITE":
            out = self.layers(x)
        else:
            out = [layer(s) for layer, s in zip(self.layers, x, strict=True)]
        if self.with_fuse and self.num_branches > 1:
            out = fuse_forward(self.fuse_layers, out, self.relu)
        return out


class LiteHRNet(nn.Module):
    """Lite-HRNet backbone: stem, `transition{i}` / `stage{i}` for each stage, `head_layer`
    (IterativeHead). forward returns `[y[0]]`, the 1/4-resolution map with the first branch's width."""

    def __init__(
        self,
        num_modules: Sequence[int],
        num_channels: Sequence[Sequence[int]],
        module_type: str,
        reduce_ratios: Sequence[int] = (8, 8, 8),
        num_blocks: Sequence[int] = (2, 2, 2),
        stem: tuple[int, int, float] = (32, 32, 1),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = Stem(in_channels, stem[0], stem[1], stem[2])
        self.num_stages = len(num_modules)
        last = [self.stem.out_channels]
        for i in range(self.num_stages):
            channels = list(num_channels[i])
            setattr(self, f"transition{i}", make_transition(last, channels, inplace_relu=False))
            stage = nn.Sequential(
                *(
                    LiteHRModule(channels, num_blocks[i], reduce_ratios[i], module_type)
                    for _ in range(num_modules[i])
                )
            )
            setattr(self, f"stage{i}", stage)
            last = channels
        self.head_layer = IterativeHead(last)

    def forward(self, x: Tensor) -> list[Tensor]:
        y = [self.stem(x)]
        for i in range(self.num_stages):
            y = transition_forward(getattr(self, f"transition{i}"), y)
            y = getattr(self, f"stage{i}")(y)
        return [self.head_layer(y)[0]]


# --------------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------------

_LITE_CHANNELS = ((40, 80), (40, 80, 160), (40, 80, 160, 320))
_NAIVE_CHANNELS = ((30, 60), (30, 60, 120), (30, 60, 120, 240))

_COMMON = dict(
    family="lite_hrnet",
    task="pose_topdown",
    datasets=("coco", "mpii"),
    default_input_size=(256, 192),
    input_sizes={"mpii": (256, 256)},
    stride=32,
    output_names=("heatmaps",),
    output_strides=(4,),
)


def _published(params: float, rows: list[tuple[tuple[int, int], float, str | None]]) -> tuple[Published, ...]:
    return tuple(
        Published(input_size=size, params=params, macs=macs, metric=metric, source=_README)
        for size, macs, metric in rows
    )


def _build(
    num_keypoints: int, num_modules: tuple[int, int, int], channels: tuple, module_type: str
) -> TopDownPoseNet:
    backbone = LiteHRNet(num_modules, channels, module_type)
    return TopDownPoseNet(backbone, channels[-1][0], num_keypoints)


@register_model(
    name="lite_hrnet_18",
    published=_published(
        1.1e6,
        [
            ((256, 192), 205.2e6, "COCO val AP .648"),
            ((384, 288), 461.6e6, "COCO val AP .676"),
            ((256, 256), 273.4e6, None),
        ],
    ),
    upstream=UPSTREAM + "; configs/top_down/lite_hrnet/coco/litehrnet_18_coco_256x192.py",
    **_COMMON,
)
def lite_hrnet_18(num_outputs: int) -> nn.Module:
    return _build(num_outputs, (2, 4, 2), _LITE_CHANNELS, "LITE")


@register_model(
    name="lite_hrnet_30",
    published=_published(
        1.8e6,
        [
            ((256, 192), 319.2e6, "COCO val AP .672"),
            ((384, 288), 717.8e6, "COCO val AP .704"),
            ((256, 256), 425.3e6, None),
        ],
    ),
    upstream=UPSTREAM + "; configs/top_down/lite_hrnet/coco/litehrnet_30_coco_256x192.py",
    **_COMMON,
)
def lite_hrnet_30(num_outputs: int) -> nn.Module:
    return _build(num_outputs, (3, 8, 3), _LITE_CHANNELS, "LITE")


@register_model(
    name="naive_lite_hrnet_18",
    published=_published(0.7e6, [((256, 192), 194.8e6, "COCO val AP .628"), ((256, 256), 259.6e6, None)]),
    upstream=UPSTREAM + "; configs/top_down/naive_litehrnet/coco/naive_litehrnet_18_coco_256x192.py "
    "(head in_channels 30 as in the released checkpoint, not the config's 40)",
    **_COMMON,
)
def naive_lite_hrnet_18(num_outputs: int) -> nn.Module:
    return _build(num_outputs, (2, 4, 2), _NAIVE_CHANNELS, "NAIVE")


@register_model(
    name="wider_naive_lite_hrnet_18",
    published=_published(1.3e6, [((256, 192), 311.1e6, "COCO val AP .660"), ((256, 256), 418.7e6, None)]),
    upstream=UPSTREAM + "; configs/top_down/naive_litehrnet/coco/wider_naive_litehrnet_18_coco_256x192.py",
    **_COMMON,
)
def wider_naive_lite_hrnet_18(num_outputs: int) -> nn.Module:
    return _build(num_outputs, (2, 4, 2), _LITE_CHANNELS, "NAIVE")
