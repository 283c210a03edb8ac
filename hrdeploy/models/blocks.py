"""Seed blocks other networks are built from: SKNet's SKConv, SPNet's StripPooling and SPBlock.

- SKConv follows pppLang/SKNet `sknet.py` (Li et al., "Selective Kernel Networks", CVPR 2019).
  Upstream pools with `nn.AvgPool2d(WH / stride)` for a fixed feature size WH and then `squeeze_()`s
  (which also drops the batch dimension at batch 1); both equal the global mean over H, W only at that
  one size and batch > 1, so this module takes the mean over H, W directly (no WH argument) and keeps
  the batch dimension. Parameter names are upstream's (`convs.{i}.{0,1}`, `fc`, `fcs.{i}`).
- StripPooling follows Andrew-Qibin/SPNet `models/customize.py` (Hou et al., "Strip Pooling", CVPR 2020),
  with SPNet's `up_kwargs` (bilinear, align_corners=True) as the default.
- SPBlock follows SPNet `models/resnet.py`. As upstream, `forward` returns the sigmoid gate; the caller
  (SPNet's Bottleneck) multiplies its features by it (`out = out * spm(out)`), see `apply_gate`.

These are the upstream (eager) forms. Their (1, None) / (None, 1) adaptive pools bake a kernel size into
an exported graph; hrdeploy.rewrite.strip_pool replaces them by means.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

UP_KWARGS: dict[str, Any] = {"mode": "bilinear", "align_corners": True}


class SKConv(nn.Module):
    """Selective kernel convolution.

    M branches (kernel 3 + 2i, padding 1 + i, groups G, with bias) each + BN + ReLU; U = sum of branches;
    s = mean of U over H, W; z = fc(s) (C -> d, d = max(C / r, L)); one head fcs[i] (d -> C) per branch;
    softmax over the M branches; output = sum_i a_i * branch_i.
    """

    def __init__(
        self, features: int, M: int = 2, G: int = 32, r: int = 16, stride: int = 1, L: int = 32
    ) -> None:
        super().__init__()
        d = max(int(features / r), L)
        self.M = M
        self.features = features
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(features, features, kernel_size=3 + i * 2, stride=stride, padding=1 + i, groups=G),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=False),
            )
            for i in range(M)
        )
        self.fc = nn.Linear(features, d)
        self.fcs = nn.ModuleList(nn.Linear(d, features) for _ in range(M))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feas = torch.stack([conv(x) for conv in self.convs], dim=1)  # [N, M, C, H, W]
        fea_s = feas.sum(dim=1).mean(dim=(2, 3))  # [N, C]
        fea_z = self.fc(fea_s)
        attention = self.softmax(torch.stack([fc(fea_z) for fc in self.fcs], dim=1))  # [N, M, C]
        return (feas * attention[..., None, None]).sum(dim=1)


def _conv_bn(cin: int, cout: int, k: int | tuple[int, int], pad: int | tuple[int, int], norm: type[nn.Module],
             relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, pad, bias=False), norm(cout)]
    if relu:
        layers.append(nn.ReLU(True))
    return nn.Sequential(*layers)


class StripPooling(nn.Module):
    """SPNet's mixed pooling module: a pyramid path (3x3 conv, pool_size[0] and pool_size[1] square
    pools) on conv1_1(x) and a strip path ((1, W) and (H, 1) pools) on conv1_2(x), middle = in / 4,
    concatenated, `conv3` 1x1 + BN back to `in_channels`, out = ReLU(x + that)."""

    def __init__(
        self,
        in_channels: int,
        pool_size: tuple[int, int] = (20, 12),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        up_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.pool1 = nn.AdaptiveAvgPool2d(pool_size[0])
        self.pool2 = nn.AdaptiveAvgPool2d(pool_size[1])
        self.pool3 = nn.AdaptiveAvgPool2d((1, None))
        self.pool4 = nn.AdaptiveAvgPool2d((None, 1))
        c = int(in_channels / 4)
        self.conv1_1 = _conv_bn(in_channels, c, 1, 0, norm_layer, relu=True)
        self.conv1_2 = _conv_bn(in_channels, c, 1, 0, norm_layer, relu=True)
        self.conv2_0 = _conv_bn(c, c, 3, 1, norm_layer)
        self.conv2_1 = _conv_bn(c, c, 3, 1, norm_layer)
        self.conv2_2 = _conv_bn(c, c, 3, 1, norm_layer)
        self.conv2_3 = _conv_bn(c, c, (1, 3), (0, 1), norm_layer)
        self.conv2_4 = _conv_bn(c, c, (3, 1), (1, 0), norm_layer)
        self.conv2_5 = _conv_bn(c, c, 3, 1, norm_layer, relu=True)
        self.conv2_6 = _conv_bn(c, c, 3, 1, norm_layer, relu=True)
        self.conv3 = _conv_bn(c * 2, in_channels, 1, 0, norm_layer)
        self._up_kwargs = dict(UP_KWARGS if up_kwargs is None else up_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        x1 = self.conv1_1(x)
        x2 = self.conv1_2(x)
        x2_1 = self.conv2_0(x1)
        x2_2 = F.interpolate(self.conv2_1(self.pool1(x1)), (h, w), **self._up_kwargs)
        x2_3 = F.interpolate(self.conv2_2(self.pool2(x1)), (h, w), **self._up_kwargs)
        x2_4 = F.interpolate(self.conv2_3(self.pool3(x2)), (h, w), **self._up_kwargs)
        x2_5 = F.interpolate(self.conv2_4(self.pool4(x2)), (h, w), **self._up_kwargs)
        x1 = self.conv2_5(F.relu(x2_1 + x2_2 + x2_3))
        x2 = self.conv2_6(F.relu(x2_5 + x2_4))
        out = self.conv3(torch.cat([x1, x2], dim=1))
        return F.relu(x + out)


class SPBlock(nn.Module):
    """SPNet strip pooling gate: (H, 1) pool -> (3, 1) conv -> BN and (1, W) pool -> (1, 3) conv -> BN,
    each expanded back to H x W, ReLU(sum) -> 1x1 conv (bias) -> sigmoid. Returns the gate."""

    def __init__(self, inplanes: int, outplanes: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        midplanes = outplanes
        self.conv1 = nn.Conv2d(inplanes, midplanes, kernel_size=(3, 1), padding=(1, 0), bias=False)
        self.bn1 = norm_layer(midplanes)
        self.conv2 = nn.Conv2d(inplanes, midplanes, kernel_size=(1, 3), padding=(0, 1), bias=False)
        self.bn2 = norm_layer(midplanes)
        self.conv3 = nn.Conv2d(midplanes, outplanes, kernel_size=1, bias=True)
        self.pool1 = nn.AdaptiveAvgPool2d((None, 1))
        self.pool2 = nn.AdaptiveAvgPool2d((1, None))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        x1 = self.bn1(self.conv1(self.pool1(x))).expand(-1, -1, h, w)
        x2 = self.bn2(self.conv2(self.pool2(x))).expand(-1, -1, h, w)
        return self.conv3(self.relu(x1 + x2)).sigmoid()


def apply_gate(x: torch.Tensor, block: SPBlock) -> torch.Tensor:
    """How SPNet's Bottleneck uses an SPBlock: x * gate(x)."""
    return x * block(x)
