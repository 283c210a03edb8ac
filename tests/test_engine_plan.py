"""BuildPlan construction: pure decisions per TensorRT generation, from bundles and bare ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_bundles import tiny_bundle, tiny_onnx

from hrdeploy.engine.plan import BuildOptions, OnnxInput, Source, describe_source, make_plan, onnx_graph_precision
from hrdeploy.errors import UserError


def bundle_source(root="/b", files=("fp32",), batch="batch", size=(256, 192)) -> Source:
    root = Path(root)
    names = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    return Source(path=root, bundle=root, inputs=(OnnxInput("input", (batch, 3, size[0], size[1])),),
                  onnx_files={p: root / names[p] for p in files}, size=size)


def test_trt10_fp16_uses_fp32_onnx_with_the_fp16_flag_and_a_batch_profile():
    plan = make_plan(bundle_source(), BuildOptions(precision="fp16", max_batch=8), 10)
    assert plan.onnx == Path("/b/model.onnx") and plan.make_first is None
    assert plan.builder_flags == ("FP16",) and not plan.strongly_typed and plan.precision_from == "flags"
    (p,) = plan.profiles
    assert (p.min, p.opt, p.max) == ((1, 3, 256, 192), (4, 3, 256, 192), (8, 3, 256, 192))
    assert plan.engine == Path("/b/model.fp16.engine") and plan.metadata == Path("/b/model.fp16.engine.json")
    assert plan.artifact_key == "engine_fp16"


def test_trt11_fp16_takes_the_fp16_onnx_and_makes_it_first_when_missing():
    missing = make_plan(bundle_source(), BuildOptions(precision="fp16"), 11)
    assert missing.make_first == "fp16" and missing.onnx == Path("/b/model.fp16.onnx")
    assert missing.builder_flags == () and missing.strongly_typed and missing.precision_from == "onnx"
    assert any("made first" in n for n in missing.notes)
    present = make_plan(bundle_source(files=("fp32", "fp16")), BuildOptions(precision="fp16"), 11)
    assert present.make_first is None and present.onnx == Path("/b/model.fp16.onnx")


@pytest.mark.parametrize("gen", [10, 11])
def test_int8_always_comes_from_the_qdq_onnx(gen):
    plan = make_plan(bundle_source(files=("fp32", "int8")), BuildOptions(precision="int8"), gen)
    assert plan.onnx == Path("/b/model.int8.onnx") and plan.make_first is None
    assert plan.builder_flags == (("INT8", "FP16") if gen == 10 else ())
    missing = make_plan(bundle_source(), BuildOptions(precision="int8"), gen)
    assert missing.make_first == "int8" and any("--calib-dir" in n for n in missing.notes)


def test_trt10_can_build_strongly_typed_from_the_onnx():
    plan = make_plan(bundle_source(files=("fp32", "fp16")), BuildOptions(precision="fp16", precision_from="onnx"), 10)
    assert plan.strongly_typed and plan.builder_flags == () and plan.onnx.name == "model.fp16.onnx"


def test_removed_and_impossible_features_are_clear_errors():
    src = bundle_source()
    with pytest.raises(UserError, match="TensorRT 11 removed the precision builder flags"):
        make_plan(src, BuildOptions(precision_from="flags"), 11)
    with pytest.raises(UserError, match="has no DLA"):
        make_plan(src, BuildOptions(dla_core=0), 11, trt_version="11.2.0.5")
    with pytest.raises(UserError, match="DLA runs FP16 and INT8 only"):
        make_plan(src, BuildOptions(precision="fp32", dla_core=0), 10)
    with pytest.raises(UserError, match="only applies to DLA"):
        make_plan(src, BuildOptions(gpu_fallback=True), 10)
    with pytest.raises(UserError, match="needs TensorRT >= 10.9"):
        make_plan(src, BuildOptions(hardware_compat="same-cc"), 10, trt_version="10.3.0")
    with pytest.raises(UserError, match="min <= opt <= max"):
        make_plan(src, BuildOptions(opt_batch=8, max_batch=4), 10)


def test_dla_plan_on_trt10_and_on_a_recent_trt11():
    plan = make_plan(bundle_source(batch=1), BuildOptions(dla_core=1, gpu_fallback=True), 10)
    assert plan.dla_core == 1 and plan.builder_flags == ("FP16", "GPU_FALLBACK")
    assert make_plan(bundle_source(batch=1), BuildOptions(dla_core=0), 11, trt_version="11.4.1").dla_core == 0


def test_static_batch_rejects_batch_options_and_keeps_its_shape():
    src = bundle_source(batch=1)
    plan = make_plan(src, BuildOptions(), 10)
    assert not plan.profiles[0].dynamic and plan.profiles[0].max == (1, 3, 256, 192)
    with pytest.raises(UserError, match="static batch of 1.*--dynamic-batch"):
        make_plan(src, BuildOptions(max_batch=8), 10)


def test_batch_defaults():
    src = bundle_source()
    p = make_plan(src, BuildOptions(), 10).profiles[0]
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 1, 1)
    p = make_plan(src, BuildOptions(min_batch=2, max_batch=16), 10).profiles[0]
    assert (p.min[0], p.opt[0], p.max[0]) == (2, 8, 16)
    p = make_plan(src, BuildOptions(opt_batch=6), 10).profiles[0]
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 6, 6)


def test_dynamic_height_width_take_the_manifest_size():
    src = bundle_source(size=(128, 96))
    src = Source(path=src.path, bundle=src.bundle, onnx_files=src.onnx_files, size=(128, 96),
                 inputs=(OnnxInput("input", ("batch", 3, "height", "width")),))
    assert make_plan(src, BuildOptions(max_batch=2), 10).profiles[0].max == (2, 3, 128, 96)
    bare = Source(path=Path("/m.onnx"), inputs=src.inputs, onnx_files={"fp32": Path("/m.onnx")}, onnx_precision="fp32")
    with pytest.raises(UserError, match="dim 2 .*no size"):
        make_plan(bare, BuildOptions(), 10)


def test_other_options_carry_into_the_plan():
    opts = BuildOptions(workspace_gib=1.5, timing_cache=Path("t.cache"), builder_opt_level=5, version_compatible=True,
                        hardware_compat="ampere+", output=Path("/elsewhere/x.engine"))
    plan = make_plan(bundle_source(), opts, 10)
    assert plan.workspace_bytes == 3 << 29 and plan.timing_cache == Path("t.cache") and plan.builder_opt_level == 5
    assert "VERSION_COMPATIBLE" in plan.builder_flags and plan.hardware_compat == "ampere+"
    assert plan.engine == Path("/elsewhere/x.engine") and plan.artifact_key is None  # outside the bundle
    assert plan.to_dict()["engine"] == "/elsewhere/x.engine"


def test_bare_onnx_precision_must_match_what_the_generation_can_do(tmp_path):
    fp32 = describe_source(tiny_onnx(tmp_path / "net.onnx"))
    assert fp32.onnx_precision == "fp32" and fp32.bundle is None
    plan = make_plan(fp32, BuildOptions(precision="fp16"), 10)
    assert plan.onnx == tmp_path / "net.onnx" and plan.builder_flags == ("FP16",)
    assert plan.engine == tmp_path / "net.fp16.engine" and plan.artifact_key is None
    with pytest.raises(UserError, match="is an fp32 graph.*TensorRT 11 takes the precision from the graph"):
        make_plan(fp32, BuildOptions(precision="fp16"), 11)
    with pytest.raises(UserError, match="INT8 needs explicit Q/DQ"):
        make_plan(fp32, BuildOptions(precision="int8"), 10)
    fp16 = describe_source(tiny_onnx(tmp_path / "net.fp16.onnx", fp16=True))
    assert fp16.onnx_precision == "fp16"
    plan = make_plan(fp16, BuildOptions(precision="fp16"), 11)
    assert plan.engine == tmp_path / "net.fp16.engine" and plan.builder_flags == ()


def test_graph_precision_detection():
    m = onnx.load_from_string(onnx.helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
        "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "s")])).SerializeToString())
    assert onnx_graph_precision(m) == "int8"


def test_describe_bundle_reads_manifest_and_artifacts(tmp_path):
    src = describe_source(tiny_bundle(tmp_path / "b", with_fp16=True))
    assert src.bundle == tmp_path / "b" and src.size == (64, 48) and src.model == "tiny"
    assert set(src.onnx_files) == {"fp32", "fp16"}
    assert src.inputs == (OnnxInput("input", ("batch", 3, 64, 48)),)
    with pytest.raises(UserError, match="does not exist"):
        describe_source(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="neither a bundle directory nor an .onnx"):
        describe_source(tmp_path / "notes.txt")
