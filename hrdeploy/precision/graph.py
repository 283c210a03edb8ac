"""ONNX graph helpers for the precision stage: node scopes, exclusion patterns, conv counts,
intermediate outputs, and Q/DQ bypass (used by the per-block sensitivity report).

Pure onnx/numpy; no onnxruntime here. Q/DQ conventions follow the ONNX operator spec
(QuantizeLinear/DequantizeLinear) and TensorRT's explicit-quantization guide: a quantized Conv reads
its activation through Q->DQ and its weight through DQ (int8 initializer) or Q->DQ (float initializer).
"""

from __future__ import annotations

import ast
import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from hrdeploy.optimize.graph import GraphIndex

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Node-name suffixes of hrdeploy.precision.shift: the shift before an activation's Q, the add-back after a conv.
SHIFT_SUFFIX = "/int8_shift"
SHIFT_BACK_SUFFIX = "/int8_shift_back"
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that produces it."""
    return GraphIndex(model.graph).producer


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    return GraphIndex(model.graph).consumers


def initializer_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes are constants too
        if node.op_type == "Constant":
            names.update(node.output)
    return names


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (exclusion lists and reports refer to nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node's attribute, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def static_shapes(model: onnx.ModelProto, input_hw: tuple[int, int]) -> dict[str, list[int]]:
    """Tensor shapes at batch 1 and `input_hw` (shape inference on a copy whose input is made static)."""
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for i, value in zip((0, 2, 3), (1, *input_hw), strict=True):
        dims[i].Clear()
        dims[i].dim_value = int(value)
    del m.graph.value_info[:]
    m = shape_inference.infer_shapes(m)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*m.graph.input, *m.graph.value_info, *m.graph.output)}


def _module_of_weight(name: str) -> str | None:
    """'stages.0.dw.weight' -> 'stages.0.dw' (exported parameters keep their PyTorch names)."""
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix) and "." in name[: -len(suffix)] + ".":
            return name[: -len(suffix)]
    return None


def _torchscript_scope(node_name: str) -> str:
    """'/backbone/stage1/stage1.2/layers.0/layers.0.0/conv/Conv' -> 'backbone.stage1.2.layers.0.0.conv'.

    The TorchScript exporter names a node by its module scopes, each segment the module's attribute name
    prefixed by its container's ("stage1.2" is item 2 of "stage1"), so a segment that extends the previous
    one replaces it.
    """
    path: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if path and segment.startswith(path[-1] + "."):
            path[-1] = segment
        else:
            path.append(segment)
    return ".".join(path)


def node_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the PyTorch module path it came from ("" when unknown).

    Read, in order, from the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata, from TorchScript-
    style node names ("/stage2/stage2.0/.../Conv"), from the PyTorch name of a node's weight initializer,
    and otherwise inherited from the nearest upstream node that has one (onnxsim drops node metadata,
    but keeps parameter names).
    """
    inits = initializer_names(model)
    own = {node.name: _own_scope(node, inits) for node in model.graph.node}
    # nodes still without a scope (e.g. convs whose folded weights were renamed `_v_123`): the common module
    # prefix of the nearest scoped node upstream and the nearest one downstream
    index = GraphIndex(model.graph)
    prod, cons = index.producer, index.consumers

    def upstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [prod[tensor] for tensor in node.input if tensor in prod]

    def downstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [other for tensor in node.output for other in cons.get(tensor, [])]

    scopes = dict(own)
    for node in model.graph.node:
        if not scopes[node.name]:
            up, down = _nearest_scope(node, own, upstream), _nearest_scope(node, own, downstream)
            scopes[node.name] = _common_scope(up, down) if up and down else _parent(up or down)
    return scopes


def _own_scope(node: onnx.NodeProto, inits: set[str]) -> str:
    """A node's module path from its own metadata, TorchScript-style name or weight name ("" when none)."""
    meta = {p.key: p.value for p in node.metadata_props}
    if _SCOPE_KEY in meta:
        try:
            parts = ast.literal_eval(meta[_SCOPE_KEY])
            scope = next((p for p in reversed(parts[:-1]) if p), "")
        except (ValueError, SyntaxError):
            scope = ""
        if scope:
            return scope
    if node.name.startswith("/") and node.name.count("/") > 1:
        scope = _torchscript_scope(node.name)
        if scope:
            return scope
    for name in node.input[1:]:
        if name in inits and (mod := _module_of_weight(name)):
            return mod
    return ""


def _nearest_scope(start: onnx.NodeProto, own: dict[str, str],
                   neighbours: Callable[[onnx.NodeProto], list[onnx.NodeProto]]) -> str:
    """The own scope of the nearest node, at most 8 `neighbours` steps from `start`, that has one ("" if none)."""
    frontier, seen = [start], {start.name}
    for _ in range(8):
        nxt = []
        for node in frontier:
            for other in neighbours(node):
                if other.name in seen:
                    continue
                if own.get(other.name):
                    return own[other.name]
                seen.add(other.name)
                nxt.append(other)
        frontier = nxt
    return ""


def _common_scope(a: str, b: str) -> str:
    """The module path both `a` and `b` lie in ("stage2.0.x" and "stage2.0.y" -> "stage2.0")."""
    common = []
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _parent(scope: str) -> str:
    return scope.rsplit(".", 1)[0] if "." in scope else scope


def match_nodes(
    model: onnx.ModelProto, patterns: Iterable[str], scopes: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Pattern -> names of the nodes it selects (shell-style globs, case-sensitive).

    A pattern matches a node's name, its op type, or its module path (e.g. '*spatial_weighting*',
    'Sigmoid', 'node_Conv_12', 'backbone.stage2.*').
    """
    scopes = scopes if scopes is not None else node_scopes(model)
    hits: dict[str, list[str]] = {}
    for pattern in patterns:
        hits[pattern] = [
            node.name
            for node in model.graph.node
            if fnmatch.fnmatchcase(node.name, pattern)
            or fnmatch.fnmatchcase(node.op_type, pattern)
            or (scopes.get(node.name) and fnmatch.fnmatchcase(scopes[node.name], pattern))
        ]
    return hits


def _through_qdq(name: str, prod: dict[str, onnx.NodeProto]) -> tuple[bool, str]:
    """(True, source tensor) if `name` is the output of a DequantizeLinear (optionally fed by a Q)."""
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return False, name
    q = prod.get(dq.input[0])
    if q is not None and q.op_type == "QuantizeLinear":
        return True, q.input[0]
    return True, dq.input[0]


def conv_quant_status(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(quantized, unquantized) Conv/ConvTranspose node names: quantized = activation and weight via DQ."""
    prod = producers(model)
    quantized, plain = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        act_q, _ = _through_qdq(node.input[0], prod)
        w_q, _ = _through_qdq(node.input[1], prod)
        (quantized if act_q and w_q else plain).append(node.name)
    return quantized, plain


def qdq_consumers(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes (not Q/DQ) that read at least one input through a DequantizeLinear."""
    prod = producers(model)
    return [node.name for node in model.graph.node
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(_through_qdq(name, prod)[0] for name in node.input if name)]


def non_constant_weight_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes whose weight is computed at run time (cannot take per-channel int8 weights)."""
    inits = initializer_names(model)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in inits]


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX elem type, from shape inference (graph inputs/outputs/value_info)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to whatever the model already declares
        inferred = model
    types = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the named intermediate tensors (typed by shape inference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = tensor_types(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name in existing or name not in types:
            continue
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return out


def float_tensors(model: onnx.ModelProto, op_types: Iterable[str] | None = None) -> dict[str, str]:
    """Float node outputs (tensor -> node name), optionally only those of `op_types`."""
    types = tensor_types(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    wanted = set(op_types) if op_types is not None else None
    result = {}
    for node in model.graph.node:
        if wanted is not None and node.op_type not in wanted:
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant"):
            continue
        for name in node.output:
            if name and types.get(name) in floats:
                result[name] = node.name
    return result


def prune_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes (and initializers) whose outputs nothing reads."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    live_inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)
    return model


def dequantize_constant(model: onnx.ModelProto, dq: onnx.NodeProto) -> np.ndarray:
    """Numerically dequantize a DQ node whose input is an int8 initializer."""
    inits = {init.name: init for init in model.graph.initializer}
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return (q - zp) * scale


def bypass_qdq(
    model: onnx.ModelProto,
    keep: set[str],
    float_weights: dict[str, onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    """Copy of a Q/DQ model where only the nodes in `keep` stay quantized.

    Every other node reads its float activation (the Q's input, unshifted where hrdeploy.precision.shift shifted
    it, and without the shift's add-back after the node) and its float weight: the
    original initializer from `float_weights` (node name -> weight tensor, from the fp32 graph), else the
    dequantized int8 weight. Dangling Q/DQ nodes are pruned. With keep=set() and the fp32 weights, the
    result computes what the fp32 graph computes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    prod = producers(out)
    float_weights = float_weights or {}
    new_inits: list[onnx.TensorProto] = []
    init_names = {init.name for init in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name in keep:
            continue
        for idx, name in enumerate(list(node.input)):
            if not name:
                continue
            is_q, src = _through_qdq(name, prod)
            if not is_q:
                continue
            if idx == 1 and node.op_type in QUANTIZABLE_OPS and node.name in float_weights:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(float_weights[node.name])
                tensor.name = f"{node.name}.float_weight"
                new_inits.append(tensor)
                node.input[idx] = tensor.name
            elif src in init_names and prod[name].input[0] == src:
                # DQ straight from an int8 initializer: no float original available, dequantize it
                arr = dequantize_constant(out, prod[name])
                tensor = numpy_helper.from_array(arr, f"{node.name}.dq_input{idx}")
                new_inits.append(tensor)
                node.input[idx] = tensor.name
            else:
                shift = prod.get(src)
                if shift is not None and shift.op_type == "Sub" and shift.name.endswith(SHIFT_SUFFIX):
                    src = shift.input[0]  # a float node reads the tensor before hrdeploy.precision.shift
                node.input[idx] = src
    _drop_shift_backs(out, keep)
    out.graph.initializer.extend(new_inits)
    return prune_dead_nodes(out)


def _drop_shift_backs(model: onnx.ModelProto, keep: set[str]) -> None:
    """Remove the add-back of hrdeploy.precision.shift after every conv that is no longer quantized."""
    prod = producers(model)
    drop = []
    for node in model.graph.node:
        if node.op_type == "Add" and node.name.endswith(SHIFT_BACK_SUFFIX):
            conv = prod[node.input[0]]
            if conv.name not in keep:
                conv.output[0] = node.output[0]
                drop.append(node)
    for node in drop:
        model.graph.node.remove(node)


def conv_float_weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Quantizable node name -> its float weight initializer (for `bypass_qdq`)."""
    inits = {init.name: init for init in model.graph.initializer}
    return {
        node.name: inits[node.input[1]]
        for node in model.graph.node
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 and node.input[1] in inits
    }


def group_blocks(names: Sequence[str], scopes: dict[str, str], max_blocks: int = 16) -> dict[str, list[str]]:
    """Group node names into blocks by module-path prefix, at most `max_blocks` groups.

    Starts from the first path component and repeatedly splits the largest group one level deeper while
    the total stays within `max_blocks` (so 'backbone.stage1' becomes 'backbone.stage1.0', ... when there is
    room). Nodes without a scope go to '(unscoped)'. Blocks are listed in graph (topological) order.
    """
    parts = {n: (scopes.get(n) or "(unscoped)").split(".") for n in names}
    depth = dict.fromkeys(names, 1)

    def key(n: str) -> str:
        return ".".join(parts[n][: depth[n]])

    def grouping() -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(key(n), []).append(n)
        return groups

    groups = grouping()
    tried: set[str] = set()
    while True:
        splittable = [(len(m), k) for k, m in groups.items()
                      if k not in tried and any(depth[n] < len(parts[n]) for n in m)]
        if not splittable:
            return groups
        _, target = max(splittable)
        saved = dict(depth)
        for n in groups[target]:
            depth[n] = min(depth[n] + 1, len(parts[n]))
        candidate = grouping()
        if len(candidate) > max_blocks:
            depth = saved
            tried.add(target)
        else:
            groups = candidate
