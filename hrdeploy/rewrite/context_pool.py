"""Rewrite `context_pool`: Dite-HRNet's context pooling (DenseContextModeling, GlobalContextModeling).

Upstream Dite-HRNet (`models/backbones/ditehrnet.py`) writes both poolings with `x.view(batch, ...)` /
`x.size()` arithmetic: an exporter records the batch as a constant or as a Shape->Gather chain, and
DenseContextModeling's raw reinterpretation `view(N, MH*MW, C, H*W / (MH*MW))` reads every size from
the input. The replacements below hold the *same* submodules (conv_mask, channel_attention, bn: the
same parameter tensors under the same state_dict keys, including DCM's unused last conv_mask) and
reproduce the upstream arithmetic exactly without ever naming the batch:

- GlobalContextModeling: softmax over H*W of conv_mask(x), then [N, C, H*W] @ [N, H*W, 1] (MatMul).
  No shape is read: any batch, any H and W.
- DenseContextModeling: branch i of n is 2^(n-1-i) times the last branch's size, so the raw view's chunk
  length is the static L = 4^(n-1-i); only the last branch's (MH, MW) is read from a shape (constants in
  a static-size export, symbolic in a dynamic-H/W dynamo export), never the batch. The nearest resize of
  the attention back to branch i is an integer-factor upsample (`scale_factor = 2^(n-1-i)`).

Upstream has no adaptive pool in DenseContextModeling (the last branch enters the attention unpooled and
the others reach its size through the raw view), so there is none to replace here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrdeploy.models.dite_hrnet import DenseContextModeling, GlobalContextModeling
from hrdeploy.rewrite.base import register_rewrite


def _softmax_positions(mask: Tensor) -> Tensor:
    """[N, 1, H, W] -> softmax over all H*W positions, as [N, H*W] (the batch never read)."""
    return torch.softmax(mask.flatten(1), dim=1)


class ExportGlobalContextModeling(nn.Module):
    """GC pooling as softmax(conv_mask(x)) over H*W and one MatMul; then channel attention and bn."""

    def __init__(self, gcm: GlobalContextModeling) -> None:
        super().__init__()
        self.conv_mask = gcm.conv_mask
        self.channel_attention = gcm.channel_attention
        self.bn = gcm.bn

    def global_spatial_pool(self, x: Tensor) -> Tensor:
        mask = _softmax_positions(self.conv_mask(x)).unsqueeze(-1)  # [N, H*W, 1]
        return torch.matmul(x.flatten(2), mask).unsqueeze(-1)  # [N, C, 1, 1]

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x * self.channel_attention(self.global_spatial_pool(x)))


class ExportDenseContextModeling(nn.Module):
    """DCM with the raw view/softmax pooling written with static chunk lengths and batch -1."""

    def __init__(self, dcm: DenseContextModeling) -> None:
        super().__init__()
        self.channels = list(dcm.channels)
        self.conv_mask = dcm.conv_mask  # all of them, the last one unused as upstream
        self.channel_attention = dcm.channel_attention

    def global_spatial_pool(self, x: Tensor, mini_size: tuple, i: int, factor: int) -> Tensor:
        """Upstream's raw pooling of branch i (factor = its size / the last branch's size).

        Per sample, the C*H*W values are reinterpreted as M = MH*MW blocks of [C, L] (L = factor^2):
        flatten(1).unflatten(1, (M, C, L)); the softmax over all H*W positions is cut into the same M
        chunks of L consecutive positions; each block is reduced against its chunk (MatMul); [N, M, C]
        is transposed to [N, C, M] and unflattened to [N, C, MH, MW]. Only non-batch dims are named, so
        the exporter derives no batch guard (a reshape with -1 on this non-contiguous half would).
        """
        mh, mw = mini_size
        c = x.shape[1]
        chunk = factor * factor
        h, w = x.shape[-2], x.shape[-1]
        if isinstance(w, int) and isinstance(mw, int) and (h, w) != (mh * factor, mw * factor):
            raise ValueError(
                f"branch {i} is {(h, w)}, not {factor}x the last branch {(mh, mw)}; "
                "the input height and width must divide by 32"
            )
        m = mh * mw
        x_m = x.flatten(1).unflatten(1, (m, c, chunk))  # [N, M, C, L]
        mask = _softmax_positions(self.conv_mask[i](x)).unflatten(1, (m, chunk)).unsqueeze(-1)  # [N, M, L, 1]
        pooled = torch.matmul(x_m, mask).squeeze(-1)  # [N, M, C]
        return pooled.transpose(1, 2).unflatten(2, (mh, mw))  # [N, C, MH, MW]

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        n = len(x)
        mini_size = (x[-1].shape[-2], x[-1].shape[-1])
        factors = [2 ** (n - 1 - i) for i in range(n)]
        out = [self.global_spatial_pool(s, mini_size, i, factors[i]) for i, s in enumerate(x[:-1])] + [x[-1]]
        att = torch.split(self.channel_attention(torch.cat(out, dim=1)), self.channels, dim=1)
        return [
            s * (F.interpolate(a, scale_factor=float(f), mode="nearest") if f > 1 else a)
            for s, a, f in zip(x, att, factors, strict=True)
        ]


def _matches(module: nn.Module) -> bool:
    return type(module) in (DenseContextModeling, GlobalContextModeling)


@register_rewrite("context_pool", matches=_matches)
def rewrite_context_pool(module: nn.Module) -> nn.Module:
    """Dite-HRNet context pooling -> batch-free Reshape/Softmax/MatMul/Transpose with static chunk sizes.

    GlobalContextModeling: [N,1,C,HW] @ [N,1,HW,1] permuted to [N,C,1,1] equals [N,C,HW] @ [N,HW,1]
    unsqueezed (the same dot products over H*W). Exact at every size and batch.
    DenseContextModeling: upstream's view(N, C, HW).view(N, M, C, HW/M) is a per-sample reinterpretation
    of the C*H*W values in order, i.e. flatten(1).unflatten(1, (M, C, L)); the softmaxed mask viewed as
    (N, M, L) likewise; matmul, then (N, M, C) -> (N, C, M) -> (N, C, MH, MW) is upstream's permute +
    view. L = HW/M = 4^(n-1-i) and the nearest resize from
    (MH, MW) to branch i's size repeats each value 2^(n-1-i) times, both when branch i is exactly
    2^(n-1-i) times the last branch: exact when the input height and width divide by the network
    stride 32 (the only sizes Dite-HRNet accepts here); otherwise it raises. The same arithmetic and
    summation order as upstream up to the MatMul kernel's float accumulation order.
    """
    if type(module) is GlobalContextModeling:
        return ExportGlobalContextModeling(module)
    return ExportDenseContextModeling(module)
