"""Diagnostics of a precision variant on onnxruntime CPU: layer drift, input-noise floor, block sensitivity.

(The pass/fail verdict against eager fp32 is hrdeploy.parity's.)
- `layer_drift`: every float node output common to the fp32 graph and the variant, ranked by relative
  L2 error (cumulative drift: where the variant's activations depart from fp32 the most).
- `block_sensitivity` (Q/DQ graphs): quantize one block at a time (all other Q/DQ bypassed, fp32 weights
  restored) and rank blocks by the output error each one adds on its own, in the spirit of Polygraphy's
  layer-wise debugging and ModelOpt's sensitivity analysis.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx

from hrdeploy.parity.compare import cosine, rel_l2
from hrdeploy.precision import graph as G
from hrdeploy.runtime.onnxruntime import ort_session


def run_model(
    model: onnx.ModelProto | str | os.PathLike, data: np.ndarray, threads: int | None = None, sess: Any = None
) -> dict[str, np.ndarray]:
    """All outputs of `model` on one batch, as float32 numpy arrays by name."""
    sess = sess or ort_session(model, threads)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(data, dtype=np.float32)})
    return {n: np.asarray(o).astype(np.float32) for n, o in zip(names, outs, strict=True)}


def layer_drift(
    fp32: onnx.ModelProto,
    variant: onnx.ModelProto,
    data: np.ndarray,
    scopes: dict[str, str],
    top: int = 5,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """The `top` node outputs (common to both graphs) whose values depart most from fp32."""
    ref_tensors = G.float_tensors(fp32)
    var_tensors = G.float_tensors(variant)
    common = [name for name in ref_tensors if name in var_tensors]
    ref = run_model(G.with_outputs(fp32, common), data, threads=threads)
    out = run_model(G.with_outputs(variant, common), data, threads=threads)
    by_name = {n.name: n for n in fp32.graph.node}
    rows = []
    for name in common:
        if name not in ref or name not in out or ref[name].shape != out[name].shape:
            continue
        node = by_name.get(ref_tensors[name])
        rows.append({
            "tensor": name,
            "node": ref_tensors[name],
            "op": node.op_type if node is not None else "?",
            "scope": scopes.get(ref_tensors[name], ""),
            "rel_l2": rel_l2(ref[name], out[name]),
            "cosine": cosine(ref[name], out[name]),
        })
    rows.sort(key=lambda r: -r["rel_l2"])
    return rows[:top]


def input_noise_reference(fp32: onnx.ModelProto, data: np.ndarray, threads: int | None = None) -> dict[str, Any]:
    """How far the fp32 graph's output moves when only its input carries int8 rounding noise.

    Uniform noise of +-half an int8 step (step = max |x| / 127) on the input, fixed seed. A network that
    amplifies such noise (seeded random weights do: there is no training to make it robust) cannot stay close
    to fp32 under int8 whatever the Q/DQ placement, so this is the floor to read the int8 numbers against.
    """
    step = float(np.abs(data).max()) / 127.0
    noise = np.random.default_rng(0).uniform(-0.5 * step, 0.5 * step, data.shape).astype(np.float32)
    sess = ort_session(fp32, threads)
    ref = run_model(fp32, data, sess=sess)
    out = run_model(fp32, data + noise, sess=sess)
    name = next(iter(ref))
    return {"output": name, "input_rel_l2": rel_l2(data, data + noise), "rel_l2": rel_l2(ref[name], out[name]),
            "cosine": cosine(ref[name], out[name])}


def block_sensitivity(
    float_ref: onnx.ModelProto,
    qdq: onnx.ModelProto,
    data: np.ndarray,
    scopes: dict[str, str],
    max_blocks: int = 12,
    threads: int | None = None,
) -> dict[str, Any]:
    """Rank blocks by the output error their quantization adds alone (everything else fp32)."""
    quantized, _ = G.conv_quant_status(qdq)
    q_other = [n.name for n in qdq.graph.node if n.op_type in ("Gemm", "MatMul") and n.name not in quantized]
    names = quantized + q_other
    blocks = G.group_blocks(names, scopes, max_blocks=max_blocks)
    weights = G.conv_float_weights(float_ref)
    ref = run_model(float_ref, data, threads=threads)
    baseline = run_model(G.bypass_qdq(qdq, set(), weights), data, threads=threads)
    full = run_model(qdq, data, threads=threads)
    out_name = next(iter(ref))

    def err(out: dict[str, np.ndarray]) -> float:
        return rel_l2(ref[out_name], out[out_name])

    rows = []
    for block, members in blocks.items():
        out = run_model(G.bypass_qdq(qdq, set(members), weights), data, threads=threads)
        rows.append({"block": block, "convs": len(members), "rel_l2": err(out),
                     "cosine": cosine(ref[out_name], out[out_name])})
    rows.sort(key=lambda r: -r["rel_l2"])
    return {
        "output": out_name,
        "full_rel_l2": err(full),
        "full_cosine": cosine(ref[out_name], full[out_name]),
        "bypass_rel_l2": err(baseline),  # all Q/DQ bypassed: ~0 (checks the method itself)
        "blocks": rows,
    }
