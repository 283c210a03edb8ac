"""The schema of a YAML preset (export_configs/*.yaml): its sections, their keys, each key's type and range.

`hrdeploy export --config` reads a preset with `Preset`, and the bundle stores its quantize/build sections
for later stages as the manifest's `stages` (`Stages`), checked with the same types again, so `hrdeploy
quantize` gets the same typed, bounded values whether they come from the YAML file or from the manifest.
Types are never coerced: `batch: "4"` is an error, not 4. A key left out is None.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from hrdeploy.errors import UserError
from hrdeploy.limits import MAX_BATCH, MAX_SEED
from hrdeploy.schema import Bool, Int, SizeHW, Str, StrList, bounded_float, bounded_int, describe

MAX_CALIB_SAMPLES = 100_000
MAX_WORKSPACE_GB = 1024


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def given(self) -> dict[str, Any]:
        """The keys the preset set, with their values."""
        return self.model_dump(exclude_unset=True)


class ExportPreset(_Section):
    dataset: Str | None = None
    input_size: SizeHW = None  # parsed by hrdeploy.export.options.parse_size
    checkpoint: Str | None = None
    batch: bounded_int(1, MAX_BATCH) = None
    dynamic_batch: Bool = None
    dynamic_shape: Bool = None
    opset: Int = None
    exporter: Str = None
    simplify: Bool = None
    rewrite: Bool = None
    seed: bounded_int(0, MAX_SEED) = None


class QuantizePreset(_Section):
    precision: Str = None
    calib_samples: bounded_int(1, MAX_CALIB_SAMPLES) = None
    method: Str = None
    backend: Str = None
    exclude: StrList = None


class BuildPreset(_Section):
    precision: Str = None
    min_batch: bounded_int(1, MAX_BATCH) = None
    opt_batch: bounded_int(1, MAX_BATCH) = None
    max_batch: bounded_int(1, MAX_BATCH) = None
    workspace: bounded_float(0, MAX_WORKSPACE_GB) = None
    timing_cache: Str = None
    builder_opt_level: bounded_int(0, 5) = None
    dla_core: bounded_int(0, 15) = None
    gpu_fallback: Bool = None
    version_compatible: Bool = None
    hardware_compat: Str = None


class Stages(_Section):
    """The preset sections stored in the manifest for the stage that reads them."""

    quantize: QuantizePreset = QuantizePreset()
    build: BuildPreset = BuildPreset()


class Preset(Stages):
    """A whole YAML preset."""

    export: ExportPreset = ExportPreset()


def load_preset_data(data: Any, where: str) -> Preset:
    """`data` (a parsed YAML preset) as a Preset; the first problem is a UserError naming `where`."""
    try:
        return Preset.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        problem = describe(first)
        if first["type"] == "extra_forbidden":
            problem += f"; known: {', '.join(_known(tuple(first['loc'][:-1])))}"
        raise UserError(f"{where}: {problem}") from None


def _known(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Preset
    for part in loc:
        model = model.model_fields[part].annotation
    return sorted(model.model_fields)
