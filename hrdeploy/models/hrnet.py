"""HRNet (Sun et al., CVPR 2019): the shared high-resolution backbone and the top-down pose network.

Follows leoxiaobin/deep-high-resolution-net.pytorch `lib/models/pose_hrnet.py` (PoseHighResolutionNet,
configs `experiments/coco/hrnet/w{32,48}_*.yaml`). The backbone pieces here (BasicBlock, Bottleneck,
HighResolutionModule, transitions, stages) are shared with HigherHRNet (`higher_hrnet.py`), HRNetV2
segmentation and HRNetV2p (`hrnetv2.py`), so module and parameter names are upstream's and an upstream
state_dict loads with `strict=True`.

Upstream quirks reproduced on purpose:
- the fuse sum starts from branch 0 (`y = x[0]` or its downsampled copy) and adds branches j = 1.. with
  out-of-place `y = y + ...`, so no term is counted twice;
- a new branch's transition reads the *last* branch of the previous stage (`y_list[-1]`), even for an
  index that already existed (never triggers with the published configs, whose channels do not change);
- pose HRNet builds stage 4 with `multi_scale_output=False`: its last module only has `fuse_layers.0` and
  returns only the highest-resolution branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrdeploy.registry import Published, register_model

BN_MOMENTUM = 0.1


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity (or `downsample`) shortcut, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 -> 3x3 -> 1x1 (x4 channels), each with BN, shortcut, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


@dataclass(frozen=True)
class StageCfg:
    """One `STAGEn` entry of an upstream yaml (FUSE_METHOD is always SUM)."""

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)


@dataclass(frozen=True)
class HRNetCfg:
    stage1: StageCfg
    stage2: StageCfg
    stage3: StageCfg
    stage4: StageCfg


def hrnet_cfg(width: int) -> HRNetCfg:
    """The HRNet-W{width} configuration of the pose and W48 segmentation yamls (4 bottlenecks in stage 1,
    then 1 / 4 / 3 modules of 4 basic blocks per branch, channels width * 2^i)."""
    c = tuple(width * 2**i for i in range(4))
    return HRNetCfg(
        stage1=StageCfg(1, "BOTTLENECK", (4,), (64,)),
        stage2=StageCfg(1, "BASIC", (4, 4), c[:2]),
        stage3=StageCfg(4, "BASIC", (4, 4, 4), c[:3]),
        stage4=StageCfg(3, "BASIC", (4, 4, 4, 4), c),
    )


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool) -> nn.Sequential:
    """Sequential(conv k x k (padding k // 2, no bias), BN[, ReLU]): keys `.0`, `.1` as upstream."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def make_layer(
    block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1
) -> nn.Sequential:
    """A ResNet layer; the first block gets a 1x1 conv + BN `downsample` when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches followed by the exchange (fuse) unit.

    Fuse output i = ReLU(sum_j f_ij(x_j)) with f_ii = identity, f_ij (j > i) = 1x1 conv + BN + upsample by
    2^(j-i), f_ij (j < i) = (i - j) 3x3 stride-2 conv + BN steps with ReLU on all but the last.
    `upsample="nearest"` is pose HRNet's (and mmdet's) `nn.Upsample` at index 2 of the fuse Sequential;
    `upsample="bilinear"` is seg_hrnet.py's `F.interpolate` to branch i's size (no module, so no index 2).
    """

    def __init__(
        self,
        num_branches: int,
        block: type[nn.Module],
        num_blocks: Sequence[int],
        num_inchannels: list[int],
        num_channels: Sequence[int],
        multi_scale_output: bool = True,
        upsample: str = "nearest",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if not (num_branches == len(num_blocks) == len(num_channels) == len(num_inchannels)):
            raise ValueError(
                f"NUM_BRANCHES({num_branches}) must equal the lengths of NUM_BLOCKS({len(num_blocks)}), "
                f"NUM_CHANNELS({len(num_channels)}) and the input channels({len(num_inchannels)})"
            )
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', not {upsample!r}")
        self.num_inchannels = list(num_inchannels)
        self.num_branches = num_branches
        self.multi_scale_output = multi_scale_output
        self.upsample = upsample
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            self._make_one_branch(i, block, num_blocks, num_channels) for i in range(num_branches)
        )
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=True)

    def _make_one_branch(
        self, i: int, block: type[nn.Module], num_blocks: Sequence[int], num_channels: Sequence[int]
    ) -> nn.Sequential:
        layer = make_layer(block, self.num_inchannels[i], num_channels[i], num_blocks[i])
        self.num_inchannels[i] = num_channels[i] * block.expansion
        return layer

    def _make_fuse_layers(self) -> nn.ModuleList | None:
        if self.num_branches == 1:
            return None
        ch = self.num_inchannels
        fuse_layers = nn.ModuleList()
        for i in range(self.num_branches if self.multi_scale_output else 1):
            fuse_layer = nn.ModuleList()
            for j in range(self.num_branches):
                if j > i:
                    up = conv_bn(ch[j], ch[i], 1, 1, relu=False)
                    if self.upsample == "nearest":
                        up.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    fuse_layer.append(up)
                elif j == i:
                    fuse_layer.append(None)
                else:
                    n = i - j
                    # n stride-2 steps; ReLU on all but the last, which maps to branch i's channels
                    steps = [conv_bn(ch[j], ch[j], 3, 2, relu=True) for _ in range(n - 1)]
                    steps.append(conv_bn(ch[j], ch[i], 3, 2, relu=False))
                    fuse_layer.append(nn.Sequential(*steps))
            fuse_layers.append(fuse_layer)
        return fuse_layers

    def get_num_inchannels(self) -> list[int]:
        return self.num_inchannels

    def _from(self, i: int, j: int, xj: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        y = self.fuse_layers[i][j](xj)
        if j > i and self.upsample == "bilinear":
            y = F.interpolate(y, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return y

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = x[0] if i == 0 else self._from(i, 0, x[0], x[i])
            for j in range(1, self.num_branches):
                y = y + (x[j] if i == j else self._from(i, j, x[j], x[i]))
            x_fuse.append(self.relu(y))
        return x_fuse


def make_transition_layer(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Per new-stage branch: None (same channels), 3x3 conv + BN + ReLU (channels change), or a chain of
    3x3 stride-2 conv + BN + ReLU steps from the last previous branch (a new, lower-resolution branch)."""
    layers = nn.ModuleList()
    for i in range(len(cur)):
        if i < len(pre):
            if cur[i] != pre[i]:
                layers.append(conv_bn(pre[i], cur[i], 3, 1, relu=True))
            else:
                layers.append(None)
        else:
            n = i + 1 - len(pre)
            steps = [conv_bn(pre[-1], cur[i] if j == n - 1 else pre[-1], 3, 2, relu=True) for j in range(n)]
            layers.append(nn.Sequential(*steps))
    return layers


class HighResolutionNet(nn.Module):
    """The HRNet backbone: stem (two 3x3 stride-2 convs), `layer1`, then transitions and stages 2-4.

    `forward` returns the list of stage-4 branch outputs (one tensor when `multi_scale_output=False`).
    Heads subclass it and add their layers, so every key sits at upstream's top level.
    """

    def __init__(
        self,
        cfg: HRNetCfg,
        multi_scale_output: bool = True,
        upsample: str = "nearest",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

        block1 = BLOCKS[cfg.stage1.block]
        self.layer1 = make_layer(block1, 64, cfg.stage1.num_channels[0], cfg.stage1.num_blocks[0])
        pre = [cfg.stage1.num_channels[0] * block1.expansion]
        kw = {"upsample": upsample, "align_corners": align_corners}
        make = self._transition_and_stage
        self.transition1, self.stage2, pre = make(pre, cfg.stage2, True, kw)
        self.transition2, self.stage3, pre = make(pre, cfg.stage3, True, kw)
        self.transition3, self.stage4, pre = make(pre, cfg.stage4, multi_scale_output, kw)
        self.out_channels: list[int] = pre

    @staticmethod
    def _transition_and_stage(
        pre: list[int], stage: StageCfg, multi_scale_output: bool, kw: dict
    ) -> tuple[nn.ModuleList, nn.Sequential, list[int]]:
        block = BLOCKS[stage.block]
        channels = [c * block.expansion for c in stage.num_channels]
        transition = make_transition_layer(pre, channels)
        modules = []
        for m in range(stage.num_modules):
            # multi_scale_output only applies to the last module of the stage
            msc = multi_scale_output or m < stage.num_modules - 1
            module = HighResolutionModule(
                stage.num_branches, block, stage.num_blocks, channels, stage.num_channels, msc, **kw
            )
            modules.append(module)
            channels = module.get_num_inchannels()
        return transition, nn.Sequential(*modules), channels

    @staticmethod
    def _branch_inputs(transition: nn.ModuleList, y_list: list[torch.Tensor]) -> list[torch.Tensor]:
        return [y_list[i] if t is None else t(y_list[-1]) for i, t in enumerate(transition)]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        y_list = self.stage2(self._branch_inputs(self.transition1, [x]))
        y_list = self.stage3(self._branch_inputs(self.transition2, y_list))
        return self.stage4(self._branch_inputs(self.transition3, y_list))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


class PoseHighResolutionNet(HighResolutionNet):
    """Top-down pose HRNet: stage 4 single-scale output, then `final_layer` 1x1 conv C0 -> K (with bias)."""

    def __init__(self, cfg: HRNetCfg, num_joints: int, final_conv_kernel: int = 1) -> None:
        super().__init__(cfg, multi_scale_output=False)
        self.final_layer = nn.Conv2d(
            self.out_channels[0], num_joints, final_conv_kernel, 1, 1 if final_conv_kernel == 3 else 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.forward_features(x)[0])


_HRNET_UPSTREAM = "leoxiaobin/deep-high-resolution-net.pytorch lib/models/pose_hrnet.py"
_HRNET_README = "leoxiaobin/deep-high-resolution-net.pytorch README (COCO val2017, person AP 56.4 detector)"


def _hrnet_published(params: float, flops: tuple[float, float], ap: tuple[str, str]) -> tuple[Published, ...]:
    return (
        Published((256, 192), params, flops[0], f"COCO val AP {ap[0]}", _HRNET_README),
        Published((384, 288), params, flops[1], f"COCO val AP {ap[1]}", _HRNET_README),
    )


_POSE_FIELDS = dict(
    family="hrnet",
    task="pose_topdown",
    datasets=("coco", "mpii"),
    default_input_size=(256, 192),
    input_sizes={"mpii": (256, 256)},
    stride=32,
    output_names=("heatmaps",),
    output_strides=(4,),
    upstream=_HRNET_UPSTREAM,
)


@register_model(
    name="hrnet_w32", published=_hrnet_published(28.5e6, (7.1e9, 16.0e9), (".744", ".758")), **_POSE_FIELDS
)
def hrnet_w32(num_outputs: int) -> PoseHighResolutionNet:
    return PoseHighResolutionNet(hrnet_cfg(32), num_outputs)


@register_model(
    name="hrnet_w48", published=_hrnet_published(63.6e6, (14.6e9, 32.9e9), (".751", ".763")), **_POSE_FIELDS
)
def hrnet_w48(num_outputs: int) -> PoseHighResolutionNet:
    return PoseHighResolutionNet(hrnet_cfg(48), num_outputs)
