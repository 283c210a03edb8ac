"""Input equalization: per-channel scales moved from a conv's input into its weights, the same fp32 function.

INT8 activations have one scale per tensor (all TensorRT takes), so the channels of a tensor much quieter than its
loudest keep only a few INT8 steps. Dividing input channel c by s_c and multiplying the consuming conv's weights
of channel c by s_c leaves the fp32 function unchanged (a conv is linear in each input channel), and per-channel
weight quantization absorbs the weight scaling; s_c = (r_c / max r) ** alpha, with r_c the channel's max |x| on
the calibration data, brings the channels' ranges together (alpha 1: all equal). This is the activation-side
equalization of Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV
2019) and of SmoothQuant (Xiao et al., ICML 2023), applied where it costs nothing in INT8:
- where the input is a Conv's output used by this conv alone (directly or through a ReLU, which commutes with a
  positive scale), 1/s is folded into that Conv's weights and bias: no node is added;
- for a depthwise conv, elsewhere (a residual sum or a shuffled tensor several branches read) a Mul by 1/s is
  inserted on its input alone.

`equalize_depthwise` treats depthwise convs (every input channel its own filter; the scale may also be a Mul);
`equalize_dense_convs` treats dense convs (group 1, e.g. the 1x1 convs after each depthwise conv), folded only. A
dense conv's INT8 weights share one scale per output channel across all input channels, so there it trades some
weight precision for activation precision: worth it where activation rounding carries the INT8 loss, as on the
trained network (floating its activations recovers most of the searched INT8's keypoint error, floating its
weights almost none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hrdeploy.precision import graph as G

# 1: every channel of an equalized input spans the same range. Chosen on the trained network's coco-train tuning
# people, where INT8 kept its keypoints closer to fp32 with 1 than with 0.5 (depthwise: every conv INT8;
# dense: the searched mixed precision).
DEFAULT_ALPHA = 1.0
# No channel is amplified more than this many times: a channel that was almost silent on the calibration
# people keeps some headroom for louder inputs.
MIN_SCALE = 1.0 / 128


def depthwise_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv nodes with constant weights, more than one group and one input channel per group."""
    inits = {init.name: init for init in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if _group(node) > 1 and inits[node.input[1]].dims[1] == 1:
            out.append(node)
    return out


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def input_channel_ranges(model: onnx.ModelProto, tensors: list[str], data_batches: list[np.ndarray],
                         threads: int | None = None) -> dict[str, np.ndarray]:
    """Max |x| per channel (axis 1) of each of `tensors` over the batches, on onnxruntime CPU."""
    from hrdeploy.precision.evaluate import run_model
    from hrdeploy.runtime.onnxruntime import ort_session

    names = sorted(set(tensors))
    sess = ort_session(G.with_outputs(model, names), threads)
    ranges: dict[str, np.ndarray] = {}
    for batch in data_batches:
        outs = run_model(None, batch, sess=sess)
        for name in names:
            value = np.abs(outs[name]).max(axis=(0, *range(2, outs[name].ndim)))
            ranges[name] = np.maximum(ranges.get(name, value), value)
    return ranges


def channel_scales(ranges: np.ndarray, alpha: float) -> np.ndarray:
    """s_c = (r_c / max r) ** alpha, at least MIN_SCALE; 1 for channels that never fired."""
    top = float(ranges.max())
    if top <= 0:
        return np.ones_like(ranges, dtype=np.float32)
    s = np.maximum(np.power(ranges / top, alpha), MIN_SCALE)
    return np.where(ranges > 0, s, 1.0).astype(np.float32)


@dataclass
class _Graph:
    """The model with lookups the edits need; initializers edited in place."""

    model: onnx.ModelProto

    def __post_init__(self) -> None:
        self.inits = {init.name: init for init in self.model.graph.initializer}
        self.prod = G.producers(self.model)
        self.users = G.consumers(self.model)
        self.uses: dict[str, int] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1

    def sole_user(self, tensor: str) -> bool:
        graph_outputs = {o.name for o in self.model.graph.output}
        return len(self.users.get(tensor, [])) == 1 and tensor not in graph_outputs

    def foldable_producer(self, tensor: str) -> onnx.NodeProto | None:
        """The Conv whose output reaches `tensor` alone (directly or through one ReLU), with weights (and
        bias) that no other node reads; else None."""
        if not self.sole_user(tensor) or tensor not in self.prod:
            return None
        node = self.prod[tensor]
        if node.op_type == "Relu":
            if not self.sole_user(node.input[0]) or node.input[0] not in self.prod:
                return None
            node = self.prod[node.input[0]]
        if node.op_type != "Conv" or any(p not in self.inits or self.uses[p] != 1 for p in node.input[1:]):
            return None
        return node

    def scale(self, name: str, factor: np.ndarray, axis_len: int) -> None:
        """Multiply initializer `name` by `factor` along its first axis (grouped in blocks of equal size)."""
        init = self.inits[name]
        value = numpy_helper.to_array(init)
        blocks = value.reshape(axis_len, -1) * factor[:, None]
        init.CopyFrom(numpy_helper.from_array(blocks.reshape(value.shape).astype(value.dtype), name))


def equalize_depthwise(model: onnx.ModelProto, data_batches: list[np.ndarray], alpha: float = DEFAULT_ALPHA,
                       skip: set[str] | frozenset[str] = frozenset(), threads: int | None = None,
                       ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` whose depthwise convs (but those in `skip`) read equalized inputs; the same fp32
    function. Returns it and, per depthwise conv, how its scales were placed ("folded" or "mul")."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    dws = [n for n in depthwise_nodes(out) if n.name not in skip and g.uses[n.input[1]] == 1]
    ranges = input_channel_ranges(out, [n.input[0] for n in dws], data_batches, threads)
    placed: dict[str, str] = {}
    new_nodes: dict[str, onnx.NodeProto] = {}
    for dw in dws:
        s = channel_scales(ranges[dw.input[0]], alpha)
        if np.all(s == 1.0):
            continue
        g.scale(dw.input[1], s, len(s))
        producer = g.foldable_producer(dw.input[0])
        if producer is not None:
            for param in producer.input[1:]:
                g.scale(param, 1.0 / s, len(s))
            placed[dw.name] = "folded"
            continue
        factor = f"{dw.name}/equalize_scale"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).reshape(1, -1, 1, 1), factor))
        scaled = f"{dw.input[0]}/equalized_for/{dw.name}"
        new_nodes[dw.name] = helper.make_node("Mul", [dw.input[0], factor], [scaled], name=f"{dw.name}/equalize")
        dw.input[0] = scaled
        placed[dw.name] = "mul"
    _insert_before(out, new_nodes)
    return out, placed


def equalize_dense_convs(model: onnx.ModelProto, data_batches: list[np.ndarray], alpha: float = DEFAULT_ALPHA,
                         skip: set[str] | frozenset[str] = frozenset(), threads: int | None = None,
                         ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` whose dense convs (group 1, but those in `skip`) read equalized inputs wherever the
    scales fold into the conv that produces the input; the same fp32 function. Returns it and, per equalized
    conv, the conv its input scales were folded into."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for node in out.graph.node:
        if (node.op_type != "Conv" or node.name in skip or _group(node) != 1 or len(node.input) < 2
                or node.input[1] not in g.inits or g.uses[node.input[1]] != 1):
            continue
        producer = g.foldable_producer(node.input[0])
        if producer is not None:
            pairs.append((node, producer))
    ranges = input_channel_ranges(out, [n.input[0] for n, _ in pairs], data_batches, threads)
    folded: dict[str, str] = {}
    for conv, producer in pairs:
        s = channel_scales(ranges[conv.input[0]], alpha)
        if np.all(s == 1.0):
            continue
        weights = g.inits[conv.input[1]]
        value = numpy_helper.to_array(weights)
        scaled = value * s.reshape(1, -1, *([1] * (value.ndim - 2)))  # input channels are axis 1
        weights.CopyFrom(numpy_helper.from_array(scaled.astype(value.dtype), weights.name))
        for param in producer.input[1:]:
            g.scale(param, 1.0 / s, len(s))
        folded[conv.name] = producer.name
    return out, folded


def _insert_before(model: onnx.ModelProto, before: dict[str, onnx.NodeProto]) -> None:
    """Insert each new node right before the node it is keyed by (keeps the node list topologically sorted)."""
    nodes = []
    for node in model.graph.node:
        if node.name in before:
            nodes.append(before[node.name])
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        nodes.append(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
