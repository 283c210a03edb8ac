"""TensorRT-compatibility lint of an ONNX graph (`hrdeploy doctor`), without TensorRT or a GPU.

Checks every node against the TensorRT ONNX parser's documented support for one generation
(`hrdeploy.engine.operators`, after onnx-tensorrt `docs/operators.md`) and the restrictions that
table states in prose, plus the graph-level traps that break engine builds of pose networks:

- operator not supported / not in the table; custom-domain operators (need a plugin);
- opset outside the parser's range;
- Conv/ConvTranspose whose weights are not constants: computed from the network input (per-sample
  kernels, Dite-HRNet's dynamic kernel aggregation), or a constant subgraph left unfolded;
- batch-dependent `group` (per-sample kernels folded into groups: only correct at the export batch);
- INT64 tensors into operators TensorRT runs only on float / INT32 types, INT64 network I/O, DOUBLE;
- Resize modes, pooling rank and dilations, MaxPool indices, non-constant `axes` / `K` / `depth`;
- dynamic input dimensions that no optimization profile can be derived for;
- Q/DQ with non-zero, non-constant or unsigned zero-points.

Severities: "error" blocks a build or gives a wrong engine (exit 1), "warning" builds but with a cost
or a limit the user should know, "info" is context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from hrdeploy.engine.operators import TRT10_0_MAX_OPSET, OperatorTable, operator_table

SEVERITIES = ("error", "warning", "info")

_DTYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE",
}
# Ops whose first input is not "the data" in the sense of the table's type column, or that convert types.
_TYPE_CHECK_SKIP = frozenset({
    "Cast", "CastLike", "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "QuantizeLinear",
    "DequantizeLinear", "If", "Loop", "Scan", "NonMaxSuppression", "RandomNormalLike", "RandomUniformLike",
    "EyeLike", "Range",
})
_RESIZE_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_MODES = ("nearest", "linear")
_RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
_POOLS = ("AveragePool", "MaxPool", "LpPool")
_REDUCES = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
# (op, input index, what) that TensorRT needs as build-time constants.
_CONST_INPUTS = {
    "Squeeze": (1, "axes"), "Unsqueeze": (1, "axes"), "CumSum": (1, "axis"), "OneHot": (1, "depth"),
    "TopK": (1, "K"),
}
FIX_DYNAMIC_KERNELS = "export without --no-rewrite so the dynamic-kernel rewrite makes the weights constant"


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    code: str  # stable identifier, e.g. "unsupported-op", "conv-runtime-weights"
    message: str
    node: str = ""  # node name (or "#index:op" when the node has none); "" for graph-level findings
    op: str = ""

    def line(self) -> str:
        where = f"{self.node} ({self.op}): " if self.node else ""
        return f"{self.severity.upper():7s} {self.code}: {where}{self.message}"


@dataclass
class LintReport:
    path: str
    generation: int
    opset: int | None
    nodes: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No blockers (errors)."""
        return not self.errors

    def codes(self, severity: str | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def summary(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        n_info = len(self.findings) - n_err - n_warn
        verdict = "clean" if not self.findings or (n_err == 0 and n_warn == 0) else (
            "BLOCKED" if n_err else "builds, with warnings")
        return (f"{self.path}: {verdict} for TensorRT {self.generation}.x "
                f"({self.nodes} nodes, opset {self.opset}; {n_err} errors, {n_warn} warnings, {n_info} info)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "tensorrt": f"{self.generation}.x", "opset": self.opset, "nodes": self.nodes,
            "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
            "findings": [asdict(f) for f in self.findings],
        }


class _Graph:
    """Facts about a graph the checks share: constants, types, shapes, what depends on the input."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # shape inference is a help, not a requirement
            inferred = model
        g = inferred.graph
        self.graph = g
        self.initializers = {t.name: t for t in g.initializer}
        self.constants: dict[str, TensorProto | None] = dict(self.initializers)
        self.producer: dict[str, tuple[int, onnx.NodeProto]] = {}
        for idx, node in enumerate(g.node):
            for out in node.output:
                if out:
                    self.producer[out] = (idx, node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                self.constants[node.output[0]] = value
        self.inputs = [i for i in g.input if i.name not in self.initializers]
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
                ]
        for t in g.initializer:
            self.types[t.name] = t.data_type
        self.input_dependent = self._forward_closure({i.name for i in self.inputs})

    def _forward_closure(self, seeds: set[str]) -> set[str]:
        reached = set(seeds)
        for node in self.graph.node:  # ONNX nodes are topologically sorted
            if any(i in reached for i in node.input if i):
                reached.update(o for o in node.output if o)
        return reached

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def constant_value(self, name: str) -> np.ndarray | None:
        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _node_label(idx: int, node: onnx.NodeProto) -> str:
    return node.name or f"#{idx}:{node.op_type}"


def _subgraph_ops(node: onnx.NodeProto) -> Iterable[tuple[str, str, str]]:
    """(name, op, domain) of every node inside If/Loop/Scan bodies, recursively."""
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                yield inner.name or inner.op_type, inner.op_type, inner.domain
                yield from _subgraph_ops(inner)


def _opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def lint_model(
    model: onnx.ModelProto,
    generation: int = 10,
    *,
    path: str = "<model>",
    profile_shapes: Mapping[str, Sequence[int | None]] | None = None,
) -> LintReport:
    """Lint `model` for TensorRT `generation` (10 or 11).

    `profile_shapes` maps an input name to a concrete shape (None for the batch) that a build can use for
    its optimization profile, e.g. the bundle's manifest size; dynamic dims it covers are not flagged.
    """
    table = operator_table(generation)
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    opset = _opset(model)
    report = LintReport(path=path, generation=generation, opset=opset, nodes=len(model.graph.node))
    lint = _Lint(model, _Graph(model), table, generation, opset, profile_shapes or {}, report.findings.append)
    for rule in _RULES:
        rule(lint)
    return report


@dataclass
class _Lint:
    """One lint run, as the rules see it: the model, its graph facts, the parser's table, where findings go."""

    model: onnx.ModelProto
    gr: _Graph
    table: OperatorTable
    generation: int
    opset: int | None
    profile_shapes: Mapping[str, Sequence[int | None]]
    add: Callable[[Finding], None]


def _lint_opset(lint: _Lint) -> None:
    """The default-domain opset against the parser's range (and TensorRT 10.0's older limit)."""
    opset, table, generation, add = lint.opset, lint.table, lint.generation, lint.add
    if opset is None:
        add(Finding("error", "opset", "the model imports no default-domain opset; re-export it"))
    elif opset < table.min_opset or opset > table.max_opset:
        add(Finding("error", "opset",
                    f"opset {opset} is outside TensorRT {generation}.x's parser range "
                    f"{table.min_opset}..{table.max_opset}; re-export with --opset in that range"))
    elif generation == 10 and opset > TRT10_0_MAX_OPSET:
        add(Finding("warning", "opset",
                    f"opset {opset} needs a recent TensorRT 10 (10.0 parses up to opset {TRT10_0_MAX_OPSET}, "
                    f"10.15 up to {table.max_opset}); export with --opset {TRT10_0_MAX_OPSET} or lower "
                    "for older 10.x (JetPack 6)"))


def _lint_dynamic_inputs(lint: _Lint) -> None:
    """Dynamic input dims: the batch (a profile from the build options), others covered by a profile or not."""
    for inp in lint.gr.inputs:
        hint = list(lint.profile_shapes.get(inp.name, []))
        for axis, dim in enumerate(lint.gr.shapes.get(inp.name, [])):
            if isinstance(dim, int):
                continue
            label = f"'{dim}'" if dim else "unnamed"
            if axis == 0:
                lint.add(Finding("info", "dynamic-batch",
                                 f"input '{inp.name}' has a dynamic batch ({label}); the engine needs an "
                                 "optimization profile: hrdeploy build makes one from --min/--opt/--max-batch"))
            elif axis < len(hint) and hint[axis]:
                lint.add(Finding("info", "dynamic-dim",
                                 f"input '{inp.name}' dim {axis} ({label}) is dynamic; the profile fixes it to "
                                 f"{hint[axis]} (the bundle's input size)"))
            else:
                lint.add(Finding("warning", "dynamic-dim-no-profile",
                                 f"input '{inp.name}' dim {axis} ({label}) is dynamic and nothing gives it a "
                                 "profile size; build from the bundle directory (its manifest has the size) or "
                                 "pass trtexec --minShapes/--optShapes/--maxShapes"))


def _lint_io_types(lint: _Lint) -> None:
    """INT64 network inputs and outputs."""
    inputs = lint.gr.inputs
    for vi in [*inputs, *lint.model.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            lint.add(Finding("warning", "int64-io",
                             f"network {'input' if vi in inputs else 'output'} '{vi.name}' is INT64; TensorRT "
                             "wants INT32 here (DLA and many kernels have no INT64); cast to INT32 in the model"))


def _lint_nodes(lint: _Lint) -> None:
    """Every node: parser support, input types, and the per-operator restrictions."""
    gr = lint.gr
    batch_dims = [shape[0] for shape in (gr.shapes.get(i.name, []) for i in gr.inputs) if shape]
    static_batch = next((d for d in batch_dims if isinstance(d, int)), None)
    dynamic_batch = any(not isinstance(d, int) for d in batch_dims)
    for idx, node in enumerate(lint.model.graph.node):
        label = _node_label(idx, node)
        if _lint_support(lint, node, label):
            _check_types(gr, lint.table.supported.get(node.op_type), label, node, lint.add)
            _check_node(gr, node, label, lint.add, static_batch=static_batch, dynamic_batch=dynamic_batch)


def _lint_support(lint: _Lint, node: onnx.NodeProto, label: str) -> bool:
    """Whether the parser knows `node`'s operator (and those of its subgraphs); False when it cannot parse it."""
    op, generation, add = node.op_type, lint.generation, lint.add
    if node.domain not in ("", "ai.onnx"):
        add(Finding("error", "custom-op",
                    f"operator {node.domain}::{op} is not an ONNX operator; TensorRT needs a plugin for it",
                    label, op))
        return False
    status = lint.table.status(op)
    if status == "unsupported":
        add(Finding("error", "unsupported-op",
                    f"{op} is not supported by the TensorRT {generation}.x ONNX parser", label, op))
        return False
    if status == "unknown":
        add(Finding("warning", "unknown-op",
                    f"{op} is not in TensorRT {generation}.x's operator table; the parser may reject it",
                    label, op))
    for sub_name, sub_op, sub_domain in _subgraph_ops(node):
        if sub_domain not in ("", "ai.onnx") or lint.table.status(sub_op) == "unsupported":
            add(Finding("error", "unsupported-op",
                        f"{sub_op} (in a subgraph, node {sub_name}) is not supported by TensorRT "
                        f"{generation}.x", label, op))
    return True


# The graph's rules, in the order their findings are reported.
_RULES: tuple[Callable[[_Lint], None], ...] = (_lint_opset, _lint_dynamic_inputs, _lint_io_types, _lint_nodes)


def _check_types(gr: _Graph, types: tuple[str, ...] | None, label: str, node: onnx.NodeProto, add) -> None:  # noqa: ANN001
    if types is None or node.op_type in _TYPE_CHECK_SKIP or not node.input or not node.input[0]:
        return
    dtype = gr.types.get(node.input[0])
    if dtype == TensorProto.INT64 and "INT64" not in types:
        add(Finding("error", "int64-unsupported",
                    f"input '{node.input[0]}' is INT64 but TensorRT's {node.op_type} takes "
                    f"{'/'.join(types)}; cast to INT32 or float before it", label, node.op_type))
    elif dtype == TensorProto.DOUBLE:
        add(Finding("warning", "double",
                    f"input '{node.input[0]}' is DOUBLE; TensorRT casts it to FP32, clamping to +-FLT_MAX",
                    label, node.op_type))


def _check_node(gr: _Graph, node: onnx.NodeProto, label: str, add, *, static_batch, dynamic_batch) -> None:  # noqa: ANN001
    op, attrs = node.op_type, _attrs(node)
    if op in ("Conv", "ConvTranspose"):
        _check_conv(gr, node, label, attrs, add, static_batch=static_batch, dynamic_batch=dynamic_batch)
    elif op == "Resize":
        _check_resize(gr, node, label, attrs, add)
    elif op in _POOLS:
        kernel = attrs.get("kernel_shape", [])
        if len(kernel) not in (2, 3):
            add(Finding("error", "pool-rank",
                        f"{len(kernel)}D pooling; TensorRT pools only 2D or 3D", label, op))
        dil = attrs.get("dilations")
        if dil and any(d != 1 for d in dil):
            add(Finding("error", "pool-dilations",
                        f"dilations {list(dil)}; TensorRT pooling needs dilations of 1", label, op))
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            add(Finding("error", "maxpool-indices",
                        "the Indices output is used; TensorRT's MaxPool has no indices", label, op))
    elif op in _REDUCES or op in _CONST_INPUTS:
        index, what = _CONST_INPUTS.get(op, (1, "axes"))
        if len(node.input) > index and node.input[index] and not gr.is_constant(node.input[index]):
            add(Finding("error", "non-constant-input",
                        f"'{what}' ({node.input[index]}) is computed at run time; TensorRT needs it as a "
                        "build-time constant (fold constants: onnxsim or polygraphy surgeon sanitize)",
                        label, op))
        if op == "TopK" and attrs.get("sorted", 1) != 1:
            add(Finding("error", "topk-sorted", "sorted=0; TensorRT's TopK needs sorted=1", label, op))
    elif op == "ScatterND" and _text(attrs.get("reduction"), "none") != "none":
        add(Finding("error", "scatternd-reduction",
                    f"reduction={_text(attrs.get('reduction'), 'none')}; TensorRT supports only 'none'", label, op))
    elif op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
        add(Finding("error", "constant-kind", "sparse or string constants are not supported", label, op))
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        _check_qdq(gr, node, label, add)


def _weight_source(gr: _Graph, name: str) -> str:
    """'constant', 'qdq' (DequantizeLinear of a constant), 'input' (depends on the network input), 'folded-not'."""
    if gr.is_constant(name):
        return "constant"
    if name in gr.input_dependent:
        return "input"
    producer = gr.producer.get(name)
    if producer and producer[1].op_type == "DequantizeLinear" and gr.is_constant(producer[1].input[0]):
        return "qdq"
    return "folded-not"


def _check_conv(gr: _Graph, node, label, attrs, add, *, static_batch, dynamic_batch) -> None:  # noqa: ANN001
    op = node.op_type
    group = int(attrs.get("group", 1))
    for index, what in ((1, "weights"), (2, "bias")):
        if len(node.input) <= index or not node.input[index]:
            continue
        source = _weight_source(gr, node.input[index])
        if source == "folded-not":
            add(Finding("warning", "conv-weights-not-folded",
                        f"{what} '{node.input[index]}' come from a constant subgraph that was not folded; fold "
                        "constants first (onnxsim, or polygraphy surgeon sanitize --fold-constants)", label, op))
        elif source == "input":
            add(Finding("warning", "conv-runtime-weights",
                        f"{what} '{node.input[index]}' are computed from the network input at run time; "
                        "TensorRT parses this (onnx-tensorrt >= 8.5) but cannot fold BatchNorm into it, fuse it "
                        f"or quantize it (INT8 tools skip it); {FIX_DYNAMIC_KERNELS}", label, op))
            if index == 1:
                _batch_dependent_group(label, op, group, add, static_batch=static_batch, dynamic_batch=dynamic_batch)


def _batch_dependent_group(label, op, group, add, *, static_batch, dynamic_batch) -> None:  # noqa: ANN001
    # Per-sample kernels only work by folding the batch into channels: x.view(1, N*C, H, W) and
    # group = g*N. `group` is a static attribute, so the graph is right only at the batch it was exported with.
    if dynamic_batch:
        add(Finding("error", "batch-dependent-group",
                    f"per-sample kernels need group = groups x batch, and group={group} is fixed at export, but "
                    f"the batch is dynamic: any other batch computes a wrong result or fails; {FIX_DYNAMIC_KERNELS}",
                    label, op))
    else:
        n = static_batch if static_batch is not None else "the export batch"
        add(Finding("warning", "batch-dependent-group",
                    f"per-sample kernels need group = groups x batch, and group={group} is fixed at export: "
                    f"the engine is tied to batch {n} and can never batch; {FIX_DYNAMIC_KERNELS}", label, op))


def _check_resize(gr: _Graph, node, label, attrs, add) -> None:  # noqa: ANN001
    op = node.op_type
    mode = _text(attrs.get("mode"), "nearest")
    coord = _text(attrs.get("coordinate_transformation_mode"), "half_pixel")
    nearest = _text(attrs.get("nearest_mode"), "round_prefer_floor")
    if mode not in _RESIZE_MODES:
        add(Finding("error", "resize-mode",
                    f"mode '{mode}'; TensorRT resizes with {' or '.join(_RESIZE_MODES)} only", label, op))
    if coord not in _RESIZE_COORD_MODES:
        add(Finding("error", "resize-mode",
                    f"coordinate_transformation_mode '{coord}' is not supported (TensorRT: "
                    f"{', '.join(_RESIZE_COORD_MODES)})", label, op))
    if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
        add(Finding("error", "resize-mode", f"nearest_mode '{nearest}' is not supported", label, op))
    if int(attrs.get("antialias", 0)):
        add(Finding("error", "resize-mode", "antialias=1; TensorRT's Resize has no antialiasing", label, op))
    policy = _text(attrs.get("keep_aspect_ratio_policy"), "stretch")
    if policy != "stretch":
        add(Finding("error", "resize-mode",
                    f"keep_aspect_ratio_policy '{policy}'; TensorRT supports only 'stretch'", label, op))
    axes = attrs.get("axes")
    scales = node.input[2] if len(node.input) > 2 else ""
    if axes is not None and scales and not gr.is_constant(scales):
        rank = len(gr.shapes.get(node.input[0], [])) or len(axes)
        if list(axes) != list(range(rank)):
            add(Finding("error", "resize-mode",
                        f"axes {list(axes)} with run-time scales; TensorRT needs axes 0..rank-1", label, op))


def _check_qdq(gr: _Graph, node, label, add) -> None:  # noqa: ANN001
    op = node.op_type
    which = "y_zero_point" if op == "QuantizeLinear" else "x_zero_point"
    if len(node.input) > 1 and node.input[1] and not gr.is_constant(node.input[1]):
        add(Finding("warning", "qdq-scale",
                    f"scale '{node.input[1]}' is computed at run time; TensorRT expects constant scales", label, op))
    if op == "DequantizeLinear" and gr.types.get(node.input[0]) == TensorProto.UINT8:
        add(Finding("error", "qdq-unsigned",
                    "UINT8 quantized data; TensorRT quantizes to signed INT8 (quantize with QInt8 weights and "
                    "activations, symmetric)", label, op))
    if len(node.input) < 3 or not node.input[2]:
        return
    zp_name = node.input[2]
    if not gr.is_constant(zp_name):
        add(Finding("error", "qdq-zero-point",
                    f"{which} '{zp_name}' is computed at run time; TensorRT needs a constant zero-point of 0",
                    label, op))
        return
    zp = gr.constant_value(zp_name)
    if zp is not None and zp.dtype == np.uint8:
        add(Finding("error", "qdq-unsigned",
                    f"{which} is UINT8; TensorRT quantizes to signed INT8 with zero-point 0 (quantize "
                    "symmetric, QInt8)", label, op))
    elif zp is not None and np.any(zp != 0):
        add(Finding("error", "qdq-zero-point",
                    f"{which} has non-zero values (e.g. {int(zp.flat[np.flatnonzero(zp)[0]])}); TensorRT "
                    "supports symmetric quantization only (zero-point 0): re-quantize with symmetric "
                    "activations", label, op))


def lint_file(
    path: str | os.PathLike,
    generation: int = 10,
    *,
    profile_shapes: Mapping[str, Sequence[int | None]] | None = None,
) -> LintReport:
    """Load `path` (graph structure only: external weights are not needed) and lint it."""
    from hrdeploy.bundle import load_onnx

    model = load_onnx(path)
    return lint_model(model, generation, path=os.fspath(path), profile_shapes=profile_shapes)
