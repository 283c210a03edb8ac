"""Export options: one dataclass, filled from a YAML preset and then from command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from hrdeploy.errors import UserError
from hrdeploy.limits import MAX_BATCH, MAX_SEED
from hrdeploy.presets import Stages, load_preset_data

EXPORTERS = ("torchscript", "dynamo")
# Without an explicit choice the TorchScript exporter runs (several times faster, and after onnxsim and the graph
# passes the same graph as dynamo's up to form: Slices for a Split, a few Constants); a model it cannot
# export falls back to dynamo. benchmarks/export_time.md has the measurements. With a dynamic H/W dynamo runs
# first: TorchScript bakes the sample's H, W into the batched 1x1 dynamic-kernel form of Dite-HRNet (a Reshape
# that fails at any other size).
DEFAULT_EXPORTER, FALLBACK_EXPORTER = "torchscript", "dynamo"
# Opsets each exporter emits in torch 2.13 (torch.onnx._constants); TensorRT 10/11 parse 9..22+.
OPSET_RANGE = {"dynamo": (18, 23), "torchscript": (13, 20)}
DEFAULT_OPSET = 19  # >= 19 so ModelOpt's INT8 PTQ takes the graph as it is


@dataclass(frozen=True)
class ExportOptions:
    dataset: str | None = None
    input_size: tuple[int, int] | None = None
    checkpoint: str | None = None
    batch: int = 1
    dynamic_batch: bool = False
    dynamic_shape: bool = False
    opset: int = DEFAULT_OPSET
    exporter: str | None = None  # None: DEFAULT_EXPORTER, falling back to FALLBACK_EXPORTER if it fails
    simplify: bool = True
    rewrite: bool = True
    graph_passes: bool = True  # hrdeploy.optimize on the ONNX; only with rewrite (upstream form stays as-is)
    seed: int = 0
    stages: Stages = Stages()  # preset sections for later stages

    @property
    def first_exporter(self) -> str:
        """The exporter to run: the chosen one, else dynamo for a dynamic H/W, else DEFAULT_EXPORTER."""
        return self.exporter or (FALLBACK_EXPORTER if self.dynamic_shape else DEFAULT_EXPORTER)

    def validated(self) -> ExportOptions:
        if self.exporter is not None and self.exporter not in EXPORTERS:
            raise UserError(f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}")
        check_opset(self.opset, self.first_exporter)
        if not 1 <= self.batch <= MAX_BATCH:
            raise UserError(f"batch must be 1..{MAX_BATCH}, got {self.batch}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be 0..{MAX_SEED}, got {self.seed}")
        dynamic_batch = self.dynamic_batch or self.dynamic_shape
        return replace(self, dynamic_batch=dynamic_batch)


def check_opset(opset: int, exporter: str, hint: str = "") -> None:
    """UserError unless `exporter` can emit `opset`."""
    lo, hi = OPSET_RANGE[exporter]
    if not lo <= opset <= hi:
        raise UserError(f"{hint}opset {opset} is out of range for the {exporter} exporter; use {lo}..{hi}")


def parse_size(text: str | list | tuple) -> tuple[int, int]:
    """'256x192' or [256, 192] -> (256, 192) as (h, w)."""
    try:
        if isinstance(text, str):
            h, w = text.lower().split("x")
        else:
            h, w = text
            if not all(type(v) is int for v in (h, w)):
                raise TypeError("sizes in a list must be integers")
        return int(h), int(w)
    except (ValueError, TypeError) as err:
        raise UserError(f"input size {text!r} is not HxW; write it as e.g. 256x192") from err


def load_preset(path: str | os.PathLike) -> ExportOptions:
    """Read a YAML preset (export_configs/*.yaml) checked against hrdeploy.presets: unknown sections or keys,
    wrong types and numbers out of range are errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read config {path}: {str(err).splitlines()[0]}") from err
    preset = load_preset_data(data, f"config {path}")
    export = preset.export.given()
    if "input_size" in export:
        export["input_size"] = parse_size(export["input_size"])
    return ExportOptions(**export, stages=Stages(quantize=preset.quantize, build=preset.build))
