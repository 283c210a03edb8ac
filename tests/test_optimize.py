"""Exact ONNX graph passes (hrdeploy.optimize): each rewritten graph computes what the original computes,
at batch 1 and 3 and two input sizes, on hand-built graphs and on the zoo models that contain the patterns."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrdeploy.optimize import optimize_graph

C = 8  # channels of the synthetic graph's input


def _shuffle(prefix: str, x: str, c: int, h: int, w: int, out: str, perm: list[int] | None = None) -> tuple:
    """Reshape(-1, 2, c/2, h, w) -> Transpose -> Reshape(-1, c, h, w) as the dynamo exporter writes it."""
    s5 = numpy_helper.from_array(np.array([-1, 2, c // 2, h, w], np.int64), f"{prefix}_s5")
    s4 = numpy_helper.from_array(np.array([-1, c, h, w], np.int64), f"{prefix}_s4")
    nodes = [
        helper.make_node("Reshape", [x, s5.name], [f"{prefix}_r"], allowzero=1),
        helper.make_node("Transpose", [f"{prefix}_r"], [f"{prefix}_t"], perm=perm or [0, 2, 1, 3, 4]),
        helper.make_node("Reshape", [f"{prefix}_t", s4.name], [out], allowzero=1),
    ]
    return nodes, [s5, s4]


def synthetic(h: int, w: int, transpose_perm: list[int] | None = None, slices: bool = False) -> onnx.ModelProto:
    """x -> Conv -> BN -> y; shuffle(Concat(y, x)) -> Split -> (Conv, Relu); a second shuffle read by two
    ungrouped Convs; a third read by a Relu. Dynamic batch, static C/H/W: ShuffleNet units after export."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in (
        ("w0", (C, C, 1, 1)), ("gamma", (C,)), ("beta", (C,)), ("mean", (C,)), ("w1", (C, C, 1, 1)),
        ("w2", (4, 2 * C, 1, 1)), ("w3", (2 * C, 2 * C, 3, 3)), ("b3", (2 * C,)))]
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 2.0, C).astype(np.float32), "var"))
    inits.append(numpy_helper.from_array(np.array([C, C], np.int64), "halves"))
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"]),
        helper.make_node("BatchNormalization", ["c0", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3),
        helper.make_node("Concat", ["y", "x"], ["cat"], axis=1),
    ]
    sh, sh_init = _shuffle("s1", "cat", 2 * C, h, w, "shuffled", transpose_perm)
    if slices:  # the TorchScript exporter's form of a chunk: one Slice per part
        inits += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in
                  (("zero", 0), ("half", C), ("end", 2 * C), ("one", 1))]
        nodes += sh + [helper.make_node("Slice", ["shuffled", "zero", "half", "one"], ["lo"]),
                       helper.make_node("Slice", ["shuffled", "half", "end", "one"], ["hi"])]
    else:
        nodes += sh + [helper.make_node("Split", ["shuffled", "halves"], ["lo", "hi"], axis=1)]
    nodes += [
        helper.make_node("Conv", ["lo", "w1"], ["out_lo"]),
        helper.make_node("Relu", ["hi"], ["out_hi"]),
        helper.make_node("Concat", ["out_lo", "out_hi"], ["cat2"], axis=1),
    ]
    sh2, sh2_init = _shuffle("s2", "cat2", 2 * C, h, w, "shuffled2")
    nodes += sh2 + [
        helper.make_node("Conv", ["shuffled2", "w2"], ["out_a"]),
        helper.make_node("Conv", ["shuffled2", "w3", "b3"], ["out_b"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["y", "out_hi"], ["cat3"], axis=1),
    ]
    sh3, sh3_init = _shuffle("s3", "cat3", 2 * C, h, w, "shuffled3")
    nodes += sh3 + [helper.make_node("Relu", ["shuffled3"], ["out_c"])]
    for k, node in enumerate(nodes):
        node.name = f"{node.op_type}_{k}"
    graph = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C, h, w])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out_a", "out_b", "out_hi", "out_c")],
        inits + sh_init + sh2_init + sh3_init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...], rel: float = 1e-5) -> None:
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    for ra, rb in zip(run(a, x), run(b, x), strict=True):
        assert ra.shape == rb.shape
        assert np.abs(ra - rb).max() <= rel * np.abs(ra).max()


@pytest.mark.parametrize(("size", "slices"), [((8, 6), False), ((16, 12), False), ((8, 6), True)])
def test_passes_are_exact_on_a_shuffle_unit(size, slices):
    model = synthetic(*size, slices=slices)
    optimized, records = optimize_graph(model)
    sites = {r["pass"]: r["sites"] for r in records}
    assert sites == {"batchnorm_into_conv": 1, "shuffle_to_gather": 3, "gather_into_split": 1, "gather_into_conv": 1,
                     "shuffle_concat_to_stack": 1}
    ops = [n.op_type for n in optimized.graph.node]
    assert not {"Transpose", "BatchNormalization", "Split", "Slice"} & set(ops)
    assert ops.count("Gather") == 2  # the split's two parts; the second shuffle went into the convs' weights
    assert ops.count("Unsqueeze") == 2 and ops.count("Reshape") == 1  # the third is a stack of its two parts
    names = [n.name for n in optimized.graph.node]
    assert len(set(names)) == len(names)  # onnxruntime rejects duplicate node names
    assert records[0]["nodes_before"] == len(model.graph.node) == 20 + slices
    assert records[-1]["nodes_after"] == len(ops) == 14
    for batch in (1, 3):
        assert_same(model, optimized, (batch, C, *size))


def test_a_transpose_that_is_not_a_shuffle_is_left_alone():
    model = synthetic(8, 6, transpose_perm=[0, 1, 2, 4, 3])
    optimized, records = optimize_graph(model, names=("shuffle_to_gather",))
    assert records == [{"pass": "shuffle_to_gather", "sites": 2, "nodes_before": 20, "nodes_after": 16}]
    ops = [n.op_type for n in optimized.graph.node]
    assert ops.count("Transpose") == 1 and ops.count("Gather") == 2  # the first one is not a shuffle
    assert_same(model, optimized, (2, C, 8, 6))


def test_export_records_the_passes_and_stays_exact(lite18_bundle):
    """The session bundle (torchscript, 128x96, dynamic batch): its parity vs eager at batch 1 and 4 is of the
    optimised graph; the manifest says what each pass did."""
    manifest = json.loads((lite18_bundle / "manifest.json").read_text())
    records = {r["pass"]: r for r in manifest["export"]["graph_passes"]}
    assert records["shuffle_to_gather"]["sites"] == 49  # 2 per LITE block + the stem's
    assert records["gather_into_split"]["sites"] == 24
    assert records["shuffle_concat_to_stack"]["sites"] == 25  # the rest: every LITE block's last shuffle + stem
    assert records["shuffle_to_gather"]["nodes_after"] == records["shuffle_to_gather"]["nodes_before"] - 2 * 49
    ops = [n.op_type for n in onnx.load(str(lite18_bundle / "model.onnx")).graph.node]
    assert "Transpose" not in ops and len(ops) == manifest["export"]["graph_passes"][-1]["nodes_after"]
    parity = json.loads((lite18_bundle / "parity.json").read_text())["export"]
    assert parity["passed"] and {r["batch"] for r in parity["rows"]} == {1, 4}
    assert max(r["max_rel"] for r in parity["rows"]) <= 1e-4
    phases = manifest["export"]["phases"]
    assert {"build_model", "export_torchscript", "graph_passes", "parity"} <= set(phases)
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in phases.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["lite_hrnet_18", "lite_hrnet_30", "naive_lite_hrnet_18", "wider_naive_lite_hrnet_18", "dite_hrnet_18"]
)
def test_passes_are_exact_on_zoo_models(tmp_path, name):
    """TorchScript exports (fast; their shuffles are the same Reshape/Transpose form) at two sizes, dynamic
    batch: the optimised graph against the unoptimised one at batch 1 and 3."""
    from hrdeploy.export.onnx_export import check_and_infer, export_onnx, simplify
    from hrdeploy.export.threads import torch_threads
    from hrdeploy.registry import get_spec
    from hrdeploy.rewrite import apply
    from hrdeploy.zoo import build_model

    spec = get_spec(name)
    with torch_threads():
        model, _ = apply(build_model(name))
        for size in ((128, 96), (192, 128)):
            path = tmp_path / f"{size[0]}.onnx"
            export_onnx(model, path, size, list(spec.output_names), dynamic_batch=True, exporter="torchscript")
            original, error = simplify(check_and_infer(path))
            assert error is None
            optimized, records = optimize_graph(original)
            shuffles = {r["pass"]: r["sites"] for r in records}["shuffle_to_gather"]
            transposes = [sum(n.op_type == "Transpose" for n in m.graph.node) for m in (original, optimized)]
            assert shuffles > 0 and transposes[0] - transposes[1] == shuffles  # Dite keeps its other Transposes
            for batch in (1, 3):
                assert_same(original, optimized, (batch, 3, *size))


def test_doctor_prints_the_node_counts_before_and_after(lite18_bundle, cli_runner):
    from hrdeploy.cli import cli

    records = json.loads((lite18_bundle / "manifest.json").read_text())["export"]["graph_passes"]
    result = cli_runner.invoke(cli, ["doctor", str(lite18_bundle)])
    assert result.exit_code == 0, result.output
    before, after = records[0]["nodes_before"], records[-1]["nodes_after"]
    assert after < before
    assert (f"graph passes: {before} -> {after} nodes (shuffle_to_gather x49, gather_into_split x24, "
            "shuffle_concat_to_stack x25)") in result.output
