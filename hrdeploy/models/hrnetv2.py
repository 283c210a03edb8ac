"""HRNetV2 (Sun et al., 2019, "High-Resolution Representations for Labeling Pixels and Regions").

Two networks on the shared HRNet backbone (hrdeploy.models.hrnet), both keeping all four stage-4 branches:

- Segmentation, following HRNet/HRNet-Semantic-Segmentation `lib/models/seg_hrnet.py` (HighResolutionNet)
  and `experiments/cityscapes/seg_hrnet_{w48,w18_small_v1,w18_small_v2}_*.yaml`. The fuse unit's j > i
  path is 1x1 conv + BN followed by `F.interpolate(bilinear)` to branch i's size (no Upsample module);
  the head upsamples branches 1-3 to branch 0, concatenates them and applies `last_layer`
  [1x1 conv (bias), BN, ReLU, 1x1 conv -> classes (bias)]; logits at 1/4 of the input.
  align_corners: the original code calls bilinear interpolation without it (False since PyTorch 0.4.1);
  the later code reads `MODEL.ALIGN_CORNERS` (config default True) but the Cityscapes W48 yaml sets it to
  False, and the released Cityscapes checkpoints were trained with False. So False here (a constructor
  argument, for checkpoints trained with the True default).
- HRNetV2p, the detection feature pyramid: the HRNet-W32 backbone as in open-mmlab/mmdetection
  `mmdet/models/backbones/hrnet.py` (nearest Upsample in the fuse, `multiscale_output=True`) under
  `backbone.`, and the HRFPN neck of `mmdet/models/necks/hrfpn.py` under `neck.`: branch i upsampled by
  2^i (bilinear, align_corners False), concat, `reduction_conv` 1x1 -> 256, level i = avg_pool2d with
  kernel = stride = 2^i, each level through its own 3x3 `fpn_convs` (mmcv ConvModule, conv with bias,
  no norm, no activation). Keys match an mmdet checkpoint's `backbone.*` and `neck.*` entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrdeploy.datasets import CITYSCAPES_CLASSES
from hrdeploy.models.common import ConvModule
from hrdeploy.models.hrnet import BN_MOMENTUM, HighResolutionNet, HRNetCfg, StageCfg, hrnet_cfg
from hrdeploy.registry import Published, register_model

W18_SMALL_V1 = HRNetCfg(
    stage1=StageCfg(1, "BOTTLENECK", (1,), (32,)),
    stage2=StageCfg(1, "BASIC", (2, 2), (16, 32)),
    stage3=StageCfg(1, "BASIC", (2, 2, 2), (16, 32, 64)),
    stage4=StageCfg(1, "BASIC", (2, 2, 2, 2), (16, 32, 64, 128)),
)
W18_SMALL_V2 = HRNetCfg(
    stage1=StageCfg(1, "BOTTLENECK", (2,), (64,)),
    stage2=StageCfg(1, "BASIC", (2, 2), (18, 36)),
    stage3=StageCfg(3, "BASIC", (2, 2, 2), (18, 36, 72)),
    stage4=StageCfg(2, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
)


class SegHighResolutionNet(HighResolutionNet):
    """HRNetV2 semantic segmentation: all branches upsampled to 1/4, concatenated, `last_layer`."""

    def __init__(
        self, cfg: HRNetCfg, num_classes: int, final_conv_kernel: int = 1, align_corners: bool = False
    ) -> None:
        super().__init__(cfg, multi_scale_output=True, upsample="bilinear", align_corners=align_corners)
        self.align_corners = align_corners
        c = sum(self.out_channels)
        self.last_layer = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0),
            nn.BatchNorm2d(c, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, final_conv_kernel, 1, 1 if final_conv_kernel == 3 else 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        size = x[0].shape[-2:]
        up = [F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners) for t in x[1:]]
        return self.last_layer(torch.cat([x[0], *up], 1))


class HRFPN(nn.Module):
    """mmdet HRFPN (pooling_type AVG, stride 1, no norm): one 256-channel map per level, 1/4 .. 1/64."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_outs = num_outs
        self.reduction_conv = ConvModule(sum(in_channels), out_channels, 1, norm=False, act=None)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=None)
            for _ in range(num_outs)
        )

    def forward(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"HRFPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        outs = [inputs[0]]
        outs += [F.interpolate(inputs[i], scale_factor=2**i, mode="bilinear") for i in range(1, len(inputs))]
        out = self.reduction_conv(torch.cat(outs, dim=1))
        levels = [out] + [F.avg_pool2d(out, kernel_size=2**i, stride=2**i) for i in range(1, self.num_outs)]
        return tuple(conv(level) for conv, level in zip(self.fpn_convs, levels, strict=True))


class HRNetV2p(nn.Module):
    """HRNet backbone (all four branches) + HRFPN neck, as mmdet's `backbone` and `neck`."""

    def __init__(self, cfg: HRNetCfg, out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        self.backbone = HighResolutionNet(cfg, multi_scale_output=True)
        self.neck = HRFPN(self.backbone.out_channels, out_channels, num_outs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.neck(self.backbone(x))


_SEG_UPSTREAM = "HRNet/HRNet-Semantic-Segmentation lib/models/seg_hrnet.py"
_SEG_README = "HRNet/HRNet-Semantic-Segmentation README (Cityscapes val, GFLOPs at 1024x2048)"
_SEG_FIELDS = dict(
    family="hrnetv2",
    task="segmentation",
    datasets=("cityscapes",),
    default_input_size=(512, 1024),
    stride=32,
    output_names=("logits",),
    output_strides=(4,),
    num_classes=CITYSCAPES_CLASSES,
    upstream=_SEG_UPSTREAM,
)


@register_model(
    name="hrnetv2_w18_small_v1",
    published=(Published((1024, 2048), 1.5e6, 31.1e9, None, _SEG_README),),
    **_SEG_FIELDS,
)
def hrnetv2_w18_small_v1(num_outputs: int) -> SegHighResolutionNet:
    return SegHighResolutionNet(W18_SMALL_V1, num_outputs)


@register_model(
    name="hrnetv2_w18_small_v2",
    published=(Published((1024, 2048), 3.9e6, 71.6e9, None, _SEG_README),),
    **_SEG_FIELDS,
)
def hrnetv2_w18_small_v2(num_outputs: int) -> SegHighResolutionNet:
    return SegHighResolutionNet(W18_SMALL_V2, num_outputs)


@register_model(
    name="hrnetv2_w48",
    published=(Published((1024, 2048), 65.8e6, 696.2e9, "Cityscapes val mIoU 80.9", _SEG_README),),
    **_SEG_FIELDS,
)
def hrnetv2_w48(num_outputs: int) -> SegHighResolutionNet:
    return SegHighResolutionNet(hrnet_cfg(48), num_outputs)


@register_model(
    name="hrnetv2p_w32",
    family="hrnetv2",
    task="detection_neck",
    datasets=("coco",),
    default_input_size=(512, 512),
    stride=64,
    output_names=("p2", "p3", "p4", "p5", "p6"),
    output_strides=(4, 8, 16, 32, 64),
    num_classes=256,
    upstream="open-mmlab/mmdetection mmdet/models/necks/hrfpn.py (+ mmdet/models/backbones/hrnet.py)",
)
def hrnetv2p_w32(num_outputs: int) -> HRNetV2p:
    return HRNetV2p(hrnet_cfg(32), out_channels=num_outputs)
