"""Divergence localisation: find the first node of a deployed ONNX whose output leaves tolerance.

The technique is Polygraphy's `--onnx-outputs mark all` bisection aid (polygraphy/tools/run and
comparator/compare.py): every intermediate float tensor of the graph is made a graph output, the
deployed graph and a reference are run on the same input, and tensors of the same name are compared
in topological order. The first tensor whose error exceeds the artifact's tolerance names the node.

Two references:
- another ONNX (the bundle's fp32 model.onnx for fp16 / int8 artifacts): precision conversion and
  Q/DQ insertion keep the original tensor names, so names match directly;
- the eager model (for the fp32 ONNX itself): the dynamo exporter names each ONNX value after the
  torch.export FX node that produced it, so the eager model is re-traced with torch.export, decomposed
  with the same ONNX registry, and run node by node (torch.fx.Interpreter) to get the same names,
  each with the module path that produced it (`nn_module_stack`). The TorchScript exporter names nodes
  by module scope instead ("/backbone/stage1/stage1.2/.../conv/Conv"): the eager model is run with
  forward hooks that rebuild each module call's scope the same way, and a call's output is compared
  with the value of the last node (in graph order) inside its scope.

Intermediates are fetched in chunks of at most `budget_bytes` so large networks do not exhaust memory;
scanning stops at the first divergence.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from hrdeploy.parity.compare import tensor_stats as tensor_metrics

FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: np.float32}  # onnx.TensorProto codes
DEFAULT_BUDGET_BYTES = 512 << 20
FUSION_DEPTH = 2  # successors tried when a fused ONNX value keeps an earlier FX name


def _load(path: str | os.PathLike):  # -> onnx.ModelProto
    import onnx

    return onnx.load(os.fspath(path))


def static_shapes(model: Any, input_shape: tuple[int, ...]) -> Any:
    """A copy of `model` with the input fixed to `input_shape` and every value's shape inferred."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, input_shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference failures only cost us the byte estimates and value types
        return model


def float_intermediates(model: Any) -> list[dict[str, Any]]:
    """Float intermediate tensors in topological order: name, producing node, op type, est. bytes."""
    known = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in FLOAT_TYPES:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
            known[vi.name] = int(np.prod(dims)) * np.dtype(FLOAT_TYPES[tt.elem_type]).itemsize if dims else 0
    out = []
    for node in model.graph.node:
        for name in node.output:
            if name in known:
                out.append({"tensor": name, "node": node.name, "op": node.op_type, "bytes": known[name]})
    return out


def _chunks(tensors: list[dict[str, Any]], budget: int) -> Iterable[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    used = 0
    for t in tensors:
        if chunk and used + t["bytes"] > budget:
            yield chunk
            chunk, used = [], 0
        chunk.append(t)
        used += t["bytes"]
    if chunk:
        yield chunk


class ExposedSession:
    """Runs an ONNX model with any of its intermediate tensors exposed as outputs (onnxruntime CPU)."""

    def __init__(self, model: Any, threads: int | None = None) -> None:
        self.model = model
        self.value_info = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
        self.threads = threads

    def run(self, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        import onnx

        from hrdeploy.runtime.onnxruntime import ort_session

        model = onnx.ModelProto.FromString(self.model.SerializeToString())
        existing = {o.name for o in model.graph.output}
        for name in names:
            if name not in existing:
                model.graph.output.append(self.value_info[name])
        sess = ort_session(model, self.threads)
        input_name = sess.get_inputs()[0].name
        outs = sess.run(names, {input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs, strict=True)}


# names -> {name: [(reference name, tensor as numpy, module path), ...]}, candidates in order
Reference = Callable[[set[str]], dict[str, list[tuple[str, Any, str]]]]


def fx_reference(
    model: Any,
    x: np.ndarray,
    opset: int = 18,
    *,
    dynamic_batch: bool = False,
    dynamic_shape: bool = False,
    stride: int = 32,
) -> Reference:
    """A function names -> {name: [(fx name, tensor as numpy, module path), ...]} from the eager model.

    The trace is the one the dynamo exporter makes (torch.export with the same dynamic dims as
    hrdeploy.export.onnx_export, then the ONNX registry's decompositions), so FX node names equal the
    ONNX value names it emits. The exporter's optimiser fuses some ops (Conv+BatchNormalization) and
    the fused value keeps one of the two names, so each name comes with the values of its first few
    successors as alternative candidates, in order.
    """
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ep = _export_decomposed(model, xt, opset, _export_dims(dynamic_batch, dynamic_shape, stride))
    modules, successors = _fx_index(ep)
    graph_module = ep.module()

    def fetch(names: set[str]) -> dict[str, list[tuple[str, Any, str]]]:
        found = _run_fx(graph_module, xt, set(names).union(*(successors.get(n, []) for n in names)))
        return {
            n: [(c, found[c], modules.get(c, "")) for c in [n, *successors.get(n, [])] if c in found]
            for n in names
            if n in found
        }

    return fetch


def _export_dims(dynamic_batch: bool, dynamic_shape: bool, stride: int) -> dict[int, Any]:
    """torch.export dynamic dims of the input, as hrdeploy.export.onnx_export declares them."""
    import torch

    dims: dict[int, Any] = {}
    if dynamic_batch or dynamic_shape:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_shape:
        dims[2] = stride * torch.export.Dim("h_blocks", min=2, max=4096 // stride)
        dims[3] = stride * torch.export.Dim("w_blocks", min=2, max=4096 // stride)
    return dims


def _export_decomposed(model: Any, xt: Any, opset: int, dims: dict[int, Any]) -> Any:
    """The ExportedProgram the dynamo exporter translates: torch.export, then the ONNX registry's decompositions."""
    import torch
    from torch.onnx._internal.exporter import _fx_passes, _registration

    registry_log = logging.getLogger(_registration.__name__)  # "torchvision is not installed" notices
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's internal pytree deprecation notices
            ep = torch.export.export(model.eval(), (xt,), dynamic_shapes=(dims,) if dims else None, strict=False)
            return _fx_passes.decompose_with_registry(ep, _registration.ONNXRegistry.from_torchlib(opset))
    finally:
        registry_log.setLevel(level)


def _fx_index(ep: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Per FX node: the module path that produced it, and its successors up to FUSION_DEPTH calls away."""
    modules: dict[str, str] = {}
    successors: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        modules[node.name] = list(stack.values())[-1][0] if stack else ""
        chain, frontier = [], [node]
        for _ in range(FUSION_DEPTH):
            frontier = [u for f in frontier for u in f.users if u.op == "call_function"]
            chain += [u.name for u in frontier]
        successors[node.name] = chain
    return modules, successors


def _run_fx(graph_module: Any, xt: Any, wanted: set[str]) -> dict[str, np.ndarray]:
    """Run the FX graph node by node; the float values of the nodes named in `wanted`."""
    import torch

    found: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if n.name in wanted and isinstance(result, torch.Tensor) and result.is_floating_point():
                found[n.name] = result.detach().float().numpy().copy()
            return result

    with torch.no_grad():
        Recorder(graph_module).run(xt)
    return found


def _scope_segment(path: str) -> str:
    """A module's segment in TorchScript ONNX node names: its path from the last non-numeric atom on
    ("backbone.stage1.2" -> "stage1.2"), as torch.onnx.utils._setup_trace_module_map names scopes."""
    atoms = path.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return path


def scope_reference(model: Any, deployed: Any, x: np.ndarray) -> Reference:
    """A function names -> {name: [(scope, tensor as numpy, module path), ...]} from the eager model, for
    an ONNX graph exported by the TorchScript exporter (node names are module scopes).

    Forward hooks rebuild each module call's scope (a module called again in the same scope gets "_1",
    "_2", ... as the exporter names it). A call's output is matched to the value of the last node in graph
    order inside its scope. Conv+BatchNormalization are fused in the ONNX, so the convolution's value is
    the following BatchNorm's output: each call comes with the outputs of the next FUSION_DEPTH calls to
    finish as alternative candidates, in order.
    """
    tracer = _ScopeTracer(model, x)
    calls, _ = tracer.run(set())
    last = _last_values(deployed)
    by_value: dict[str, list[int]] = {}
    for i, (scope, _) in enumerate(calls):
        if scope in last:
            by_value.setdefault(last[scope], []).append(i)

    def candidates(value: str) -> list[int]:
        out: list[int] = []
        for i in by_value[value]:
            out += [j for j in range(i, min(i + FUSION_DEPTH + 1, len(calls))) if j not in out]
        return out

    def fetch(names: set[str]) -> dict[str, list[tuple[str, Any, str]]]:
        wanted = {n: candidates(n) for n in names if n in by_value}
        _, outputs = tracer.run({i for c in wanted.values() for i in c})
        found = {n: [(calls[i][0], outputs[i], calls[i][1]) for i in c if i in outputs] for n, c in wanted.items()}
        return {n: c for n, c in found.items() if c}

    return fetch


class _ScopeTracer:
    """Runs the eager model with forward hooks that name each module call by its TorchScript scope."""

    def __init__(self, model: Any, x: np.ndarray) -> None:
        import torch

        self.model = model
        self.xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.segments = {m: _scope_segment(p) for p, m in model.named_modules() if p}
        self.paths = {m: p for p, m in model.named_modules() if p}

    def run(self, keep: set[int]) -> tuple[list[tuple[str, str]], dict[int, Any]]:
        """Run the model; return each call's (scope, module path) in finishing order and the kept outputs."""
        import torch

        stack: list[str] = [""]
        seen: dict[str, int] = {}
        calls: list[tuple[str, str]] = []
        outputs: dict[int, Any] = {}

        def pre(module: Any, args: Any) -> None:
            scope = f"{stack[-1]}/{self.segments[module]}"
            count = seen.get(scope, 0)
            seen[scope] = count + 1
            stack.append(scope if count == 0 else f"{scope}_{count}")

        def post(module: Any, args: Any, out: Any) -> None:
            if len(calls) in keep and isinstance(out, torch.Tensor) and out.is_floating_point():
                outputs[len(calls)] = out.detach().float().numpy().copy()  # later in-place ops may change it
            calls.append((stack.pop(), self.paths[module]))

        handles = [h for m in self.segments
                   for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        try:
            with torch.no_grad():
                self.model.eval()(self.xt)
        finally:
            for h in handles:
                h.remove()
        return calls, outputs


def _last_values(deployed: Any) -> dict[str, str]:
    """Scope -> the value of the last node (graph order) inside it, from TorchScript-style node names."""
    last: dict[str, str] = {}
    for node in deployed.graph.node:
        if not node.name.startswith("/") or not node.output:
            continue
        parts = node.name.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            last["/" + "/".join(parts[:depth])] = node.output[0]
    return last


def _entry(t: dict[str, Any], metrics: dict[str, float], module: str = "") -> dict[str, Any]:
    row = {"node": t["node"], "op": t["op"], "tensor": t["tensor"]}
    if module:
        row["module"] = module
    row.update({k: metrics[k] for k in ("max_abs", "max_rel", "cosine")})
    return row


def _diverges(metrics: dict[str, float], max_rel: float, min_cosine: float) -> bool:
    rel, cos = metrics["max_rel"], metrics["cosine"]
    return not (math.isfinite(rel) and math.isfinite(cos)) or rel > max_rel or cos < min_cosine


def localize(
    onnx_path: str | os.PathLike,
    x: np.ndarray,
    *,
    reference_onnx: str | os.PathLike | None = None,
    eager_model: Any = None,
    max_rel: float = 1e-3,
    min_cosine: float = 0.99999,
    opset: int = 18,
    exporter: str = "dynamo",
    dynamic_batch: bool = False,
    dynamic_shape: bool = False,
    stride: int = 32,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    threads: int | None = None,
) -> dict[str, Any]:
    """Compare every intermediate of `onnx_path` on input `x` (one batch) against a reference.

    Give either `reference_onnx` (same tensor names) or `eager_model` (the export-friendly eager module
    the ONNX was exported from, with the exporter and dynamic dims it was exported with). Returns {"method",
    "compared", "first_divergence", "last_agreeing", "worst"}; first_divergence is None when every
    matched intermediate is within tolerance.
    """
    deployed = static_shapes(_load(onnx_path), tuple(x.shape))
    reference, method, tensors = _pick_reference(
        deployed, x, float_intermediates(deployed), reference_onnx=reference_onnx, eager_model=eager_model,
        exporter=exporter, threads=threads, opset=opset, dynamic_batch=dynamic_batch, dynamic_shape=dynamic_shape,
        stride=stride,
    )
    result: dict[str, Any] = {
        "reference": "onnx" if reference_onnx is not None else "eager",
        "method": method, "compared": 0, "first_divergence": None, "last_agreeing": None, "worst": None,
    }
    pairs = _matched(tensors, reference, ExposedSession(deployed, threads), x, budget_bytes)
    return _scan(pairs, result, max_rel, min_cosine)


def _pick_reference(
    deployed: Any, x: np.ndarray, tensors: list[dict[str, Any]], *, reference_onnx: str | os.PathLike | None,
    eager_model: Any, exporter: str, threads: int | None, **export: Any,
) -> tuple[Reference, str, list[dict[str, Any]]]:
    """The reference to compare with, how it matches tensors, and the intermediates it can match.

    `export` holds fx_reference's opset and dynamic dims (the dynamo exporter's trace).
    """
    if reference_onnx is not None:
        ref_session = ExposedSession(static_shapes(_load(reference_onnx), tuple(x.shape)), threads)

        def onnx_reference(names: set[str]) -> dict[str, list[tuple[str, Any, str]]]:
            return {k: [(k, v, "")] for k, v in ref_session.run(sorted(names), x).items()}

        name = os.path.basename(os.fspath(reference_onnx))
        return (onnx_reference, f"intermediates vs {name} (onnxruntime, same tensor names)",
                [t for t in tensors if t["tensor"] in ref_session.value_info])
    if eager_model is None:
        raise ValueError("localize needs reference_onnx or eager_model")
    if exporter == "torchscript":
        return (scope_reference(eager_model, deployed, x),
                "intermediates vs eager (module outputs by forward hooks, matched to TorchScript node scopes)", tensors)
    return (fx_reference(eager_model, x, **export),
            "intermediates vs eager (torch.export FX nodes, named as the dynamo exporter names values)", tensors)


def _matched(
    tensors: list[dict[str, Any]], reference: Reference, session: ExposedSession, x: np.ndarray, budget: int
) -> Iterator[tuple[dict[str, Any], np.ndarray, list[tuple[str, Any, str]]]]:
    """Each intermediate the reference has, with its deployed value and the reference candidates, in order.

    Fetched a chunk of at most `budget` bytes at a time, lazily: a scan that stops fetches no further chunk.
    """
    for chunk in _chunks(tensors, budget):
        refs = reference({t["tensor"] for t in chunk})
        chunk = [t for t in chunk if t["tensor"] in refs]
        if not chunk:
            continue
        outs = session.run([t["tensor"] for t in chunk], x)
        for t in chunk:
            yield t, outs[t["tensor"]], refs[t["tensor"]]


def _scan(
    pairs: Iterable[tuple[dict[str, Any], np.ndarray, list[tuple[str, Any, str]]]], result: dict[str, Any],
    max_rel: float, min_cosine: float,
) -> dict[str, Any]:
    """Fill `result` from the pairs in order, stopping at the first one out of tolerance."""
    worst_rel = -1.0
    for t, out, refs in pairs:
        candidates = [(m, c) for _, ref, c in refs if ref.shape == out.shape for m in [tensor_metrics(ref, out)]]
        if not candidates:
            continue
        result["compared"] += 1
        agreeing = [(m, c) for m, c in candidates if not _diverges(m, max_rel, min_cosine)]
        metrics, module = agreeing[0] if agreeing else candidates[0]
        entry = _entry(t, metrics, module)
        rel = metrics["max_rel"] if math.isfinite(metrics["max_rel"]) else math.inf
        if rel > worst_rel:
            worst_rel, result["worst"] = rel, entry
        if not agreeing:
            entry["position"] = result["compared"] - 1  # 0: the first tensor compared already differs
            result["first_divergence"] = entry
            return result
        result["last_agreeing"] = entry
    return result


def describe(result: dict[str, Any]) -> str:
    """One line naming the first diverging node (or why none was found), with the likely cause."""
    first = result.get("first_divergence")
    if first is None:
        if result.get("error"):
            return f"could not localise: {result['error']}"
        if result.get("reference") == "onnx" and result.get("compared"):
            return (f"all {result['compared']} intermediates compared agree with the fp32 model.onnx: the "
                    "difference from eager is already in model.onnx (see its row)")
        return f"no intermediate out of tolerance among {result.get('compared', 0)} compared"
    where = f" in module {first['module']}" if first.get("module") else ""
    line = (
        f"first diverging node {first['node']} ({first['op']}, output {first['tensor']}){where}: "
        f"max rel {first['max_rel']:.3g}, cosine {first['cosine']:.6f}"
    )
    if first.get("position") == 0 and result.get("reference") == "eager":
        line += ("; the very first layer already differs, so the eager model's weights are not the exported "
                 "ones (zoo code, init or checkpoint changed since export?): re-export the bundle")
    return line
