"""The one place runners are opened: an artifact or a file (onnxruntime, TensorRT), or an eager PyTorch model.

The runners load nothing until activated (`with open_runner(...) as r:` or the first run()), so a comparison
can be set up cheaply and a reference that is needed only sometimes (the float64 model) costs nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file
from hrdeploy.runtime.base import Runner


def open_runner(target: Any, threads: int | None = None) -> Runner:
    """An OrtRunner for an .onnx, a TrtRunner for an .engine/.plan/.trt; `target` is a path or a bundle's
    `Artifact` (whose file is then checked as the bundle checks it). A corrupt ONNX is a UserError here."""
    from hrdeploy.bundle import Artifact, load_onnx
    from hrdeploy.manifest import ENGINE_SUFFIXES

    if isinstance(target, Artifact):
        path = target.path
        if target.kind == "onnx":
            target.onnx_model()
    else:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"{path} {not_a_file(path)}; pass an .onnx file or a TensorRT engine")
        if path.suffix == ".onnx":
            load_onnx(path)  # a corrupt file is one clear UserError before onnxruntime parses it
    if path.suffix == ".onnx":
        from hrdeploy.runtime.onnxruntime import OrtRunner

        return OrtRunner(path, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        from hrdeploy.runtime.tensorrt import TrtRunner

        return TrtRunner(path)
    raise UserError(f"{path}: unknown artifact type {path.suffix!r}; expected .onnx or {'/'.join(ENGINE_SUFFIXES)}")


def eager_runner(model: Any, output_names: Sequence[str], threads: int | None = None, *,
                 exact: bool = False) -> Runner:
    """An EagerRunner on `model` (an nn.Module or a zero-argument builder of one, built on activate());
    `exact=True` runs a float64 copy of it (the reference of an fp32 rounding floor)."""
    import torch

    from hrdeploy.runtime.eager import EagerRunner

    return EagerRunner(model, output_names, threads=threads, dtype=torch.float64 if exact else torch.float32)
