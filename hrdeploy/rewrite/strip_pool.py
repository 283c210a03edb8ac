"""Rewrite strip pools, `nn.AdaptiveAvgPool2d((1, None))` and `((None, 1))`, as means.

Identity: an adaptive average pool to output size 1 along one axis (and the full size along the other)
is the mean over that axis, so `(1, None)` == `x.mean(dim=2, keepdim=True)` and `(None, 1)` ==
`x.mean(dim=3, keepdim=True)`. Exact at every input size and batch (it is the same reduction); it exports
as ONNX ReduceMean, which has no kernel size.

Why: the dynamo exporter (torch 2.13) lowers the adaptive pool to an AveragePool whose kernel and stride
are the sample's H or W, baked into the graph even when H and W are declared dynamic. At another input
size the pool then averages windows of the sample's size: wrong values, and from twice the sample size
on, more than one row / column (which a following interpolate to (h, w) hides). The TorchScript exporter
refuses it with dynamic H, W ("output_size is not constant").

Not rewritten: square adaptive pools such as StripPooling's `AdaptiveAvgPool2d(20)` / `(12)`, whose
kernel depends on the input size. When the input divides by the output size they are exactly an
AveragePool with kernel = stride = input / output, and that is what the dynamo exporter emits; when it
does not, it emits a GatherND of window indices plus ReduceMean. Either way the kernel (or the index
table) is baked from the export sample, so the graph is right only at that H, W: export such a model
with static H, W (dynamic batch is fine), at a size divisible by 20 and 12 (multiples of 60) to get
plain AveragePools.
"""

from __future__ import annotations

import torch
from torch import nn

from hrdeploy.rewrite.base import register_rewrite

_STRIP_DIMS = {(1, None): 2, (None, 1): 3}


class StripMean(nn.Module):
    """`x.mean(dim, keepdim=True)`: the export-friendly form of a (1, None) / (None, 1) adaptive pool."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dim, keepdim=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _strip_dim(module: nn.Module) -> int | None:
    if type(module) is not nn.AdaptiveAvgPool2d:
        return None
    size = module.output_size
    if isinstance(size, int):
        return None
    return _STRIP_DIMS.get(tuple(size))


def is_strip_pool(module: nn.Module) -> bool:
    return _strip_dim(module) is not None


@register_rewrite("strip_pool", matches=is_strip_pool)
def strip_pool_to_mean(module: nn.Module) -> nn.Module:
    """AdaptiveAvgPool2d((1, None)) -> mean over H, ((None, 1)) -> mean over W (ReduceMean).
    Exact for every input size and batch; square adaptive pools are left alone."""
    dim = _strip_dim(module)
    assert dim is not None
    return StripMean(dim)
