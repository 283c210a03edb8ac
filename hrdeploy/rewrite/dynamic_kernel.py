"""Rewrite `dynamic_kernel_aggregation`: Dite-HRNet's batch-folded dynamic convolution -> static graph.

Upstream Dite-HRNet (`models/backbones/ditehrnet.py`, `KernelAggregation`) mixes K stacked kernels per
sample (weight_n = sum_k a_nk W_k, a = sigmoid attention [N, K]) and runs them as ONE conv over the
batch folded into channels, x.view(1, N*C, H, W) with groups = g*N. ONNX Conv's `group` is a static
attribute and its weight is then a run-time tensor, so:
- dynamic batch does not export (torch 2.13 dynamo: ConversionError translating aten.conv2d with a
  symbolic `groups`; TorchScript: "ONNX export of convolution for kernel of unknown shape"), and
- a static-batch export is batch-specific and has a Conv whose weight is computed at run time, which
  TensorRT can neither fold nor quantize per channel.

The replacement keeps the *same* parameter tensors under the same names (`attention.conv1.weight`,
`attention.bn.*`, `attention.conv2.{weight,bias}`, `aggregation.weight`; with the enclosing ConvBN's
`bn.*`) and computes the same function with a graph whose weights are constants and whose batch is
free (never named in a reshape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrdeploy.models.dite_hrnet import ConvBN, DynamicKernelAggregation, KernelAggregation, KernelAttention
from hrdeploy.rewrite.base import register_rewrite


class ExportKernelAttention(nn.Module):
    """KernelAttention with the global pool as mean over (H, W) (ReduceMean) and no view(N, -1): the
    attention stays [N, K, 1, 1], ready to broadcast, and no shape is read. Same conv1 / bn / conv2 modules;
    sigmoid as upstream."""

    def __init__(self, attention: KernelAttention) -> None:
        super().__init__()
        self.conv1 = attention.conv1
        self.bn = attention.bn
        self.relu = attention.relu
        self.conv2 = attention.conv2

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv1(x.mean(dim=(2, 3), keepdim=True))))
        return torch.sigmoid(self.conv2(x))


class ConvAggregationForm(nn.Module):
    """Base of the conv forms: holds the upstream KernelAggregation's `weight` (the same Parameter) and its
    conv settings."""

    def __init__(self, aggregation: KernelAggregation) -> None:
        super().__init__()
        self.weight = aggregation.weight  # the same Parameter
        self.bias = None
        self.in_channels = aggregation.in_channels
        self.out_channels = aggregation.out_channels
        self.kernel_size = aggregation.kernel_size
        self.stride = aggregation.stride
        self.padding = aggregation.padding
        self.dilation = aggregation.dilation
        self.groups = aggregation.groups
        self.num_kernels = aggregation.num_kernels


class StackedKernelAggregation(ConvAggregationForm):
    """sum_k a_k * conv(x, W_k) as one static grouped conv with out*K output channels, then a weighted sum.

    The stacked kernel is `weight` [K, out, in/g, k, k] permuted to [out, K, in/g, k, k] and reshaped to
    [out*K, in/g, k, k]: output channel o*K + k is conv(x, W_k) for output o and it lies in o's group, so
    the conv keeps `groups = g` (a depthwise conv stays depthwise with a K-fold channel multiplier). Its
    output [N, out*K, H', W'] is viewed as [N, out, K, H', W'], multiplied by a [N, 1, K, 1, 1] and
    summed over K. Costs K times the conv's MACs. Not the default: onnxruntime's CPU depthwise kernel
    needs a channel multiplier of 1, so this conv takes its generic grouped path (see rewrite_dynamic_kernel).
    """

    def stacked_weight(self) -> Tensor:
        k, out = self.num_kernels, self.out_channels
        return self.weight.transpose(0, 1).reshape(out * k, *self.weight.shape[2:])

    def forward(self, x: Tensor, attention: Tensor) -> Tensor:
        y = F.conv2d(x, self.stacked_weight(), None, self.stride, self.padding, self.dilation, self.groups)
        y = y.unflatten(1, (self.out_channels, self.num_kernels))  # [N, out, K, H', W']
        return (y * attention.unsqueeze(1)).sum(dim=2)  # attention [N, K, 1, 1] -> [N, 1, K, 1, 1]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}x{self.num_kernels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}"
        )


def fold_batchnorm(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight * s, b) with s = gamma / sqrt(var + eps), b = beta - mean * s: BN(z) = s z + b per output channel.

    `weight` is [..., out, in/g, k, k] (the out axis third from the end). Computed from the BN's own
    parameters at every call, so the module keeps the upstream tensors; the exported graph folds them.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


class PerKernelConvAggregation(ConvAggregationForm):
    """sum_k conv(a_k * x, W_k): K constant convolutions of the attention-scaled input, summed.

    Each W_k keeps the upstream conv's shape and groups, so a depthwise kernel stays a plain depthwise
    conv (the fast kernel of every runtime) and a following BatchNorm folds in: its scale into every W_k,
    its shift as the bias of the first conv only (the bias is outside the a_k scaling). Costs K times the
    conv's MACs plus K broadcast Muls [N, C, H, W] x [N, 1, 1, 1] and K - 1 Adds.
    """

    def forward(self, x: Tensor, attention: Tensor, bn: nn.BatchNorm2d | None = None) -> Tensor:
        weight, bias = (self.weight, None) if bn is None else fold_batchnorm(self.weight, bn)
        scales = attention.split(1, dim=1)  # [N, K, 1, 1] -> K x [N, 1, 1, 1]: one Split, no Gathers
        y = F.conv2d(x * scales[0], weight[0], bias, self.stride, self.padding, self.dilation, self.groups)
        for k in range(1, self.num_kernels):
            y = y + F.conv2d(x * scales[k], weight[k], None, self.stride, self.padding, self.dilation, self.groups)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, {self.num_kernels} x kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, form=per-kernel convs"
        )


class PerSampleMatMulAggregation(nn.Module):
    """A 1x1, stride-1, ungrouped dynamic conv as per-sample weights and one batched MatMul.

    W_n = sum_k a_nk W_k is formed exactly as upstream does (attention [N, K] @ weight.view(K, out*in)),
    giving [N, out, in]; a 1x1 conv with a per-sample weight is W_n @ x_n.view(in, H*W), i.e. a batched
    MatMul [N, out, in] x [N, in, H*W]. Costs N*out*in*K (tiny) plus the conv's own MACs, instead of K
    times the conv's MACs for the stacked form; batch-free (-1) and export-friendly (MatMul/Reshape).
    """

    def __init__(self, aggregation: KernelAggregation) -> None:
        super().__init__()
        self.weight = aggregation.weight  # the same Parameter
        self.bias = None
        self.in_channels = aggregation.in_channels
        self.out_channels = aggregation.out_channels
        self.num_kernels = aggregation.num_kernels

    def forward(self, x: Tensor, attention: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        weight = torch.matmul(attention.flatten(1), self.weight.reshape(self.num_kernels, -1))  # [N, out*in]
        weight = weight.unflatten(1, (self.out_channels, self.in_channels))
        y = torch.matmul(weight, x.flatten(2))  # [N, out, H*W]
        return y.unflatten(2, (h, w))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, num_kernels={self.num_kernels}, form=batched MatMul"


def is_pointwise(aggregation: KernelAggregation) -> bool:
    """1x1 kernel, stride 1, no padding, one group (dilation is irrelevant for a 1x1 kernel)."""
    return (
        aggregation.kernel_size == 1
        and aggregation.stride in (1, (1, 1))
        and aggregation.padding in (0, (0, 0))
        and aggregation.groups == 1
    )


FORMS = ("auto", "perkernel", "stacked", "matmul")


class ExportDynamicKernelAggregation(nn.Module):
    """`.attention` (ExportKernelAttention) + `.aggregation`: per-kernel convs, stacked conv or per-sample MatMul.

    form "auto" takes the per-sample MatMul for 1x1 stride-1 ungrouped kernels and the per-kernel convs
    otherwise (the fastest exact forms measured, see `rewrite_dynamic_kernel`).
    """

    def __init__(self, module: DynamicKernelAggregation, form: str = "auto") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
        agg = module.aggregation
        if agg.bias is not None:
            raise ValueError("dynamic kernels with a bias are not used by Dite-HRNet and not supported")
        if form == "matmul" and not is_pointwise(agg):
            raise ValueError("the matmul form needs a 1x1, stride-1, pad-0, groups-1 kernel")
        if form == "auto":
            form = "matmul" if is_pointwise(agg) else "perkernel"
        self.attention = ExportKernelAttention(module.attention)
        forms = {"perkernel": PerKernelConvAggregation, "stacked": StackedKernelAggregation,
                 "matmul": PerSampleMatMulAggregation}
        self.aggregation: nn.Module = forms[form](agg)

    def forward(self, x: Tensor) -> Tensor:
        return self.aggregation(x, self.attention(x))


class ExportDynamicConvBN(nn.Module):
    """Dite-HRNet ConvBN(ReLU) around a dynamic conv, with the BN folded into the per-kernel convs.

    Same children and state_dict keys as the upstream ConvBN (`conv.attention.*`, `conv.aggregation.weight`,
    `bn.*`); the fold is computed from them at every call (inference only: running statistics).
    """

    def __init__(self, module: ConvBN, form: str = "auto") -> None:
        super().__init__()
        self.conv = ExportDynamicKernelAggregation(module.conv, form)
        self.bn = module.bn
        self.relu = module.relu

    def forward(self, x: Tensor) -> Tensor:
        agg = self.conv.aggregation
        if isinstance(agg, PerKernelConvAggregation):
            x = agg(x, self.conv.attention(x), bn=self.bn)
        else:
            x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


def _matches(module: nn.Module) -> bool:
    if type(module) is ConvBN:
        return type(module.conv) is DynamicKernelAggregation
    return type(module) is DynamicKernelAggregation


@register_rewrite("dynamic_kernel_aggregation", matches=_matches)
def rewrite_dynamic_kernel(module: nn.Module) -> nn.Module:
    """DynamicKernelAggregation (and the ConvBN around it) -> K constant convs of the attention-scaled input,
    summed, with the BN folded in (1x1 kernels: per-sample weights + batched MatMul).

    Identity: convolution is linear in its weight and in its input, so upstream's per-sample conv with the
    mixed kernel (batch folded into channels, groups = g*N) is
    conv(x, sum_k a_k W_k) = sum_k a_k conv(x, W_k) = sum_k conv(a_k x, W_k), a_k = the sigmoid attention
    (a per-sample scalar). The following BN is s*z + b per channel: s goes into every W_k, b becomes the
    first conv's bias. For 1x1 stride-1 ungrouped kernels the cheaper exact form mixes the weights per
    sample as upstream does (attention @ weight) and applies them with one batched MatMul over H*W.
    Weights are constants (TensorRT folds and quantizes them per channel) and the batch is never named.
    The issue's form, one grouped conv over the K stacked kernels ([out*K, in/g, k, k]) then the
    attention-weighted sum, is kept as form="stacked": it is exact too but slower on onnxruntime CPU,
    whose depthwise fast path needs a channel multiplier of 1 (the forms' latencies:
    benchmarks/dite_graph_forms.md).
    Exact for every input size and batch (bias None, as every upstream use); only the float summation
    order differs (errors at the 1e-7 relative level in fp32).
    """
    if type(module) is ConvBN:
        return ExportDynamicConvBN(module)
    return ExportDynamicKernelAggregation(module)
