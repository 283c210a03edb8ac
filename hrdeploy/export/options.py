"""Export options: one dataclass, filled from a YAML preset and then from command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hrdeploy.errors import UserError

EXPORTERS = ("dynamo", "torchscript")
# Opsets each exporter emits in torch 2.13 (torch.onnx._constants); TensorRT 10/11 parse 9..22+.
OPSET_RANGE = {"dynamo": (18, 23), "torchscript": (13, 20)}
DEFAULT_OPSET = 19  # >= 19 so ModelOpt's INT8 PTQ takes the graph as it is

# Keys a preset may hold per section; `export` keys are ExportOptions fields, the others are stored in the
# manifest for the stage that reads them (`hrdeploy quantize`, `hrdeploy build`).
SECTION_KEYS = {
    "quantize": {"precision", "calib_samples", "method", "backend", "exclude"},
    "build": {
        "precision", "min_batch", "opt_batch", "max_batch", "workspace", "timing_cache", "builder_opt_level",
        "dla_core", "gpu_fallback", "version_compatible", "hardware_compat",
    },
}


@dataclass(frozen=True)
class ExportOptions:
    dataset: str | None = None
    input_size: tuple[int, int] | None = None
    checkpoint: str | None = None
    batch: int = 1
    dynamic_batch: bool = False
    dynamic_shape: bool = False
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    simplify: bool = True
    rewrite: bool = True
    graph_passes: bool = True  # hrdeploy.optimize on the ONNX; only with rewrite (upstream form stays as-is)
    seed: int = 0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset sections for later stages

    def validated(self) -> ExportOptions:
        if self.exporter not in EXPORTERS:
            raise UserError(f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}")
        lo, hi = OPSET_RANGE[self.exporter]
        if not lo <= self.opset <= hi:
            raise UserError(f"opset {self.opset} is out of range for the {self.exporter} exporter; use {lo}..{hi}")
        if self.batch < 1:
            raise UserError(f"batch must be >= 1, got {self.batch}")
        dynamic_batch = self.dynamic_batch or self.dynamic_shape
        return replace(self, dynamic_batch=dynamic_batch)


def parse_size(text: str | list | tuple) -> tuple[int, int]:
    """'256x192' or [256, 192] -> (256, 192) as (h, w)."""
    try:
        if isinstance(text, str):
            h, w = text.lower().split("x")
        else:
            h, w = text
        return int(h), int(w)
    except (ValueError, TypeError) as err:
        raise UserError(f"input size {text!r} is not HxW; write it as e.g. 256x192") from err


def load_preset(path: str | os.PathLike) -> ExportOptions:
    """Read a YAML preset (export_configs/*.yaml); unknown sections or keys are errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read config {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping with sections export/quantize/build")
    known = {f.name for f in fields(ExportOptions)} - {"stages"}
    allowed = {"export": known, **SECTION_KEYS}
    for section, body in data.items():
        if section not in allowed:
            raise UserError(f"config {path}: unknown section {section!r}; use {', '.join(allowed)}")
        if not isinstance(body, dict):
            raise UserError(f"config {path}: section {section!r} must be a mapping")
        unknown = sorted(set(body) - allowed[section])
        if unknown:
            raise UserError(
                f"config {path}: unknown key {unknown[0]!r} in {section!r}; "
                f"known keys: {', '.join(sorted(allowed[section]))}"
            )
    export = dict(data.get("export", {}))
    if "input_size" in export:
        export["input_size"] = parse_size(export["input_size"])
    stages = {k: v for k, v in data.items() if k != "export"}
    return ExportOptions(**export, stages=stages)
