"""Input equalization (hrdeploy.precision.equalize), depthwise and dense: the same fp32 function on every zoo model,
equal channel ranges after it, the scales placed where they cost nothing in INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from zoo_sizes import small_input

from hrdeploy.precision import graph as G
from hrdeploy.precision.equalize import (
    MIN_SCALE,
    channel_scales,
    depthwise_nodes,
    equalize_dense_convs,
    equalize_depthwise,
    input_channel_ranges,
)
from hrdeploy.precision.evaluate import run_model
from hrdeploy.registry import list_models

REL_TOL = 1e-4


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _net() -> onnx.ModelProto:
    """input [N,4,H,W] -> conv (4->4, bias) -> ReLU -> depthwise "dw_relu" (its ReLU input: folded)
    -> Add with the input -> depthwise "dw_add" (multiplier 2, and the Add is an output too: a Mul)."""
    rng = np.random.default_rng(0)
    # channel gains spread over three decades, so the depthwise inputs' channel ranges differ widely
    gain = np.array([1.0, 0.1, 0.01, 3.0], np.float32)[:, None, None, None]
    arrays = {"w_conv": rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * gain,
              "b_conv": np.abs(rng.normal(size=4)).astype(np.float32) * gain.ravel(),
              "w_dw1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
              "w_dw2": rng.normal(size=(8, 1, 3, 3)).astype(np.float32) * 0.5}
    nodes = [helper.make_node("Conv", ["input", "w_conv", "b_conv"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w_dw1"], ["d"], name="dw_relu", pads=[1] * 4, group=4),
             helper.make_node("Add", ["d", "input"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w_dw2"], ["out"], name="dw_add", pads=[1] * 4, group=4)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("input", 1, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info(o, 1, ["N", c, "H", "W"]) for o, c in (("out", 8), ("s", 4))],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scales_are_placed_where_they_cost_nothing_and_keep_the_function() -> None:
    model = _net()
    calib = [np.random.default_rng(1).normal(size=(2, 4, 12, 10)).astype(np.float32)]
    eq, placed = equalize_depthwise(model, calib)
    assert placed == {"dw_relu": "folded", "dw_add": "mul"}
    ops = [n.op_type for n in eq.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "Add", "Mul", "Conv"]  # one Mul, right before its depthwise conv
    onnx.checker.check_model(eq)
    for shape in ((1, 4, 12, 10), (3, 4, 20, 16)):
        x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
        ref, got = run_model(model, x), run_model(eq, x)
        for name in ("out", "s"):  # the graph output the Add also feeds keeps its values
            assert _rel_err(got[name], ref[name]) <= 1e-5, (shape, name)
    # alpha 1: on the calibration data every channel of an equalized input spans the same range, but those
    # quieter than MIN_SCALE times the loudest, which are amplified 1 / MIN_SCALE times
    dw_inputs = {n.name: n.input[0] for n in eq.graph.node if n.name.startswith("dw_")}
    after = input_channel_ranges(eq, list(dw_inputs.values()), calib)
    before = input_channel_ranges(model, ["r", "s"], calib)
    for name, original in zip(("dw_relu", "dw_add"), ("r", "s"), strict=True):
        relative = before[original] / before[original].max()
        expected = np.minimum(relative / MIN_SCALE, 1.0)
        ratio = after[dw_inputs[name]] / after[dw_inputs[name]].max()
        assert relative.min() < 0.2 and np.allclose(ratio, expected, rtol=1e-4), (name, relative, ratio)
    assert before["r"].min() / before["r"].max() < MIN_SCALE  # the clamp was exercised


def _dense_net() -> onnx.ModelProto:
    """input [N,4,H,W] -> conv "c1" (gains) -> ReLU -> 1x1 conv "pw_relu" (its input folds into c1);
    input -> conv "c2" -> {1x1 conv "pw_shared", Add with the input} (c2's output has two readers: left alone);
    input -> 1x1 conv "pw_input" (a graph input: no producer to fold into)."""
    rng = np.random.default_rng(3)
    gain = np.array([2.0, 0.05, 0.001, 1.0], np.float32)[:, None, None, None]
    arrays = {"w_c1": rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * gain,
              "b_c1": np.abs(rng.normal(size=4)).astype(np.float32) * gain.ravel(),
              "w_pw": rng.normal(size=(6, 4, 1, 1)).astype(np.float32), "b_pw": rng.normal(size=6).astype(np.float32),
              "w_c2": rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * gain,
              "w_shared": rng.normal(size=(3, 4, 1, 1)).astype(np.float32),
              "w_in": rng.normal(size=(2, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w_c1", "b_c1"], ["c"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w_pw", "b_pw"], ["p"], name="pw_relu"),
             helper.make_node("Conv", ["input", "w_c2"], ["c2o"], name="c2", pads=[1] * 4),
             helper.make_node("Conv", ["c2o", "w_shared"], ["q"], name="pw_shared"),
             helper.make_node("Add", ["c2o", "input"], ["s"], name="add"),
             helper.make_node("Conv", ["input", "w_in"], ["i"], name="pw_input")]
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("input", 1, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info(o, 1, ["N", c, "H", "W"]) for o, c in (("p", 6), ("q", 3), ("s", 4), ("i", 2))],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dense_convs_equalize_only_where_the_scales_fold() -> None:
    model = _dense_net()
    calib = [np.random.default_rng(4).normal(size=(2, 4, 12, 10)).astype(np.float32)]
    eq, folded = equalize_dense_convs(model, calib)
    assert folded == {"pw_relu": "c1"}
    assert [n.op_type for n in eq.graph.node] == [n.op_type for n in model.graph.node]  # no node added
    onnx.checker.check_model(eq)
    for shape in ((1, 4, 12, 10), (3, 4, 20, 16)):
        x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
        ref, got = run_model(model, x), run_model(eq, x)
        for name in ("p", "q", "s", "i"):
            assert _rel_err(got[name], ref[name]) <= 1e-5, (shape, name)
    before, after = input_channel_ranges(model, ["r"], calib)["r"], input_channel_ranges(eq, ["r"], calib)["r"]
    relative = before / before.max()
    assert relative.min() < 0.01  # the quiet channels had few INT8 steps
    np.testing.assert_allclose(after / after.max(), np.minimum(relative / MIN_SCALE, 1.0), rtol=1e-4)
    unchanged = {i.name for i in model.graph.initializer} - {"w_c1", "b_c1", "w_pw"}
    for name in unchanged:
        np.testing.assert_array_equal(*(numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == name))
                                        for m in (model, eq)))
    _, none = equalize_dense_convs(model, calib, skip={"pw_relu"})
    assert none == {}


def test_channel_scales() -> None:
    r = np.array([4.0, 1.0, 0.0, 1e-6], np.float32)
    np.testing.assert_allclose(channel_scales(r, 1.0), [1.0, 0.25, 1.0, MIN_SCALE])  # a silent channel keeps 1
    np.testing.assert_allclose(channel_scales(r, 0.5), [1.0, 0.5, 1.0, MIN_SCALE])
    assert np.all(channel_scales(np.zeros(3, np.float32), 1.0) == 1.0)


def test_quantize_ort_records_and_can_skip_the_equalization(tmp_path: Path) -> None:
    from hrdeploy.precision.int8 import quantize_ort

    src = tmp_path / "net.onnx"
    onnx.save(_net(), src)
    calib = [np.random.default_rng(i).normal(size=(2, 4, 12, 10)).astype(np.float32) for i in range(2)]
    scopes = G.node_scopes(onnx.load(src))
    on = quantize_ort(src, tmp_path / "on.onnx", calib, "max", [], scopes, tmp_path, auto_exclude=False,
                      equalize=True)
    assert on["equalized"] == {"dw_relu": "folded", "dw_add": "mul"}
    ref = onnx.load(on["float_reference"])  # the search restores float weights from the equalized graph
    assert "Mul" in {n.op_type for n in ref.graph.node}
    off = quantize_ort(src, tmp_path / "off.onnx", calib, "max", [], scopes, tmp_path, auto_exclude=False,
                       equalize=False)
    assert off["equalized"] == {} and off["equalized_dense"] == {}
    dense_src = tmp_path / "dense_net.onnx"
    onnx.save(_dense_net(), dense_src)
    dense = quantize_ort(dense_src, tmp_path / "dense.onnx", calib, "max", [], G.node_scopes(_dense_net()), tmp_path,
                         auto_exclude=False, equalize_dense=True)
    assert dense["equalized_dense"] == {"pw_relu": "c1"} and dense["equalized"] == {}
    same = run_model(onnx.load(dense["float_reference"]), calib[0])["p"]  # the equalized fp32 graph
    assert _rel_err(same, run_model(_dense_net(), calib[0])["p"]) <= 1e-5
    x = calib[0]
    exact = run_model(_net(), x)["out"]

    def worst_channel_error(path: Path) -> float:
        """The largest error of an output channel relative to that channel's own range."""
        got = run_model(onnx.load(path), x)["out"]
        return max(_rel_err(got[:, c], exact[:, c]) for c in range(exact.shape[1]))

    err_on, err_plain = worst_channel_error(tmp_path / "on.onnx"), worst_channel_error(tmp_path / "off.onnx")
    assert err_on < 0.5 * err_plain, (err_on, err_plain)  # the quiet channels keep their INT8 steps


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_equalized_export_matches_eager(name: str, tmp_path: Path) -> None:
    """Every zoo model: its export-friendly ONNX with depthwise (where it has depthwise convs), dense, and both
    equalizations, against the eager model at batch 1 and 3 and two input sizes. The export alone already
    differs from eager by float32 rounding (up to ~1e-4 on the deeper seeded networks, whose weights differ per
    test process); equalization may differ from the export, and from eager, by at most REL_TOL more than that."""
    from hrdeploy import build_model
    from hrdeploy.export.onnx_export import export_onnx
    from hrdeploy.registry import get_spec
    from hrdeploy.rewrite import apply
    from hrdeploy.runtime.factory import eager_runner
    from hrdeploy.runtime.onnxruntime import ort_session

    spec = get_spec(name)
    eager = build_model(name).eval()
    deployable, _ = apply(eager)
    reference = eager_runner(eager, spec.output_names)
    rng = np.random.default_rng(0)
    h, w = small_input(name)
    for size in ((h, w), (h + spec.stride, w + 2 * spec.stride)):
        path = tmp_path / f"{name}_{size[0]}.onnx"
        export_onnx(deployable, path, size, list(spec.output_names), dynamic_batch=True, stride=spec.stride)
        model = G.ensure_node_names(onnx.load(path))
        calib = [rng.normal(size=(2, 3, *size)).astype(np.float32)]
        variants = {}
        if depthwise_nodes(model):
            variants["depthwise"], placed = equalize_depthwise(model, calib)
            assert "folded" in placed.values() and "mul" in placed.values()
            variants["both"], _ = equalize_dense_convs(variants["depthwise"], calib)
        variants["dense"], folded = equalize_dense_convs(model, calib)
        assert len(folded) >= 10, folded  # every HRNet has conv -> (ReLU ->) conv chains
        x = rng.normal(size=(3, 3, *size)).astype(np.float32)
        sessions = {kind: ort_session(m) for kind, m in {"plain": model, **variants}.items()}
        for batch in (1, 3):
            ref = reference.run(x[:batch])
            plain = run_model(None, x[:batch], sess=sessions["plain"])
            for kind in variants:
                got = run_model(None, x[:batch], sess=sessions[kind])
                for out in spec.output_names:
                    assert got[out].shape == ref[out].shape
                    floor = _rel_err(plain[out], ref[out])  # the export's own float32 rounding
                    assert _rel_err(got[out], plain[out]) <= floor + REL_TOL, (name, kind, size, batch, out, floor)
                    assert _rel_err(got[out], ref[out]) <= floor + REL_TOL, (name, kind, size, batch, out, floor)
