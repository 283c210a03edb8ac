"""Channel-shuffle passes: shuffles become one Gather over channels, which then merges into the Split
that follows it, or into the weights of the convolutions that read it, or (a shuffle of a Concat) into
a stack of the concatenated parts.

A ShuffleNet channel shuffle exports as Reshape(-1, g, c/g, H, W) -> Transpose(0, 2, 1, 3, 4) ->
Reshape(-1, c, H, W): output channel a*g + b is input channel b*(c/g) + a, a pure permutation of
channels. Gather(axis=1) with that index list moves the same data with one node (onnxruntime copies
whole H x W planes; TensorRT gets one Gather layer instead of a Shuffle-Transpose-Shuffle chain).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from hrdeploy.optimize.graph import GraphIndex, add_initializer, attr, replace_nodes

SHUFFLE_PERM = [0, 2, 1, 3, 4]


def _static_hw(index: GraphIndex, name: str) -> tuple[int, int, int] | None:
    vi = index.value_info.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    return dims[1].dim_value, dims[2].dim_value, dims[3].dim_value


def _shuffle_index(index: GraphIndex, r1: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray] | None:
    """(transpose, second reshape, channel index) when `r1` starts a channel shuffle of a static-CHW input."""
    t = index.only_consumer(r1.output[0])
    if t is None or t.op_type != "Transpose" or list(attr(t, "perm", [])) != SHUFFLE_PERM:
        return None
    r2 = index.only_consumer(t.output[0])
    if r2 is None or r2.op_type != "Reshape":
        return None
    s5, s4, chw = index.const(r1.input[1]), index.const(r2.input[1]), _static_hw(index, r1.input[0])
    if s5 is None or s4 is None or chw is None or s5.shape != (5,) or s4.shape != (4,):
        return None
    c, h, w = chw
    g, cg = int(s5[1]), int(s5[2])
    if 0 in s5 or 0 in s4:
        return None  # a 0 copies an input dim (or means 0 under allowzero): not the plain shuffle form
    if g * cg != c or list(s5[3:]) != [h, w] or list(s4[1:]) != [c, h, w] or s5[0] != -1 or s4[0] != -1:
        return None
    return t, r2, np.array([b * cg + a for a in range(cg) for b in range(g)], dtype=np.int64)


def shuffle_to_gather(model: onnx.ModelProto) -> int:
    """Reshape -> Transpose(0,2,1,3,4) -> Reshape channel shuffles -> Gather(axis=1, permutation).

    Exact: both move input channel b*(c/g) + a to output channel a*g + b and touch no value; the batch
    stays -1 (inferred). Only static C, H, W shuffles whose reshapes match that form are rewritten.
    """
    g = model.graph
    index = GraphIndex(g)
    remove: set[int] = set()
    insert: dict[int, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type != "Reshape" or id(n) in remove:
            continue
        found = _shuffle_index(index, n)
        if found is None:
            continue
        t, r2, idx = found
        name = add_initializer(g, f"{r2.output[0]}_channel_order", idx)
        insert[id(n)] = [helper.make_node("Gather", [n.input[0], name], [r2.output[0]], axis=1,
                                          name=f"{r2.name or r2.output[0]}_gather")]
        remove |= {id(n), id(t), id(r2)}
    replace_nodes(g, remove, insert)
    return len(insert)


def _split_sizes(index: GraphIndex, split: onnx.NodeProto, total: int) -> list[int] | None:
    if len(split.input) > 1 and split.input[1]:
        sizes = index.const(split.input[1])
        return None if sizes is None else [int(s) for s in sizes]
    parts = attr(split, "num_outputs") or len(split.output)
    if total % parts:  # onnx: the last chunk is smaller when it does not divide; not seen in these graphs
        return None
    return [total // parts] * parts


def _channel_slice(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, int] | None:
    """(start, end) of a step-1 Slice over axis 1 with constant bounds, else None."""
    if node.op_type != "Slice" or len(node.input) < 4:
        return None
    starts, ends, axes = (index.const(node.input[k]) for k in (1, 2, 3))
    steps = index.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if any(v is None or v.shape != (1,) for v in (starts, ends, axes, steps)) or axes[0] != 1 or steps[0] != 1:
        return None
    return int(starts[0]), int(ends[0])


def _parts(index: GraphIndex, user: onnx.NodeProto, idx: np.ndarray) -> list[tuple[str, np.ndarray]] | None:
    """(output, gathered channels) per output of a Split or Slice over axis 1 of Gather(x, idx)."""
    if user.op_type == "Split" and attr(user, "axis", 0) == 1:
        sizes = _split_sizes(index, user, len(idx))
        if sizes is None or sum(sizes) != len(idx) or len(sizes) != len(user.output):
            return None
        bounds = np.cumsum([0, *sizes])
        return [(out, idx[a:b]) for out, a, b in zip(user.output, bounds[:-1], bounds[1:], strict=True)]
    span = _channel_slice(index, user)
    return None if span is None else [(user.output[0], idx[span[0]:span[1]])]  # python slicing = onnx clamping


def gather_into_split(model: onnx.ModelProto) -> int:
    """Gather(x, idx, axis=1) read only by Splits / Slices over axis 1 -> one Gather(x, idx[part]) per part.

    Exact: a part holding channels [s, e) of the gathered tensor holds x's channels idx[s:e]. One copy per
    part instead of a gather plus a split.
    """
    g = model.graph
    index = GraphIndex(g)
    remove: set[int] = set()
    insert: dict[int, list[onnx.NodeProto]] = {}
    done = 0
    for n in g.node:
        if n.op_type != "Gather" or attr(n, "axis", 0) != 1 or n.output[0] in index.graph_outputs:
            continue
        idx = index.const(n.input[1])
        users = index.consumers.get(n.output[0], [])
        if idx is None or idx.ndim != 1 or not users:
            continue
        parts = [_parts(index, u, idx) for u in users]
        if any(p is None for p in parts):
            continue
        for user, user_parts in zip(users, parts, strict=True):
            nodes = []
            for out, channels in user_parts:
                name = add_initializer(g, f"{out}_channel_order", channels.copy())
                nodes.append(helper.make_node("Gather", [n.input[0], name], [out], axis=1, name=f"{out}_gather"))
            insert[id(user)] = nodes
            remove.add(id(user))
        remove.add(id(n))
        done += 1
    replace_nodes(g, remove, insert)
    return done


def gather_into_conv(model: onnx.ModelProto) -> int:
    """A channel permutation read only by ungrouped convolutions with constant weights is absorbed into
    their weights: conv(x[:, idx], W) == conv(x, W') with W'[:, idx[j]] = W[:, j].

    Exact: the same products are summed (in the same order of output channels; the input-channel sum is
    reordered, which changes fp32 rounding only at the last bit).
    """
    g = model.graph
    index = GraphIndex(g)
    remove: set[int] = set()
    done = 0
    for n in g.node:
        if n.op_type != "Gather" or attr(n, "axis", 0) != 1 or n.output[0] in index.graph_outputs:
            continue
        idx = index.const(n.input[1])
        users = index.consumers.get(n.output[0], [])
        if idx is None or idx.ndim != 1 or not users or sorted(idx.tolist()) != list(range(len(idx))):
            continue
        if index.channels(n.input[0]) != len(idx):
            continue
        if not all(u.op_type == "Conv" and attr(u, "group", 1) == 1 and u.input[0] == n.output[0]
                   and index.const(u.input[1]) is not None for u in users):
            continue
        for u in users:
            w = index.const(u.input[1])
            moved = np.empty_like(w)
            moved[:, idx] = w
            u.input[1] = add_initializer(g, f"{u.input[1]}_absorbed", moved)
            u.input[0] = n.input[0]
        remove.add(id(n))
        done += 1
    replace_nodes(g, remove, {})
    return done


def shuffle_concat_to_stack(model: onnx.ModelProto) -> int:
    """Gather(Concat(x_0 .. x_{g-1}), shuffle index) -> Unsqueeze each x_k at axis 2, Concat on axis 2,
    Reshape(-1, c, H, W).

    Identity: a shuffle by g of g equal parts interleaves them, output channel a*g + k = x_k's channel a,
    which is exactly stacking the parts on a new axis after the channels and flattening it. Exact (data
    movement only). One copy (the Concat) instead of two (Concat, then the permuting Gather); Unsqueeze and
    Reshape only relabel the buffer.
    """
    g = model.graph
    index = GraphIndex(g)
    remove: set[int] = set()
    insert: dict[int, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type != "Gather" or attr(n, "axis", 0) != 1:
            continue
        idx, cat = index.const(n.input[1]), index.producer.get(n.input[0])
        if idx is None or cat is None or cat.op_type != "Concat" or attr(cat, "axis") != 1:
            continue
        if index.only_consumer(cat.output[0]) is not n or id(cat) in remove:
            continue
        parts, chw = [index.channels(x) for x in cat.input], _static_hw(index, cat.output[0])
        if chw is None or None in parts or len(set(parts)) != 1:
            continue
        c, h, w = chw
        groups, per = len(parts), parts[0]
        if len(idx) != c or not np.array_equal(idx, [k * per + a for a in range(per) for k in range(groups)]):
            continue
        axis = add_initializer(g, f"{n.output[0]}_stack_axis", np.array([2], np.int64))
        shape = add_initializer(g, f"{n.output[0]}_stack_shape", np.array([-1, c, h, w], np.int64))
        lifted = [f"{n.output[0]}_part{k}" for k in range(groups)]
        nodes = [helper.make_node("Unsqueeze", [x, axis], [u], name=u) for x, u in zip(cat.input, lifted, strict=True)]
        nodes += [helper.make_node("Concat", lifted, [f"{n.output[0]}_stacked"], axis=2, name=f"{n.output[0]}_stack"),
                  helper.make_node("Reshape", [f"{n.output[0]}_stacked", shape], [n.output[0]],
                                   name=f"{n.output[0]}_flatten")]
        insert[id(cat)] = nodes
        remove |= {id(cat), id(n)}
    replace_nodes(g, remove, insert)
    return len(insert)
