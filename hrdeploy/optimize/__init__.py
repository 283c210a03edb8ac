"""Exact graph passes run on the exported ONNX (after onnxsim): each one rewrites a pattern into an
equivalent cheaper one, and the manifest records what each did (sites, node counts before and after)."""

from __future__ import annotations

from collections.abc import Callable

import onnx

from hrdeploy.optimize.batchnorm import batchnorm_into_conv
from hrdeploy.optimize.graph import drop_unused_initializers
from hrdeploy.optimize.shuffle import (
    gather_into_conv,
    gather_into_split,
    shuffle_concat_to_stack,
    shuffle_to_gather,
)

# In order: later passes match what earlier ones produce.
PASSES: tuple[tuple[str, Callable[[onnx.ModelProto], int]], ...] = (
    ("batchnorm_into_conv", batchnorm_into_conv),
    ("shuffle_to_gather", shuffle_to_gather),
    ("gather_into_split", gather_into_split),
    ("gather_into_conv", gather_into_conv),
    ("shuffle_concat_to_stack", shuffle_concat_to_stack),
)


def optimize_graph(model: onnx.ModelProto, names: tuple[str, ...] | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """Run the passes (all, or those named) on a copy of `model`; returns it and one record per pass:
    {"pass", "sites", "nodes_before", "nodes_after"}. Shapes are re-inferred after every pass that changed
    the graph, since passes read channel counts from them."""
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    records = []
    for name, fn in PASSES:
        if names is not None and name not in names:
            continue
        before = len(out.graph.node)
        sites = fn(out)
        if sites:
            drop_unused_initializers(out.graph)
            del out.graph.value_info[:]
            out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
        records.append({"pass": name, "sites": sites, "nodes_before": before, "nodes_after": len(out.graph.node)})
    onnx.checker.check_model(out)
    return out, records
