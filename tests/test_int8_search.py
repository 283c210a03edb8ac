"""The pure parts of the INT8 accuracy search: MAC counts, units, the people split, the target, the float bypass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hrdeploy.parity.coco import PersonBox
from hrdeploy.precision import graph as G
from hrdeploy.precision.search import Score, Target, candidate_units, conv_macs, depthwise_convs, with_float_convs
from hrdeploy.precision.tuning import split_by_photo


def _net(tmp_path: Path) -> Path:
    """input [N,8,16,12] -> 3x3 dense conv (8->8) -> 3x3 depthwise conv (groups 8, stride 2) -> 1x1 conv (8->4),
    and a Relu reading the input beside the first conv."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             (("w_dense", (8, 8, 3, 3)), ("w_dw", (8, 1, 3, 3)), ("w_pw", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["input", "w_dense"], ["a"], name="/backbone/stem/conv/Conv", pads=[1] * 4),
             helper.make_node("Conv", ["a", "w_dw"], ["b"], name="/backbone/stem/dw/Conv", pads=[1] * 4, group=8,
                              strides=[2, 2]),
             helper.make_node("Relu", ["input"], ["r"], name="/backbone/relu/Relu"),
             helper.make_node("Conv", ["b", "w_pw"], ["out"], name="/head/final/Conv")]
    outputs = [helper.make_tensor_value_info("out", 1, None), helper.make_tensor_value_info("r", 1, None)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", 1, ["N", 8, 16, 12])], outputs,
                              inits)
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_conv_macs_and_depthwise(tmp_path: Path) -> None:
    model = onnx.load(_net(tmp_path))
    macs = conv_macs(model, (16, 12))
    # out H x W x C_out x C_in/groups x kH x kW
    assert macs == {"/backbone/stem/conv/Conv": 16 * 12 * 8 * 8 * 9, "/backbone/stem/dw/Conv": 8 * 6 * 8 * 1 * 9,
                    "/head/final/Conv": 8 * 6 * 4 * 8}
    assert conv_macs(model, (32, 24))["/head/final/Conv"] == 16 * 12 * 4 * 8
    assert depthwise_convs(model) == {"/backbone/stem/dw/Conv"}


def _qdq(tmp_path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    from hrdeploy.precision.int8 import quantize_ort

    src = _net(tmp_path)
    data = [np.random.default_rng(i).normal(size=(2, 8, 16, 12)).astype(np.float32) for i in range(3)]
    model = G.ensure_node_names(onnx.load(src))
    info = quantize_ort(src, tmp_path / "q.onnx", data, "max", [], G.node_scopes(model), tmp_path, auto_exclude=False)
    return onnx.load(tmp_path / "q.onnx"), onnx.load(info["float_reference"])


def test_units_split_blocks_into_depthwise_and_the_rest(tmp_path: Path) -> None:
    qdq, _ = _qdq(tmp_path)
    quantized, _ = G.conv_quant_status(qdq)
    assert len(quantized) == 3
    units = candidate_units(qdq, quantized, G.node_scopes(qdq), max_blocks=2)
    assert units == {"backbone.stem (dw)": ["/backbone/stem/dw/Conv"], "backbone.stem": ["/backbone/stem/conv/Conv"],
                     "head.final": ["/head/final/Conv"]}


def test_float_bypass_and_dedicated_pairs(tmp_path: Path) -> None:
    from hrdeploy.precision.evaluate import run_model

    qdq, ref = _qdq(tmp_path)
    x = np.random.default_rng(9).normal(size=(2, 8, 16, 12)).astype(np.float32)
    want = run_model(ref, x)
    weights = G.conv_float_weights(ref)
    # every conv in float: exactly the fp32 graph
    everything = with_float_convs(qdq, G.conv_quant_status(qdq)[0], weights)
    got = run_model(everything, x)
    assert np.array_equal(got["out"], want["out"]) and np.array_equal(got["r"], want["r"])
    assert G.conv_quant_status(everything)[0] == []
    # the Relu beside the first conv reads the float input in the INT8 graph too: only quantized ops read Q/DQ
    assert np.array_equal(run_model(qdq, x)["r"], want["r"])
    one = with_float_convs(qdq, ["/head/final/Conv"], weights)
    assert sorted(G.conv_quant_status(one)[0]) == ["/backbone/stem/conv/Conv", "/backbone/stem/dw/Conv"]


def test_target() -> None:
    target = Target(min_oks=0.985, max_ap_drop=0.5)
    assert target.met(Score(0.99, 0.4)) and not target.met(Score(0.99, 0.6)) and not target.met(Score(0.98, 0.1))
    assert Target(0.985).met(Score(0.99)) and not Target(0.985).met(Score(0.984))
    assert target.describe() == "AP drop <= 0.5 and OKS vs fp32 >= 0.985"


def test_the_search_bar_depends_on_where_the_tuning_people_come_from() -> None:
    from hrdeploy.precision.quantize import QuantizeConfig
    from hrdeploy.precision.targets import DEFAULT_MIN_OKS, DEFAULT_MIN_OKS_FOUND

    # found crops are the people the fp32 model is surest of: INT8 agrees more closely there, so the bar is higher
    assert DEFAULT_MIN_OKS_FOUND > DEFAULT_MIN_OKS
    assert QuantizeConfig("int8", calib_dir="photos").target_oks == DEFAULT_MIN_OKS_FOUND
    assert QuantizeConfig("int8", calib_dir="photos", calib_ann="people.json").target_oks == DEFAULT_MIN_OKS
    assert QuantizeConfig("int8", calib_dir="photos", min_oks=0.97).target_oks == 0.97


def test_split_by_photo_is_seeded_and_keeps_photos_whole() -> None:
    people = [PersonBox(i // 3, Path(f"{i // 3}.jpg"), (0, 0, 10, 10), ann_id=i) for i in range(60)]  # 20 photos
    calib, tune = split_by_photo(people, 0.5, seed=0)
    assert len(calib) + len(tune) == 60 and len({p.file for p in tune}) == 10
    assert not {p.file for p in calib} & {p.file for p in tune}
    assert split_by_photo(people, 0.5, seed=0) == (calib, tune)
    assert split_by_photo(people, 0.5, seed=1) != (calib, tune)
    assert len({p.file for p in split_by_photo(people, 0.3, seed=0)[1]}) == 6
