"""FP16 mixed-precision ONNX with fp32 inputs and outputs.

Two converters, same contract (keep_io_types, named nodes left in fp32):
- ModelOpt AutoCast (`modelopt.onnx.autocast.convert_to_mixed_precision`), NVIDIA's tool for
  TensorRT 11's strongly typed networks, when `nvidia-modelopt[onnx]` is installed;
- otherwise onnxconverter-common's `float16.convert_float_to_float16` (keep_io_types=True) with a
  node block list computed here: nodes that read or write values above FP16_SAFE_MAX on the calibration /
  validation images (they would overflow fp16's 65504 on harder inputs), reductions that accumulate many
  values, and nodes the user excludes; then the converter's fp32->fp16->fp32 cast round trips between
  blocked nodes are removed (they would overflow too).
The nodes left in fp32 are read back from the converted graph and listed, whatever the converter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrdeploy.precision import graph as G

FP16_MAX = 65504.0
# Activations above this on calibration images are kept in fp32: 16x headroom below fp16's maximum,
# for inputs brighter / more extreme than the calibration set.
FP16_SAFE_MAX = 4096.0
# Reductions accumulate up to H*W values; keep them (cheap: their outputs are tiny) in fp32.
FP32_OP_TYPES = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Exp", "Log")
_NON_COMPUTE = {"Cast", "Constant", "Shape", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Gather", "Concat",
                "Slice", "Split", "Transpose", "Flatten", "Expand"}


def activation_max(
    model: onnx.ModelProto, data_batches: list[np.ndarray], threads: int | None = None
) -> dict[str, float]:
    """Max |value| of every float node output over the given batches (fp32 graph on onnxruntime CPU)."""
    from hrdeploy.precision.evaluate import run_model

    tensors = G.float_tensors(model)
    probe = G.with_outputs(model, list(tensors))
    maxima: dict[str, float] = {}
    for batch in data_batches:
        outs = run_model(probe, batch, threads=threads)
        for name, value in outs.items():
            if name in tensors and value.size:
                maxima[name] = max(maxima.get(name, 0.0), float(np.nanmax(np.abs(value.astype(np.float32)))))
    return maxima


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes of a converted graph that still produce fp32 tensors (casts and shape ops aside)."""
    types = G.tensor_types(model)
    out_names = {o.name for o in model.graph.output}
    kept = []
    for node in model.graph.node:
        if node.op_type in _NON_COMPUTE:
            continue
        outs = [types.get(o) for o in node.output if o and o not in out_names]
        if any(t == onnx.TensorProto.FLOAT for t in outs):
            kept.append(node.name)
    return kept


def remove_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Short-circuit Cast(fp32->fp16) -> Cast(fp16->fp32) pairs in place; return how many were removed.

    onnxconverter-common casts every blocked node's output to fp16 and back to fp32 for a blocked consumer;
    the round trip turns values beyond 65504 into inf although both ends run in fp32.
    """

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    cons = G.consumers(model)
    rename: dict[str, str] = {}
    for node in model.graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT16:
            continue
        for user in cons.get(node.output[0], []):
            if cast_to(user) == onnx.TensorProto.FLOAT:
                rename[user.output[0]] = node.input[0]
    if not rename:
        return 0
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    removed = [name for name in rename if name not in graph_outputs]
    G.prune_dead_nodes(model)
    return len(removed)


def _overflow_nodes(model: onnx.ModelProto, maxima: dict[str, float]) -> dict[str, float]:
    """Nodes that read or write a tensor too large for fp16, with that magnitude. Blocking only the producer
    would still cast its output to fp16 for the consumers downstream, so both ends stay fp32."""
    overflow = {}
    for node in model.graph.node:
        value = max((maxima.get(t, 0.0) for t in [*node.input, *node.output] if t), default=0.0)
        if value > FP16_SAFE_MAX:
            overflow[node.name] = value
    return overflow


def _autocast(model: onnx.ModelProto, data_batches: list[np.ndarray], block_nodes: list[str],
              workdir: str | os.PathLike) -> onnx.ModelProto:
    """ModelOpt AutoCast's fp16 graph, fp32 I/O, `block_nodes` and FP32_OP_TYPES kept fp32."""
    import re

    from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision

    configure_logging("WARNING")  # AutoCast logs every node it skips at INFO
    src_named = Path(workdir) / "named.onnx"
    onnx.save(model, src_named)
    calib = Path(workdir) / "calib.npz"
    np.savez(calib, **{model.graph.input[0].name: data_batches[0]})  # one batch the graph accepts
    return convert_to_mixed_precision(
        os.fspath(src_named),
        low_precision_type="fp16",
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in block_nodes],
        op_types_to_exclude=list(FP32_OP_TYPES),
        keep_io_types=True,
        calibration_data=os.fspath(calib),
    )


def _float16(model: onnx.ModelProto, block_nodes: list[str]) -> onnx.ModelProto:
    """onnxconverter-common's fp16 graph, fp32 I/O, `block_nodes` and FP32_OP_TYPES kept fp32."""
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OP_TYPES),
        node_block_list=block_nodes,
    )
    remove_fp16_round_trips(converted)
    return converted


def convert_fp16(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    data_batches: list[np.ndarray],
    exclude_nodes: list[str],
    backend: str,
    workdir: str | os.PathLike,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write the fp16 graph of `src` to `dst`; return what was kept in fp32 and why."""
    model = G.ensure_node_names(onnx.load(os.fspath(src)))
    by_name = {n.name: n for n in model.graph.node}
    maxima = activation_max(model, data_batches, threads=threads)
    overflow = _overflow_nodes(model, maxima)
    block_nodes = sorted(set(overflow) | set(exclude_nodes))
    if backend == "modelopt":
        converted = _autocast(model, data_batches, block_nodes, workdir)
    else:
        converted = _float16(model, block_nodes)
    onnx.save(converted, os.fspath(dst))

    kept = fp32_nodes(converted)
    kept_ops: dict[str, int] = {}
    for name in kept:
        op = by_name[name].op_type if name in by_name else "?"
        kept_ops[op] = kept_ops.get(op, 0) + 1
    low = sum(1 for n in converted.graph.node if n.op_type not in _NON_COMPUTE) - len(kept)
    return {
        "converter": "modelopt.autocast" if backend == "modelopt" else "onnxconverter_common.float16",
        "fp16_safe_max": FP16_SAFE_MAX,
        "fp32_op_types": list(FP32_OP_TYPES),
        "overflow_nodes": {n: round(v, 1) for n, v in sorted(overflow.items(), key=lambda kv: -kv[1])},
        "excluded_nodes": sorted(exclude_nodes),
        "kept_fp32_nodes": kept,
        "kept_fp32_by_op": dict(sorted(kept_ops.items())),
        "fp16_compute_nodes": low,
        "max_activation": round(max(maxima.values(), default=0.0), 3),
    }
