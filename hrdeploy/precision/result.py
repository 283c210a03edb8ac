"""`QuantizeResult`: what one quantize run made and how it was judged, typed.

The quantize stage returns it, `hrdeploy quantize` prints it, and its `manifest_entry()` is the artifact's
entry in the manifest (besides file and sha256, which the bundle adds), so the command never reopens the
bundle to read what the stage just wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Calibration(_Frozen):
    """The calibration inputs: how many of how many found, from where."""

    source: str
    count: int
    available: int


class Validation(_Frozen):
    """The gate's verdict against eager fp32 (hrdeploy.parity): its mode, bounds, measured values, failures."""

    passed: bool
    mode: str  # "coco-ap" | "crop-agreement" | "tensor"
    inputs: int
    source: str
    tolerance: dict[str, Any]
    gated: dict[str, Any]
    failures: list[str]
    ap: float | None = None
    eager_ap: float | None = None
    cosine: float | None = None
    input_noise_cosine: float | None = None
    interval: dict[str, Any] | None = None


class QuantizeResult(_Frozen):
    """One precision variant: its file, conversion facts (int8 or fp16 ones), INT8 search path, verdict."""

    precision: str
    path: Path
    size_bytes: int
    backend: str
    converter: str
    calibration: Calibration
    excluded_nodes: list[Any]
    report: str  # quantize.<precision>.md, inside the bundle
    # int8
    method: str | None = None
    samples: int | None = None
    convs_quantized: int | None = None
    convs_unquantized: int | None = None
    unquantized_convs: list[Any] | None = None
    auto_excluded: dict[str, Any] | None = None
    equalized: dict[str, str] | None = None  # depthwise conv -> "folded" | "mul" (hrdeploy.precision.equalize)
    equalized_dense: dict[str, str] | None = None  # dense conv -> the conv its input scales were folded into
    shifted_convs: int | None = None  # INT8 convs reading a shifted input (hrdeploy.precision.shift)
    runtime_weight_convs: list[Any] | None = None
    search: dict[str, Any] | None = None
    # fp16
    kept_fp32_count: int | None = None
    kept_fp32_nodes: list[Any] | None = None
    kept_fp32_by_op: dict[str, Any] | None = None
    overflow_count: int | None = None
    overflow_nodes: dict[str, Any] | None = None
    fp16_compute_nodes: int | None = None
    validation: Validation | None = None

    @property
    def passed(self) -> bool:
        """True when the variant is within tolerance, or was not judged."""
        return self.validation is None or self.validation.passed

    def manifest_entry(self) -> dict[str, Any]:
        """The artifact's manifest fields besides file and sha256 (Bundle.record_artifact adds those)."""
        return self.model_dump(mode="json", exclude={"path"}, exclude_none=True)
