"""onnxruntime's quantization helpers write stray files into the working folder; they must land in hrdeploy's
work folder, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from tiny_bundles import tiny_onnx

from hrdeploy.precision import int8


def test_ort_preprocess_runs_in_the_work_folder(tmp_path: Path, monkeypatch) -> None:
    import onnxruntime.quantization.shape_inference as shape_inference

    user, work = tmp_path / "user", tmp_path / "work"
    user.mkdir()
    work.mkdir()
    src = tiny_onnx(work / "model.onnx")
    seen = []

    def failing_pre_process(inp: str, out: str, skip_symbolic_shape: bool = False) -> None:
        # what onnxruntime's SymbolicShapeInference does when it gives up: save into the cwd, then raise
        seen.append(os.getcwd())
        Path("sym_shape_infer_temp.onnx").write_bytes(b"x")
        if not skip_symbolic_shape:
            raise RuntimeError("Incomplete symbolic shape inference")
        onnx.save(onnx.load(inp), out)

    monkeypatch.setattr(shape_inference, "quant_pre_process", failing_pre_process)
    monkeypatch.chdir(user)
    model = int8._ort_preprocess(Path("../work/model.onnx"), Path("../work/pre.onnx"))
    assert seen == [str(work), str(work)] and os.getcwd() == str(user)
    assert os.listdir(user) == [] and (work / "sym_shape_infer_temp.onnx").exists()
    assert len(model.graph.node) == len(onnx.load(src).graph.node)
