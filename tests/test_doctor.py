"""`hrdeploy doctor`: the TensorRT-compatibility lint on small hand-built graphs, one per finding type."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrdeploy.cli import cli
from hrdeploy.engine.compat import lint_file, lint_model
from hrdeploy.engine.operators import operator_table

RNG = np.random.default_rng(0)


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits=(), *, batch=1, opset=17, inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_relu(batch=1, opset=17) -> onnx.ModelProto:
    w = _init("w", RNG.standard_normal((4, 4, 3, 3)).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["y"], name="up", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    ]
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    return _model(nodes, [w, scales], batch=batch, opset=opset)


def _dynamic_kernel_conv(batch) -> onnx.ModelProto:
    """Dite-HRNet's upstream KernelAggregation at batch 1: kernels = f(GAP(x)), group = C."""
    proj = _init("proj", RNG.standard_normal((4, 36)).astype(np.float32))
    shape = _init("wshape", np.array([4, 1, 3, 3], np.int64))
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "proj"], ["kflat"], name="attn_matmul"),
        helper.make_node("Reshape", ["kflat", "wshape"], ["kernel"], name="kernel_reshape"),
        helper.make_node("Conv", ["x", "kernel"], ["y"], name="dynamic_conv", group=4, pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [proj, shape], batch=batch)


def _findings(model, code, generation=10, **kw):
    return [f for f in lint_model(model, generation, **kw).findings if f.code == code]


def test_operator_tables_differ_where_the_generations_do():
    t10, t11 = operator_table(10), operator_table(11)
    assert t10.status("Conv") == t11.status("Conv") == "supported"
    assert t10.status("MaxUnpool") == "unsupported"
    assert t10.status("Swish") == "unknown" and t11.status("Swish") == "supported"
    assert (t10.max_opset, t11.max_opset) == (24, 25)


def test_clean_graph_has_no_findings():
    report = lint_model(_conv_relu(), 10)
    assert report.findings == [] and report.ok
    assert report.nodes == 3 and report.opset == 17


@pytest.mark.parametrize("op", ["MaxUnpool", "Unique", "DynamicQuantizeLinear"])
def test_unsupported_op_is_a_blocker_naming_the_node(op):
    model = _model([helper.make_node(op, ["x"], ["y"], name="bad_node")])
    (f,) = _findings(model, "unsupported-op")
    assert (f.severity, f.node, f.op) == ("error", "bad_node", op)
    assert not lint_model(model, 10).ok


def test_custom_domain_and_unknown_ops():
    custom = _model([helper.make_node("DeformConv2d", ["x"], ["y"], name="dcn", domain="mmdeploy")])
    (f,) = _findings(custom, "custom-op")
    assert f.severity == "error" and "plugin" in f.message and f.node == "dcn"
    swish = _model([helper.make_node("Swish", ["x"], ["y"], name="sw")], opset=24)
    assert [f.severity for f in _findings(swish, "unknown-op", 10)] == ["warning"]
    assert _findings(swish, "unknown-op", 11) == []


def test_opset_range_per_generation():
    assert _findings(_conv_relu(opset=8), "opset")[0].severity == "error"
    assert [f.severity for f in _findings(_conv_relu(opset=22), "opset", 10)] == ["warning"]  # > 10.0's 20
    assert _findings(_conv_relu(opset=22), "opset", 11) == []
    assert [f.severity for f in _findings(_conv_relu(opset=25), "opset", 10)] == ["error"]
    assert _findings(_conv_relu(opset=25), "opset", 11) == []


def test_runtime_conv_weights_at_static_batch_are_flagged_with_the_batch():
    model = _dynamic_kernel_conv(batch=1)
    report = lint_model(model, 10)
    (w,) = [f for f in report.findings if f.code == "conv-runtime-weights"]
    (g,) = [f for f in report.findings if f.code == "batch-dependent-group"]
    assert (w.node, w.severity, g.node, g.severity) == ("dynamic_conv", "warning", "dynamic_conv", "warning")
    assert "'kernel'" in w.message and "group=4" in g.message and "batch 1" in g.message
    assert report.ok  # parses at batch 1: a warning, not a blocker


def test_runtime_conv_weights_with_dynamic_batch_are_a_blocker():
    model = _dynamic_kernel_conv(batch="N")
    (g,) = _findings(model, "batch-dependent-group")
    assert g.severity == "error" and "dynamic" in g.message
    assert not lint_model(model, 10).ok


def test_conv_weights_from_dequantize_are_fine_and_unfolded_constants_warn():
    wq = _init("wq", RNG.integers(-127, 127, (4, 4, 3, 3)).astype(np.int8))
    scale, zp = _init("s", np.array(0.01, np.float32)), _init("zp", np.array(0, np.int8))
    qdq = _model([helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"], name="dq"),
                  helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [wq, scale, zp])
    assert lint_model(qdq, 10).findings == []
    w = _init("w0", RNG.standard_normal((4, 4, 3, 3)).astype(np.float32))
    unfolded = _model([helper.make_node("Identity", ["w0"], ["w"], name="id"),
                       helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [w])
    (f,) = lint_model(unfolded, 10).findings
    assert (f.code, f.severity, f.node) == ("conv-weights-not-folded", "warning", "conv")


def test_int64_into_a_float_only_op_and_int64_io():
    m = _init("m", np.ones((8, 8), np.int64))
    model = _model(
        [helper.make_node("Cast", ["x"], ["xi"], name="to_i64", to=TensorProto.INT64),
         helper.make_node("MatMul", ["xi", "m"], ["y"], name="mm")],
        [m], outputs=[helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    report = lint_model(model, 10)
    (bad,) = [f for f in report.findings if f.code == "int64-unsupported"]
    assert (bad.node, bad.severity) == ("mm", "error") and "INT64" in bad.message
    (io,) = [f for f in report.findings if f.code == "int64-io"]
    assert io.severity == "warning" and "'y'" in io.message
    # INT64 into an op whose TensorRT types include INT64 is fine
    ok = _model([helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
                 helper.make_node("Add", ["xi", "xi"], ["s"], name="add"),
                 helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)])
    assert _findings(ok, "int64-unsupported") == []


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [({"mode": "cubic"}, "cubic"),
     ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
     ({"mode": "linear", "antialias": 1}, "antialias"),
     ({"mode": "nearest", "keep_aspect_ratio_policy": "not_larger"}, "not_larger")],
)
def test_resize_modes_tensorrt_lacks(attrs, fragment):
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)], [scales], opset=19)
    (f,) = _findings(model, "resize-mode")
    assert f.severity == "error" and fragment in f.message and f.node == "rs"


def test_supported_resize_is_clean():
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                                     coordinate_transformation_mode="half_pixel")], [scales], opset=19)
    assert lint_model(model, 10).findings == []


def test_pooling_restrictions():
    inp1d = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])]
    pool1d = _model([helper.make_node("MaxPool", ["x"], ["y"], name="p1", kernel_shape=[2])], inputs=inp1d)
    assert _findings(pool1d, "pool-rank")[0].node == "p1"
    dil = _model([helper.make_node("MaxPool", ["x"], ["y"], name="pd", kernel_shape=[2, 2], dilations=[2, 2])])
    assert _findings(dil, "pool-dilations")[0].severity == "error"
    idx = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], name="pi", kernel_shape=[2, 2])])
    assert _findings(idx, "maxpool-indices")[0].node == "pi"
    fine = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])])
    assert lint_model(fine, 10).findings == []


def test_reduce_axes_computed_at_run_time():
    nodes = [helper.make_node("Shape", ["x"], ["shp"], name="shape"),
             helper.make_node("Slice", ["shp", "st", "en"], ["axes"], name="slice"),
             helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rmean")]
    model = _model(nodes, [_init("st", np.array([2], np.int64)), _init("en", np.array([4], np.int64))], opset=18)
    (f,) = _findings(model, "non-constant-input")
    assert (f.node, f.severity) == ("rmean", "error") and "'axes'" in f.message
    const = _model([helper.make_node("ReduceMean", ["x", "ax"], ["y"])], [_init("ax", np.array([2, 3], np.int64))],
                   opset=18)
    assert lint_model(const, 10).findings == []


@pytest.mark.parametrize(
    ("zp", "code"),
    [(np.array(3, np.int8), "qdq-zero-point"), (np.array(128, np.uint8), "qdq-unsigned"), (np.array(0, np.int8), None)],
)
def test_qdq_zero_points(zp, code):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    model = _model(nodes, [_init("s", np.array(0.02, np.float32)), _init("zp", zp)])
    report = lint_model(model, 10)
    if code is None:
        assert report.findings == []
    else:
        assert {f.node for f in report.findings if f.code == code} == {"q", "dq"}
        assert not report.ok


def test_dynamic_dims_need_a_profile_unless_the_bundle_gives_a_size():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "height", "width"])]
    model = _model([helper.make_node("Relu", ["x"], ["y"])], inputs=inputs)
    bare = lint_model(model, 10)
    assert {(f.code, f.severity) for f in bare.findings} == {("dynamic-batch", "info"),
                                                             ("dynamic-dim-no-profile", "warning")}
    assert len([f for f in bare.findings if f.code == "dynamic-dim-no-profile"]) == 2
    hinted = lint_model(model, 10, profile_shapes={"x": [None, 4, 64, 48]})
    assert {f.code for f in hinted.findings} == {"dynamic-batch", "dynamic-dim"}
    assert "64" in next(f.message for f in hinted.findings if f.code == "dynamic-dim")


# ------------------------------------------------------------------------------------------ CLI


def test_doctor_cli_exit_codes_and_json(tmp_path, cli_runner):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_conv_relu(), good)
    onnx.save(_model([helper.make_node("Unique", ["x"], ["y"], name="uniq")]), bad)
    res = cli_runner.invoke(cli, ["doctor", str(good), "--trt", "10"])
    assert res.exit_code == 0, res.output
    assert "clean for TensorRT 10.x" in res.output
    res = cli_runner.invoke(cli, ["doctor", str(bad), "--trt", "11"])
    assert res.exit_code == 1
    assert "uniq (Unique)" in res.output and "ERROR" in res.output and "TensorRT 11.x" in res.output
    res = cli_runner.invoke(cli, ["doctor", str(bad), "--json"])
    data = json.loads(res.output)
    (report,) = data["reports"]
    assert report["ok"] is False and report["errors"] == 1
    assert report["findings"][0]["node"] == "uniq" and report["findings"][0]["severity"] == "error"


def test_doctor_cli_strict_fails_on_warnings(tmp_path, cli_runner):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_kernel_conv(batch=1), path)
    assert cli_runner.invoke(cli, ["doctor", str(path)]).exit_code == 0
    res = cli_runner.invoke(cli, ["doctor", str(path), "--strict"])
    assert res.exit_code == 1 and "conv-runtime-weights" in res.output


def test_doctor_cli_bad_paths_exit_2(tmp_path, cli_runner):
    res = cli_runner.invoke(cli, ["doctor", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    res = cli_runner.invoke(cli, ["doctor", str(junk)])
    assert res.exit_code == 2 and "not a readable ONNX" in res.output
    res = cli_runner.invoke(cli, ["doctor", str(tmp_path)])
    assert res.exit_code == 2 and "manifest.json" in res.output


# ------------------------------------------------------------------------------------------ real exports


@pytest.mark.slow
def test_exported_lite_hrnet_18_is_clean_for_both_generations(lite18_bundle, cli_runner):
    for gen in ("10", "11"):
        res = cli_runner.invoke(cli, ["doctor", str(lite18_bundle), "--trt", gen, "--json"])
        assert res.exit_code == 0, res.output
        (report,) = json.loads(res.output)["reports"]
        assert report["errors"] == 0 and report["warnings"] == 0, report["findings"]
        assert report["nodes"] > 100
        assert {f["code"] for f in report["findings"]} <= {"dynamic-batch"}


@pytest.fixture(scope="module")
def dite_upstream_stem_onnx(tmp_path_factory):
    """The upstream-form Dite-HRNet stem (DynamicKernelAggregation convs, no rewrites), dynamo-exported at batch 1.

    The whole dite_hrnet_18 takes minutes to export here, so the test exports the network's own stem, which
    holds the same kernel-aggregation modules; the full `hrdeploy export dite_hrnet_18 --no-rewrite --batch 1`
    graph is flagged the same way (62 of its convs).
    """
    import torch

    from hrdeploy.models.dite_hrnet import Stem

    torch.manual_seed(0)
    stem = Stem(3, 32, 32).eval()
    path = tmp_path_factory.mktemp("dite") / "dite_stem_upstream.onnx"
    torch.onnx.export(stem, (torch.randn(1, 3, 64, 64),), dynamo=True, opset_version=19).save(str(path))
    return path


@pytest.mark.slow
def test_upstream_dite_kernel_aggregation_is_flagged_for_runtime_weight_convs(dite_upstream_stem_onnx, cli_runner):
    report = lint_file(dite_upstream_stem_onnx, 10)
    runtime = [f for f in report.findings if f.code == "conv-runtime-weights"]
    assert len(runtime) == 6  # the stem's six DynamicKernelAggregation convs (K=4 kernels each)
    assert all(f.op == "Conv" and f.node and f.severity == "warning" for f in runtime)
    grouped = {f.node for f in report.findings if f.code == "batch-dependent-group"}
    assert grouped == {f.node for f in runtime}
    assert report.ok  # batch 1 parses; --strict turns the flags into a failing exit
    res = cli_runner.invoke(cli, ["doctor", str(dite_upstream_stem_onnx), "--strict"])
    assert res.exit_code == 1 and "conv-runtime-weights x6" in res.output
