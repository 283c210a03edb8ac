"""Small read/write helpers over an onnx.GraphProto for the graph passes: who produces and consumes a
value, constant initializers, channel counts from shape inference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Producers, consumers and initializers of `graph`; rebuild it after structural edits."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.value_info = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (None for a run-time value)."""
        t = self.initializers.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def channels(self, name: str) -> int | None:
        """Static size of axis 1 of value `name`, if shape inference recorded it."""
        vi = self.value_info.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = vi.type.tensor_type.shape.dim
        return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None


def attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN201 - any attribute type
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def add_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    """Add a constant under a name not used yet in `graph`; returns the name."""
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    unique, k = name, 0
    while unique in taken:
        k += 1
        unique = f"{name}_{k}"
    graph.initializer.append(numpy_helper.from_array(value, unique))
    return unique


def replace_nodes(graph: onnx.GraphProto, remove: set[int], insert: dict[int, list[onnx.NodeProto]]) -> None:
    """Drop nodes whose id() is in `remove`; put `insert[id(n)]` where node n stood (topological order kept
    as long as inserted nodes only read values available at that position)."""
    out: list[onnx.NodeProto] = []
    for n in graph.node:
        out.extend(insert.get(id(n), []))
        if id(n) not in remove:
            out.append(n)
    del graph.node[:]
    graph.node.extend(out)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
