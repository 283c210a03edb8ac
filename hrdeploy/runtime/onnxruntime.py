"""ONNX Runtime runner (CPU provider unless asked otherwise)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.runtime.base import RunnerBase
from hrdeploy.runtime.ort_options import OrtSettings, settings_for_onnx


def run_failure(err: BaseException, limit: int = 240) -> str:
    """onnxruntime's run error in one short line: the failing node and the kernel's own explanation, without
    the C++ source location and check expression it embeds ("Non-zero status code returned while running
    Reshape node. Name:'/a/Reshape_6' Status Message: /onnxruntime_src/...: size != 0 ... was false. The
    input tensor cannot be reshaped ..." -> "node /a/Reshape_6 (Reshape): The input tensor cannot ...")."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    detail = text.split("Status Message:", 1)[-1].strip()
    detail = detail.split(" was false. ", 1)[-1].strip()
    if node:
        detail = f"node {node.group(2)} ({node.group(1)}): {detail}"
    return detail[:limit]


class OrtRunner(RunnerBase):
    name = "ort"

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        profile: bool = False,
        settings: OrtSettings | None = None,
    ) -> None:
        """`settings` default to the tuned ones of the bundle the file belongs to (`hrdeploy bench --tune`),
        else onnxruntime's defaults; `threads` overrides their thread count."""
        import onnxruntime as ort

        self.settings = settings or settings_for_onnx(path) or OrtSettings()
        if threads:
            self.settings = replace(self.settings, threads=threads)
        opts = self.settings.session_options(profile=profile)
        try:
            self.session = ort.InferenceSession(os.fspath(path), opts, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise UserError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}") from err
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self.session = None  # onnxruntime frees the session when its last reference goes
