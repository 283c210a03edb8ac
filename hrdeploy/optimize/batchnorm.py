"""Fold inference BatchNormalization into the convolution before it."""

from __future__ import annotations

import numpy as np
import onnx

from hrdeploy.optimize.graph import GraphIndex, add_initializer, attr, replace_nodes


def batchnorm_into_conv(model: onnx.ModelProto) -> int:
    """Conv -> BatchNormalization (constant statistics, Conv output read only by it) -> one Conv.

    Identity: BN(y) = s * y + (beta - s * mean) with s = gamma / sqrt(var + eps), per output channel, and
    y = W * x + b is linear in W and b, so BN(conv(x)) = conv(x; s W, s (b - mean) + beta). Exact up to
    fp32 rounding of the folded weights.
    """
    g = model.graph
    index = GraphIndex(g)
    remove: set[int] = set()
    done = 0
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        conv = index.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or index.only_consumer(conv.output[0]) is not bn:
            continue
        consts = [index.const(name) for name in bn.input[1:5]]
        w = index.const(conv.input[1])
        b = index.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or any(c is None for c in consts) or (len(conv.input) > 2 and conv.input[2] and b is None):
            continue
        gamma, beta, mean, var = (c.astype(np.float64) for c in consts)
        scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        bias = (np.zeros_like(mean) if b is None else b.astype(np.float64) - mean) * scale + beta
        if b is None:
            bias = beta - mean * scale
        new_w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        inputs = [conv.input[0], add_initializer(g, f"{conv.input[1]}_bn", new_w),
                  add_initializer(g, f"{bn.output[0]}_bias", bias.astype(w.dtype))]
        del conv.input[:]
        conv.input.extend(inputs)
        conv.output[0] = bn.output[0]
        remove.add(id(bn))
        done += 1
    replace_nodes(g, remove, {})
    return done
