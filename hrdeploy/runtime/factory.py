"""Open the right runner for an artifact file."""

from __future__ import annotations

import os
from pathlib import Path

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file
from hrdeploy.runtime.base import Runner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def open_runner(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """OrtRunner for .onnx, TrtRunner for .engine/.plan/.trt."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} {not_a_file(path)}; pass an .onnx file or a TensorRT engine")
    if path.suffix == ".onnx":
        from hrdeploy.bundle import load_onnx
        from hrdeploy.runtime.onnxruntime import OrtRunner

        load_onnx(path)  # a corrupt file is one clear UserError before onnxruntime parses it

        return OrtRunner(path, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        from hrdeploy.runtime.tensorrt import TrtRunner

        return TrtRunner(path)
    raise UserError(f"{path}: unknown artifact type {path.suffix!r}; expected .onnx or {'/'.join(ENGINE_SUFFIXES)}")
