"""Export options: one dataclass, filled from a YAML preset and then from command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hrdeploy.errors import UserError

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

MAX_BATCH = 1024  # a larger static batch is a typo, not a deployment (and would exhaust memory)

# Keys a preset may hold per section, with their types; `export` keys are ExportOptions fields, the others
# are stored in the manifest for the stage that reads them (`hrdeploy quantize`, `hrdeploy build`).
EXPORT_KEYS: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "input_size": (str, list), "checkpoint": str, "batch": int, "dynamic_batch": bool,
    "dynamic_shape": bool, "opset": int, "exporter": str, "simplify": bool, "rewrite": bool, "seed": int,
}
SECTION_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "quantize": {"precision": str, "calib_samples": int, "method": str, "backend": str, "exclude": list},
    "build": {
        "precision": str, "min_batch": int, "opt_batch": int, "max_batch": int, "workspace": (int, float),
        "timing_cache": str, "builder_opt_level": int, "dla_core": int, "gpu_fallback": bool,
        "version_compatible": bool, "hardware_compat": str,
    },
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def _check_type(path: Path, section: str, key: str, value: Any, want: type | tuple[type, ...]) -> None:
    """YAML types are kept as they are: `batch: "4"` or `simplify: "false"` are errors, never coerced."""
    wants = want if isinstance(want, tuple) else (want,)
    ok = isinstance(value, wants) and not (isinstance(value, bool) and bool not in wants)
    if not ok:
        names = " or ".join(_TYPE_NAMES[w] for w in wants)
        raise UserError(f"config {path}: {section}.{key} must be {names}, not {value!r}")


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
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset sections for later stages

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
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")
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
    """Read a YAML preset (export_configs/*.yaml); unknown sections or keys are errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read config {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping with sections export/quantize/build")
    allowed = {"export": EXPORT_KEYS, **SECTION_KEYS}
    for section, body in data.items():
        if section not in allowed:
            raise UserError(f"config {path}: unknown section {section!r}; use {', '.join(allowed)}")
        if not isinstance(body, dict):
            raise UserError(f"config {path}: section {section!r} must be a mapping")
        unknown = sorted(set(body) - set(allowed[section]), key=str)
        if unknown:
            raise UserError(
                f"config {path}: unknown key {unknown[0]!r} in {section!r}; "
                f"known keys: {', '.join(sorted(allowed[section]))}"
            )
        for key, value in body.items():
            if value is not None or key not in ("dataset", "checkpoint"):
                _check_type(path, section, key, value, allowed[section][key])
    export = dict(data.get("export", {}))
    if "input_size" in export:
        export["input_size"] = parse_size(export["input_size"])
    stages = {k: v for k, v in data.items() if k != "export"}
    return ExportOptions(**export, stages=stages)
