"""Rewrite `channel_shuffle`: ShuffleNet channel shuffle without a batch size baked into the graph.

Upstream (mmpose `models/backbones/utils/channel_shuffle.py`, used by Lite-HRNet and Dite-HRNet) writes
`b, c, h, w = x.size(); x.view(b, g, c // g, h, w)...view(b, -1, h, w)`: exporters record `b` as a
constant or as a Shape->Gather chain, which pins the batch (pytorch/pytorch#48093).
"""

from __future__ import annotations

from torch import Tensor, nn

from hrdeploy.models.common import ChannelShuffle
from hrdeploy.rewrite.base import register_rewrite


class ExportChannelShuffle(nn.Module):
    """reshape(-1, g, c/g, h, w) -> transpose(1, 2) -> reshape(-1, c, h, w): only c, h, w are read from
    the input shape (static in a dynamic-batch export); the batch is always -1."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(-1, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


@register_rewrite("channel_shuffle", matches=lambda m: type(m) is ChannelShuffle)
def rewrite_channel_shuffle(module: nn.Module) -> nn.Module:
    """ChannelShuffle(g) -> reshape(-1, g, c/g, h, w), transpose(1, 2), reshape(-1, c, h, w).

    Identity: the same permutation of channels (output channel i*g + k = input channel k*(c/g) + i),
    with the batch inferred (-1) instead of read from x.size(). Exact always (a pure data movement,
    no arithmetic) whenever c divides by g, which upstream requires too. No parameters.
    """
    return ExportChannelShuffle(module.groups)
