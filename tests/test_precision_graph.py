"""Precision stage, fast parts: ONNX graph helpers, calibration images, Q/DQ facts on a tiny graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrdeploy.errors import UserError
from hrdeploy.manifest import InputSpec
from hrdeploy.precision import graph as G
from hrdeploy.precision.calib import batches, load_images
from hrdeploy.precision.evaluate import run_model


def _tiny_model(seed: int = 0) -> onnx.ModelProto:
    """input[N,3,16,16] -> conv3x3 -> relu -> depthwise 3x3 -> relu -> sigmoid gate -> conv1x1 -> heatmaps."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float = 1.0) -> TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [
        init("stem.conv.weight", 8, 3, 3, 3), init("stem.conv.bias", 8, scale=0.1),
        init("block.dw.weight", 8, 1, 3, 3), init("block.dw.bias", 8, scale=0.1),
        init("block.gate.weight", 8, 8, 1, 1), init("head.final_layer.weight", 4, 8, 1, 1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "stem.conv.weight", "stem.conv.bias"], ["c1"], name="conv_stem",
                         pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu_1"),
        helper.make_node("Conv", ["r1", "block.dw.weight", "block.dw.bias"], ["c2"], name="conv_dw", pads=[1] * 4,
                         group=8),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu_2"),
        helper.make_node("Conv", ["r2", "block.gate.weight"], ["g"], name="conv_gate"),
        helper.make_node("Sigmoid", ["g"], ["s"], name="sigmoid_gate"),
        helper.make_node("Mul", ["r2", "s"], ["m"], name="mul_gate"),
        helper.make_node("Conv", ["m", "head.final_layer.weight"], ["heatmaps"], name="conv_head"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory):
    """The tiny graph quantized by the onnxruntime backend (max calibration, no auto-exclusion)."""
    from hrdeploy.precision.int8 import quantize_ort

    work = tmp_path_factory.mktemp("tiny")
    model = _tiny_model()
    src = work / "model.onnx"
    onnx.save(model, src)
    data = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    info = quantize_ort(src, work / "q.onnx", batches(data, 4), "max", ["*gate*"], G.node_scopes(model), work,
                        auto_exclude=False)
    return model, onnx.load(work / "q.onnx"), onnx.load(info["float_reference"]), info, data


def test_node_scopes_from_weight_names_and_neighbours() -> None:
    scopes = G.node_scopes(_tiny_model())
    assert scopes["conv_stem"] == "stem.conv"
    assert scopes["conv_dw"] == "block.dw"
    assert scopes["conv_head"] == "head.final_layer"
    # unscoped ops take the common prefix of their nearest scoped neighbours
    assert scopes["relu_2"] == "block"
    assert scopes["relu_1"] == ""  # stem.conv upstream, block.dw downstream: nothing in common


def test_match_nodes_by_name_op_type_and_scope() -> None:
    model = _tiny_model()
    hits = G.match_nodes(model, ["Sigmoid", "conv_h*", "block.*", "nothing*"])
    assert hits["Sigmoid"] == ["sigmoid_gate"]
    assert hits["conv_h*"] == ["conv_head"]
    assert set(hits["block.*"]) == {"conv_dw", "conv_gate"}
    assert hits["nothing*"] == []


def test_group_blocks_refines_the_largest_group_within_the_limit() -> None:
    names = [f"n{i}" for i in range(7)]
    scopes = {"n0": "a.x.1", "n1": "a.x.2", "n2": "a.y.1", "n3": "a.y.2", "n4": "b.z", "n5": "b.z", "n6": ""}
    assert G.group_blocks(names, scopes, max_blocks=2) == {"a": names[:4], "b": ["n4", "n5"], "(unscoped)": ["n6"]}
    assert G.group_blocks(names, scopes, max_blocks=4) == {
        "a.x": ["n0", "n1"], "a.y": ["n2", "n3"], "b.z": ["n4", "n5"], "(unscoped)": ["n6"],
    }
    assert list(G.group_blocks(names, scopes, max_blocks=100)) == [
        "a.x.1", "a.x.2", "a.y.1", "a.y.2", "b.z", "(unscoped)",
    ]


def test_ort_qdq_follows_tensorrt_conventions(tiny_int8) -> None:
    from hrdeploy.precision.int8 import qdq_summary

    _, qdq, _, info, _ = tiny_int8
    summary = qdq_summary(qdq)
    assert info["excluded_nodes"] == ["conv_gate", "mul_gate", "sigmoid_gate"]  # '*gate*' globs node names
    assert summary["convs_quantized"] == 3 and summary["unquantized_convs"] == ["conv_gate"]
    assert summary["per_channel_weights"] == 3 and summary["per_tensor_weights"] == 0
    assert summary["nonzero_zero_points"] == 0 and summary["int8_zero_points"] > 0
    assert summary["outputs_quantized"] == []
    # biases stay float: every Conv bias input is a float initializer, not a DequantizeLinear output
    inits = {i.name: i for i in qdq.graph.initializer}
    for node in qdq.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2:
            assert inits[node.input[2]].data_type == TensorProto.FLOAT
    # no Q/DQ on any Conv output: whatever reads a Conv output reads the float tensor
    conv_outputs = {n.output[0] for n in qdq.graph.node if n.op_type == "Conv"}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in conv_outputs for n in qdq.graph.node)


def test_bypass_qdq_restores_fp32_and_keep_all_is_identity(tiny_int8) -> None:
    _, qdq, float_ref, _, data = tiny_int8
    weights = G.conv_float_weights(float_ref)
    ref = run_model(float_ref, data)["heatmaps"]
    full = run_model(qdq, data)["heatmaps"]
    quantized, _ = G.conv_quant_status(qdq)
    none_q = run_model(G.bypass_qdq(qdq, set(), weights), data)["heatmaps"]
    all_q = run_model(G.bypass_qdq(qdq, set(quantized), weights), data)["heatmaps"]
    np.testing.assert_allclose(none_q, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(all_q, full)
    assert np.abs(full - ref).max() > 1e-3  # quantization did change something
    # without the fp32 weights, bypassed convs use dequantized int8 weights: close, not exact
    deq = run_model(G.bypass_qdq(qdq, set()), data)["heatmaps"]
    assert 0 < np.abs(deq - ref).max() < np.abs(full - ref).max()


def test_block_sensitivity_ranks_blocks_and_checks_itself(tiny_int8) -> None:
    from hrdeploy.precision.evaluate import block_sensitivity

    model, qdq, float_ref, info, data = tiny_int8
    sens = block_sensitivity(float_ref, qdq, data, info["scopes"], max_blocks=8)
    assert sens["bypass_rel_l2"] < 1e-5
    blocks = {r["block"]: r for r in sens["blocks"]}
    assert set(blocks) == {"stem.conv", "block.dw", "head.final_layer"}
    errs = [r["rel_l2"] for r in sens["blocks"]]
    assert errs == sorted(errs, reverse=True) and all(e > 0 for e in errs)
    assert max(errs) <= sens["full_rel_l2"] * 1.5  # one block alone adds no more than (about) all of them


def test_wide_range_depthwise_flags_only_spread_inputs() -> None:
    from hrdeploy.precision.int8 import wide_range_depthwise

    model = _tiny_model()
    data = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    spread = wide_range_depthwise(model, [data], ratio=1e6)
    assert spread == {}
    loose = wide_range_depthwise(model, [data], ratio=1.0)
    assert list(loose) == ["conv_dw"] and loose["conv_dw"] > 1.0
    # make one input channel of the depthwise conv 1000x louder: its spread must exceed 100
    loud = onnx.ModelProto()
    loud.CopyFrom(model)
    for init in loud.graph.initializer:
        if init.name == "stem.conv.weight":
            w = numpy_helper.to_array(init).copy()
            w[0] *= 1000.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    assert wide_range_depthwise(loud, [data])["conv_dw"] > 100


def _input(h: int = 32, w: int = 24) -> InputSpec:
    return InputSpec(height=h, width=w, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_load_images_is_sorted_preprocessed_and_counted(tmp_path) -> None:
    from PIL import Image

    from hrdeploy.pose.preprocess import preprocess

    rng = np.random.default_rng(0)
    pixels = {}
    for name in ("b.png", "a.jpg", "c.PNG"):
        arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / name, quality=100 if name.endswith("jpg") else None)
        pixels[name] = arr
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images(tmp_path, _input(), samples=2)
    assert images.files == ["a.jpg", "b.png"] and images.available == 3 and images.count == 2
    expected, _ = preprocess(pixels["b.png"], (32, 24), _input().mean, _input().std)
    np.testing.assert_allclose(images.data[1], expected, atol=1e-6)
    assert load_images(tmp_path, _input()).files == ["a.jpg", "b.png", "c.PNG"]


def test_load_images_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="holds no images"):
        load_images(tmp_path, _input())
    with pytest.raises(UserError, match="does not exist"):
        load_images(tmp_path / "missing", _input())
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_images(tmp_path, _input())
    with pytest.raises(UserError, match="at least 1"):
        load_images(tmp_path, _input(), samples=0)


def test_batches_fill_fixed_batches_by_repeating_from_the_start() -> None:
    data = np.arange(5, dtype=np.float32).reshape(5, 1)
    assert [b.ravel().tolist() for b in batches(data, 2)] == [[0, 1], [2, 3], [4, 0]]
    assert [b.ravel().tolist() for b in batches(data, 4)] == [[0, 1, 2, 3], [4, 0, 1, 2]]
    assert len(batches(data, None)) == 1 and batches(data, None)[0].shape == (5, 1)


def test_remove_fp16_round_trips_keeps_large_values_in_fp32() -> None:
    from hrdeploy.precision.fp16 import remove_fp16_round_trips

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["big"], name="mul_big"),
        helper.make_node("Cast", ["big"], ["big16"], name="to16", to=f16),
        helper.make_node("Cast", ["big16"], ["big32"], name="to32", to=f32),
        helper.make_node("Div", ["big32", "k"], ["y"], name="div_back"),
    ]
    k = numpy_helper.from_array(np.array([1e5], dtype=np.float32), "k")
    graph = helper.make_graph(nodes, "rt", [helper.make_tensor_value_info("x", f32, [4])],
                              [helper.make_tensor_value_info("y", f32, [4])], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    assert not np.all(np.isfinite(run_model(model, x)["y"]))  # 2e5 overflows fp16 on the way
    assert remove_fp16_round_trips(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Mul", "Div"]
    np.testing.assert_allclose(run_model(model, x)["y"], x, rtol=1e-6)
