"""torch -> ONNX with either exporter, static or dynamic batch (and H/W), checked and simplified."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import onnx
import torch
from torch import nn

from hrdeploy.errors import UserError

INPUT_NAME = "input"


class ExporterError(UserError):
    """An exporter could not export the model; `exporter` and `reason` (its first error line) say which and why."""

    def __init__(self, exporter: str, reason: str) -> None:
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        super().__init__(
            f"the {exporter} exporter could not export this model: {reason}; try the default rewrites (drop "
            f"--no-rewrite), a static --batch, or --exporter {other}"
        )
        self.exporter, self.reason = exporter, reason


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line.split(". Please feel free to request support")[0][:300]  # torch's boilerplate
    return type(err).__name__


@contextmanager
def _no_ir_dump() -> Iterator[None]:
    """Keep the TorchScript exporter from printing its whole IR graph (thousands of lines, from C++ to the
    process's stdout) when it fails: torch's setup_onnx_logging tests the function `_jit_is_onnx_log_enabled`
    instead of calling it, so its log is always on. The failure itself still raises."""
    log = getattr(torch._C, "_jit_onnx_log", None)
    if log is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = log


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    output_names: list[str],
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_shape: bool = False,
    stride: int = 32,
    opset: int = 19,
    exporter: str = "torchscript",
) -> None:
    """Export `model` to `path`; a dynamic batch dim is named `batch` in the graph.

    With dynamic_shape, dynamo exports H and W as multiples of `stride` (torch.export derived dims),
    since the export-friendly rewrites are exact only for sizes that divide by the network stride;
    TorchScript names them `height` and `width` without a constraint. A failure raises ExporterError.
    """
    x = torch.randn(batch if not dynamic_batch else max(batch, 2), 3, *input_size)
    kwargs: dict = {"input_names": [INPUT_NAME], "output_names": list(output_names), "opset_version": opset}
    if exporter == "dynamo":
        dims: dict[int, object] = {}
        if dynamic_batch:
            dims[0] = torch.export.Dim("batch", min=1, max=1024)
        if dynamic_shape:
            h_blocks = torch.export.Dim("h_blocks", min=2, max=4096 // stride)
            w_blocks = torch.export.Dim("w_blocks", min=2, max=4096 // stride)
            dims[2], dims[3] = stride * h_blocks, stride * w_blocks
        kwargs.update(dynamo=True, external_data=False)
        if dims:
            kwargs["dynamic_shapes"] = (dims,)
    else:
        axes = {}
        if dynamic_batch:
            axes = {0: "batch"}
        if dynamic_shape:
            axes.update({2: "height", 3: "width"})
        kwargs.update(dynamo=False)
        if axes:
            kwargs["dynamic_axes"] = {INPUT_NAME: axes, **{n: {0: "batch"} for n in output_names}}
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(log), redirect_stderr(log), _no_ir_dump():
            # Warnings only: TorchScript's "legacy exporter" DeprecationWarnings (torch >= 2.9), tracer and
            # dynamo notices. A failure raises and is reported below; a wrong graph fails the parity check.
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            result = torch.onnx.export(model, (x,), None if exporter == "dynamo" else os.fspath(path), **kwargs)
            if result is not None:
                result.save(os.fspath(path))
    except Exception as err:  # the exporters raise many unrelated types; all mean "cannot export"
        raise ExporterError(exporter, _first_line(err)) from err


def check_and_infer(path: str | os.PathLike) -> onnx.ModelProto:
    """onnx.checker + shape inference; a failure here is a bug in the export, reported as such."""
    model = onnx.load(os.fspath(path))
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim; returns (model, None) or (the unsimplified model, why simplification failed)."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
    except Exception as err:  # onnxsim raises RuntimeError and C++ errors of its own
        return model, _first_line(err)
    if not ok:
        return model, "onnxsim's own check of the simplified model failed"
    return simplified, None
