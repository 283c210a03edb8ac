"""Shifted INT8 activations: the full 8 bits for the non-negative inputs of INT8 convs.

TensorRT quantizes activations symmetrically (zero point 0), so a ReLU output calibrated to [0, a] is rounded to
the 128 codes 0..127 of step a/127 and the negative codes go unused. Shifting the tensor by half its range before
quantizing puts it on all 256 codes: t' = t - c with c = 128 s, s = a/255, quantized with scale s and zero point 0
(so t' in [-128 s, 127 s]), then the conv adds back what the shift took away:

    conv(t) = conv(t' + c) = conv(t') + c * conv(1)

where conv(1) is the conv of a tensor of ones under the conv's own zero padding (per output channel the sum of
its weights inside the picture, less at the padded borders), a constant added right after the conv (a full map
for padded convs, one value per channel otherwise). This is
the numerics of an unsigned INT8 activation (zero point -128) with TensorRT's symmetric Q/DQ: rounding noise
halves for the same range. It is exact up to float rounding in the shift (tests/test_precision_shift.py).

Only tensors that are non-negative by construction are shifted (ReLU or sigmoid outputs, and what slicing,
concatenation, adding, pooling or linear resizing of them makes), so no deployment input can fall outside the range
calibration saw any more than before. `graph.bypass_qdq` undoes the shift for a conv it takes out of INT8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from hrdeploy.precision import graph as G

_SOURCES = {"Relu", "Sigmoid"}
# Ops whose output is non-negative when the inputs listed here are (None: every input).
_PRESERVING: dict[str, tuple[int, ...] | None] = {
    "Slice": (0,), "Gather": (0,), "Reshape": (0,), "Transpose": (0,), "Flatten": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Identity": (0,), "MaxPool": (0,), "AveragePool": (0,), "GlobalAveragePool": (0,),
    "Split": (0,), "Resize": (0,), "Concat": None, "Add": None, "Mul": None,
}


def nonnegative_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that no input can make negative: outputs of ReLU/sigmoid and of sign-preserving ops on them."""
    out: set[str] = set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Resize" and G.attribute(node, "mode", b"nearest") == b"cubic":
            continue  # cubic interpolation overshoots below zero
        watch = _PRESERVING.get(node.op_type, ())
        if node.op_type in _SOURCES:
            ok = True
        elif watch is None:
            ok = all(i in out for i in node.input if i)
        else:
            ok = bool(watch) and all(node.input[i] in out for i in watch if i < len(node.input))
        if ok:
            out.update(o for o in node.output if o)
    return out


def _ones_response(weight: np.ndarray, in_shape: list[int], node: onnx.NodeProto) -> np.ndarray:
    """conv(1) [1, O, H', W']: the conv (zero padding, no bias) of a tensor of ones shaped [1, C, H, W]."""
    import torch

    pads = list(G.attribute(node, "pads", [0, 0, 0, 0]))
    x = torch.nn.functional.pad(torch.ones([1, *in_shape[1:]], dtype=torch.float64),
                                (pads[1], pads[3], pads[0], pads[2]))
    y = torch.nn.functional.conv2d(x, torch.from_numpy(weight.astype(np.float64)),
                                   stride=list(G.attribute(node, "strides", [1, 1])),
                                   dilation=list(G.attribute(node, "dilations", [1, 1])),
                                   groups=int(G.attribute(node, "group", 1)))
    return y.numpy()


def _shiftable_readers(q: onnx.NodeProto, nonneg: set[str], inits: dict[str, onnx.TensorProto],
                       prod: dict[str, onnx.NodeProto], cons: dict[str, list[onnx.NodeProto]],
                       shapes: dict[str, list[int]]) -> list[onnx.NodeProto]:
    """The convs reading activation Q `q` when its tensor can be shifted: non-negative, one scale, read only by
    convs (as their input, with int8 constant weights, at known shapes) through DequantizeLinear. Else []."""
    if q.op_type != "QuantizeLinear" or q.input[0] not in nonneg or q.input[1] not in inits \
            or numpy_helper.to_array(inits[q.input[1]]).size != 1:
        return []
    dqs = cons.get(q.output[0], [])
    if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
        return []
    readers = [(d, c) for d in dqs for c in cons.get(d.output[0], [])]
    for d, c in readers:
        weight = prod.get(c.input[1]) if c.op_type == "Conv" and len(c.input) > 1 else None
        if (c.input[0] != d.output[0] or weight is None or weight.op_type != "DequantizeLinear"
                or weight.input[0] not in inits or c.input[0] not in shapes or c.output[0] not in shapes):
            return []
    return [c for _, c in readers]


def shift_activations(qdq: onnx.ModelProto, input_hw: tuple[int, int]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Copy of an ORT Q/DQ graph with every non-negative conv input shifted (module doc); and a record of it."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    prod, cons = G.producers(model), G.consumers(model)
    nonneg = nonnegative_tensors(model)
    shapes = G.static_shapes(model, input_hw)
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    after: dict[str, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    shifted: list[str] = []
    for q in list(graph.node):
        convs = _shiftable_readers(q, nonneg, inits, prod, cons, shapes)
        if not convs:
            continue
        new_scale = float(numpy_helper.to_array(inits[q.input[1]]).reshape(())) * 127.0 / 255.0
        shift = 128.0 * new_scale
        t = q.input[0]
        names = {"c": f"{q.name}{G.SHIFT_SUFFIX}.c", "s": f"{q.name}{G.SHIFT_SUFFIX}.scale",
                 "t": f"{t}{G.SHIFT_SUFFIX}"}
        new_inits += [numpy_helper.from_array(np.array(shift, np.float32), names["c"]),
                      numpy_helper.from_array(np.array(new_scale, np.float32), names["s"])]
        before[q.name] = [onnx.helper.make_node("Sub", [t, names["c"]], [names["t"]], name=f"{q.name}{G.SHIFT_SUFFIX}")]
        q.input[0], q.input[1] = names["t"], names["s"]
        for dq in cons[q.output[0]]:
            dq.input[1] = names["s"]
        for conv in convs:
            weight = G.dequantize_constant(model, prod[conv.input[1]])
            back = shift * _ones_response(weight, shapes[conv.input[0]], conv)
            if np.all(back == back[:, :, :1, :1]):  # no padding: one value per channel, broadcast
                back = back[:, :, :1, :1]
            raw, name = f"{conv.output[0]}{G.SHIFT_BACK_SUFFIX}.in", f"{conv.name}{G.SHIFT_BACK_SUFFIX}"
            new_inits.append(numpy_helper.from_array(back.astype(np.float32), f"{name}.map"))
            after[conv.name] = [onnx.helper.make_node("Add", [raw, f"{name}.map"], [conv.output[0]], name=name)]
            conv.output[0] = raw
        shifted.append(t)
    nodes = []
    for node in graph.node:
        nodes += [*before.get(node.name, []), node, *after.get(node.name, [])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return G.prune_dead_nodes(model), {"shifted_tensors": len(shifted), "shifted_convs": len(after)}
