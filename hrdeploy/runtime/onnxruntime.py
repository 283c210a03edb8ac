"""ONNX Runtime runner (CPU provider unless asked otherwise)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

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


def ort_session(
    source: Any,
    threads: int | None = None,
    *,
    settings: OrtSettings | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    profile: bool = False,
) -> Any:  # -> onnxruntime.InferenceSession
    """The one onnxruntime session builder: `source` is an ONNX path or a ModelProto; `settings` default to
    onnxruntime's defaults, `threads` overrides their thread count. A file onnxruntime cannot load is a UserError."""
    import onnx
    import onnxruntime as ort

    settings = settings or OrtSettings()
    if threads:
        settings = replace(settings, threads=threads)
    model = source.SerializeToString() if isinstance(source, onnx.ModelProto) else os.fspath(source)
    try:
        return ort.InferenceSession(model, settings.session_options(profile=profile), providers=list(providers))
    except Exception as err:  # onnxruntime raises its own untyped errors for bad files
        what = "the model" if isinstance(source, onnx.ModelProto) else source
        raise UserError(f"onnxruntime cannot load {what}: {str(err).splitlines()[0]}") from err


class OrtRunner(RunnerBase):
    """An onnxruntime session on an ONNX file; the session is built on activate()."""

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
        self.path = path
        self.settings = settings or settings_for_onnx(path) or OrtSettings()
        if threads:
            self.settings = replace(self.settings, threads=threads)
        self.providers = tuple(providers)
        self.profile = profile
        self.session: Any = None

    def _activate(self) -> None:
        self.session = ort_session(self.path, settings=self.settings, providers=self.providers, profile=self.profile)

    @property
    def input_name(self) -> str:
        return self.activate().session.get_inputs()[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.activate().session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = self.output_names
        outs = self.session.run(names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs, strict=True)}

    def _deactivate(self) -> None:
        self.session = None  # onnxruntime frees the session when its last reference goes
