"""Rewrite `adaptive_pool`: Lite-HRNet's adaptive average pools -> fixed-kernel pools and ReduceMean.

Upstream Lite-HRNet (`models/backbones/litehrnet.py`) pools with sizes known only at run time:
`CrossResolutionWeighting` calls `F.adaptive_avg_pool2d(s, x[-1].size()[-2:])` (the TorchScript exporter
fails, HRNet/Lite-HRNet#3, open-mmlab/mmpose#585/#820; the dynamo exporter bakes kernels from the sample
shape) and `SpatialWeighting` uses `nn.AdaptiveAvgPool2d(1)`. Both are replaced by modules that hold the
*same* conv/BN submodules (the same parameter tensors), so only the pooling and upsampling ops change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrdeploy.models.lite_hrnet import CrossResolutionWeighting, SpatialWeighting
from hrdeploy.rewrite.base import register_rewrite


class ExportCrossResolutionWeighting(nn.Module):
    """CrossResolutionWeighting with static pooling: branch i of n is average-pooled with
    kernel = stride = 2^(n-1-i) and its weights are upsampled back with nearest by the same factor."""

    def __init__(self, crw: CrossResolutionWeighting) -> None:
        super().__init__()
        self.channels = list(crw.channels)
        self.conv1 = crw.conv1
        self.conv2 = crw.conv2

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        n = len(x)
        factors = [2 ** (n - 1 - i) for i in range(n)]
        pooled = [F.avg_pool2d(s, f, f) if f > 1 else s for s, f in zip(x, factors, strict=True)]
        w = self.conv2(self.conv1(torch.cat(pooled, dim=1)))
        ws = torch.split(w, self.channels, dim=1)
        return [
            s * (F.interpolate(a, scale_factor=float(f), mode="nearest") if f > 1 else a)
            for s, a, f in zip(x, ws, factors, strict=True)
        ]


class ExportSpatialWeighting(nn.Module):
    """SpatialWeighting with the global pool written as mean over H, W (ReduceMean, any size)."""

    def __init__(self, sw: SpatialWeighting) -> None:
        super().__init__()
        self.conv1 = sw.conv1
        self.conv2 = sw.conv2

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv2(self.conv1(x.mean(dim=(2, 3), keepdim=True)))


def _matches(module: nn.Module) -> bool:
    return type(module) in (CrossResolutionWeighting, SpatialWeighting)


@register_rewrite("adaptive_pool", matches=_matches)
def rewrite_adaptive_pool(module: nn.Module) -> nn.Module:
    """Adaptive average pools of Lite-HRNet -> AvgPool(kernel = stride = 2^k) / ReduceMean.

    CrossResolutionWeighting: branch i of n has 2^(n-1-i) times the last branch's height and width, so
    adaptive_avg_pool2d to the last branch's size averages disjoint 2^k x 2^k windows, which is
    avg_pool2d(kernel = stride = 2^k); `F.interpolate(size=branch size, nearest)` of the weights is then
    an integer-factor nearest upsample (`scale_factor = 2^k`), i.e. repeating each value 2^k times.
    Exact (up to float summation order) when the input height and width divide by the network stride 32,
    so every branch size is exactly twice the next; otherwise upstream's uneven adaptive bins differ.
    No shape is read, so the batch stays dynamic. SpatialWeighting: AdaptiveAvgPool2d(1) == mean over
    (H, W) keepdim, exact at any size. The conv/BN submodules are moved over unchanged.
    """
    if isinstance(module, CrossResolutionWeighting):
        return ExportCrossResolutionWeighting(module)
    return ExportSpatialWeighting(module)
