"""Shifted INT8 activations (hrdeploy.precision.shift): which tensors, the unsigned numerics, the float bypass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from hrdeploy.precision import graph as G
from hrdeploy.precision.evaluate import run_model
from hrdeploy.precision.search import with_float_convs
from hrdeploy.precision.shift import nonnegative_tensors, shift_activations

HW = (16, 12)


def _exact(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's own arithmetic: onnxruntime without graph optimizations (which fuse Q/DQ into its int8 kernels,
    rounding intermediate results its own way)."""
    from hrdeploy.runtime.onnxruntime import ort_session
    from hrdeploy.runtime.ort_options import OrtSettings

    return run_model(model, x, sess=ort_session(model, settings=OrtSettings(graph_optimization="disable")))


def _net(tmp_path: Path, hw: tuple[int | str, int | str] = HW) -> Path:
    """input [N,8,16,12] -> 3x3 conv (pad 1) -> Relu -> 3x3 depthwise conv (stride 2, pad 1) -> Relu -> channel
    slice, concatenated twice -> 1x1 conv (out); and a 1x1 conv (side) reading the depthwise conv before its Relu."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             (("w_dense", (8, 8, 3, 3)), ("w_dw", (8, 1, 3, 3)), ("w_pw", (4, 8, 1, 1)), ("w_side", (2, 8, 1, 1)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("s0", [0]), ("s1", [4]), ("ax", [1]))]
    inits.append(numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b_dw"))
    nodes = [
        helper.make_node("Conv", ["input", "w_dense"], ["a"], name="/stem/conv/Conv", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"], name="/stem/relu/Relu"),
        helper.make_node("Conv", ["ra", "w_dw", "b_dw"], ["b"], name="/stem/dw/Conv", pads=[1] * 4, group=8,
                         strides=[2, 2]),
        helper.make_node("Relu", ["b"], ["rb"], name="/stem/relu2/Relu"),
        helper.make_node("Slice", ["rb", "s0", "s1", "ax"], ["s"], name="/head/Slice"),
        helper.make_node("Concat", ["s", "s"], ["cat"], name="/head/Concat", axis=1),
        helper.make_node("Conv", ["cat", "w_pw"], ["out"], name="/head/final/Conv"),
        helper.make_node("Conv", ["b", "w_side"], ["side"], name="/head/side/Conv"),
    ]
    outputs = [helper.make_tensor_value_info(n, 1, None) for n in ("out", "side")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", 1, ["N", 8, *hw])], outputs,
                              inits)
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _qdq(tmp_path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    from hrdeploy.precision.int8 import quantize_ort

    src = _net(tmp_path)
    data = [np.random.default_rng(i).normal(size=(2, 8, *HW)).astype(np.float32) for i in range(3)]
    model = G.ensure_node_names(onnx.load(src))
    info = quantize_ort(src, tmp_path / "q.onnx", data, "max", [], G.node_scopes(model), tmp_path, auto_exclude=False)
    return onnx.load(tmp_path / "q.onnx"), onnx.load(info["float_reference"])


def _unsigned(qdq: onnx.ModelProto) -> onnx.ModelProto:
    """The reference numerics: the same graph with each shifted tensor's Q/DQ made unsigned-range INT8 (zero point
    -128, scale s * 127 / 255), which ONNX Runtime runs and TensorRT does not accept."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    inits = {i.name: i for i in out.graph.initializer}
    cons = G.consumers(out)
    nonneg = nonnegative_tensors(out)
    for q in [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in nonneg]:
        dqs = cons[q.output[0]]
        if not all(c.op_type == "Conv" for dq in dqs for c in cons[dq.output[0]]):
            continue
        scale = float(numpy_helper.to_array(inits[q.input[1]])) * 127 / 255
        for node in (q, *dqs):
            out.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{node.name}.s"),
                                          numpy_helper.from_array(np.array(-128, np.int8), f"{node.name}.zp")])
            node.input[1:] = [f"{node.name}.s", f"{node.name}.zp"]
    return out


def test_nonnegative_tensors_by_construction(tmp_path: Path) -> None:
    model = onnx.load(_net(tmp_path))
    assert nonnegative_tensors(model) == {"ra", "rb", "s", "cat"}
    # cubic interpolation can undershoot zero, linear cannot
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Resize", ["r", "", "scales"], ["lin"], mode="linear"),
             helper.make_node("Resize", ["r", "", "scales"], ["cub"], mode="cubic")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(n, 1, None) for n in ("lin", "cub")],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    assert nonnegative_tensors(helper.make_model(graph)) == {"r", "lin"}


def test_the_shift_computes_unsigned_int8_with_zero_points_of_zero(tmp_path: Path) -> None:
    from hrdeploy.engine.compat import lint_model

    qdq, _ = _qdq(tmp_path)
    shifted, record = shift_activations(qdq, HW)
    # the dw conv reads ra, the final conv reads cat; the side conv reads b, which can be negative
    assert record == {"shifted_tensors": 2, "shifted_convs": 2}
    assert sorted(G.conv_quant_status(shifted)[0]) == sorted(G.conv_quant_status(qdq)[0])
    x = np.random.default_rng(5).normal(size=(3, 8, *HW)).astype(np.float32)
    want, got, plain = _exact(_unsigned(qdq), x), _exact(shifted, x), _exact(qdq, x)
    for name in ("out", "side"):  # equal up to float rounding
        assert np.abs(got[name] - want[name]).max() <= 1e-5 * np.abs(want[name]).max(), name
    # and the finer grid is what INT8 loses less with: closer to fp32 than the signed-range graph
    ref = _exact(onnx.load(tmp_path / "net.onnx"), x)["out"]
    assert np.abs(got["out"] - ref).mean() < 0.9 * np.abs(plain["out"] - ref).mean()
    # TensorRT takes it: zero points 0, nothing the parser rejects
    for generation in (10, 11):
        assert [f for f in lint_model(shifted, generation).findings if f.severity == "error"] == []


def test_a_float_conv_reads_the_tensor_before_the_shift(tmp_path: Path) -> None:
    qdq, ref = _qdq(tmp_path)
    shifted, _ = shift_activations(qdq, HW)
    weights = G.conv_float_weights(ref)
    x = np.random.default_rng(7).normal(size=(2, 8, *HW)).astype(np.float32)
    everything = with_float_convs(shifted, G.conv_quant_status(shifted)[0], weights)
    assert not any(n.op_type in ("Sub", "Add", "QuantizeLinear") for n in everything.graph.node)
    for name in ("out", "side"):
        assert np.array_equal(run_model(everything, x)[name], run_model(ref, x)[name])
    # one shifted conv back in float: its add-back goes, the other keeps its own
    one = with_float_convs(shifted, ["/stem/dw/Conv"], weights)
    backs = [n.name for n in one.graph.node if n.name.endswith(G.SHIFT_BACK_SUFFIX)]
    assert backs == [f"/head/final/Conv{G.SHIFT_BACK_SUFFIX}"]
    want = _exact(with_float_convs(_unsigned(qdq), ["/stem/dw/Conv"], weights), x)["out"]
    assert np.abs(_exact(one, x)["out"] - want).max() <= 1e-5 * np.abs(want).max()


def test_attribute() -> None:
    node = helper.make_node("Resize", ["r"], ["y"], mode="cubic")
    assert G.attribute(node, "mode") == b"cubic" and G.attribute(node, "missing", 3) == 3


def test_the_search_keeps_the_encoding_whose_chosen_point_meets_the_target_closest_to_fp32() -> None:
    from hrdeploy.precision.search import Point, SearchResult
    from hrdeploy.precision.tuning import encoding_merit

    def result(oks: float, within: bool) -> SearchResult:
        point = Point("walk", "x", [], 10, 0.9, oks, 0.1, within)
        return SearchResult("t", [], [point], 0)

    results = {"signed": result(0.9904, True), "shifted": result(0.9900, True)}
    assert max(results, key=lambda k: encoding_merit(results[k])) == "signed"
    results["shifted"] = result(0.9950, False)  # closer, but the target (the AP drop) not met
    assert max(results, key=lambda k: encoding_merit(results[k])) == "signed"
    results["signed"] = result(0.9800, False)  # neither meets it: the closer one
    assert max(results, key=lambda k: encoding_merit(results[k])) == "shifted"


def test_a_graph_without_a_fixed_input_size_cannot_be_shifted(tmp_path: Path) -> None:
    from hrdeploy.errors import UserError
    from hrdeploy.precision.int8 import quantize_ort

    src = _net(tmp_path, ("H", "W"))
    data = [np.random.default_rng(0).normal(size=(2, 8, *HW)).astype(np.float32)]
    with pytest.raises(UserError, match="--shift-activations adds back a map of the input's size"):
        quantize_ort(src, tmp_path / "q.onnx", data, "max", [], {}, tmp_path, auto_exclude=False, shift=True)
