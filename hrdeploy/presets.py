"""The schema of a YAML preset (export_configs/*.yaml): its sections, their keys, each key's type and range.

`hrdeploy export --config` reads a preset with it, and the bundle checks the preset sections it stores for
later stages (manifest `stages`) with it again, so `hrdeploy quantize` gets the same typed, bounded values
whether they come from the YAML file or from the manifest. Types are never coerced: `batch: "4"` is an
error, not 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hrdeploy.limits import MAX_BATCH, MAX_SEED


@dataclass(frozen=True)
class Key:
    """A preset key: its JSON/YAML type(s) and, for a number, its range (low..high, both or neither)."""

    kind: type | tuple[type, ...]
    low: int | None = None
    high: int | None = None
    low_open: bool = False  # the low end itself is not allowed (a positive float)


EXPORT_KEYS: dict[str, Key] = {
    "dataset": Key(str), "input_size": Key((str, list)), "checkpoint": Key(str), "batch": Key(int, 1, MAX_BATCH),
    "dynamic_batch": Key(bool), "dynamic_shape": Key(bool), "opset": Key(int), "exporter": Key(str),
    "simplify": Key(bool), "rewrite": Key(bool), "seed": Key(int, 0, MAX_SEED),
}
# Sections stored in the manifest for the stage that reads them (`hrdeploy quantize`, `hrdeploy build`).
STAGE_KEYS: dict[str, dict[str, Key]] = {
    "quantize": {"precision": Key(str), "calib_samples": Key(int, 1, 100_000), "method": Key(str),
                 "backend": Key(str), "exclude": Key(list)},
    "build": {
        "precision": Key(str), "min_batch": Key(int, 1, MAX_BATCH), "opt_batch": Key(int, 1, MAX_BATCH),
        "max_batch": Key(int, 1, MAX_BATCH), "workspace": Key((int, float), 0, 1024, low_open=True),
        "timing_cache": Key(str), "builder_opt_level": Key(int, 0, 5), "dla_core": Key(int, 0, 15),
        "gpu_fallback": Key(bool), "version_compatible": Key(bool), "hardware_compat": Key(str),
    },
}
SECTIONS: dict[str, dict[str, Key]] = {"export": EXPORT_KEYS, **STAGE_KEYS}
NULLABLE = ("dataset", "checkpoint")  # export keys whose null means "the default"
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def value_problem(section: str, key: str, value: Any, spec: Key) -> str | None:
    """What is wrong with `value` for `section.key` ("export.batch must be an integer, not 'abc'"), or None."""
    if value is None and key in NULLABLE:
        return None
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        return f"{section}.{key} must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}, not {value!r}"
    if spec.low is not None and spec.high is not None and not isinstance(value, (bool, str, list)):
        low_ok = value > spec.low if spec.low_open else value >= spec.low
        if not (math.isfinite(value) and low_ok and value <= spec.high):
            bounds = f"above {spec.low} and at most {spec.high}" if spec.low_open else f"{spec.low}..{spec.high}"
            return f"{section}.{key} must be {bounds}, not {value!r}"
    return None


def sections_problem(data: Any, sections: dict[str, dict[str, Key]] = SECTIONS) -> str | None:
    """What is wrong with a preset mapping {section: {key: value}} (the first problem), or None."""
    if not isinstance(data, dict):
        return f"must be a mapping with sections {'/'.join(sections)}, not {type(data).__name__}"
    for section, body in data.items():
        if section not in sections:
            return f"unknown section {section!r}; use {', '.join(sections)}"
        if not isinstance(body, dict):
            return f"section {section!r} must be a mapping"
        unknown = sorted(set(body) - set(sections[section]), key=str)
        if unknown:
            return f"unknown key {unknown[0]!r} in {section!r}; known keys: {', '.join(sorted(sections[section]))}"
        for key, value in body.items():
            if problem := value_problem(section, key, value, sections[section][key]):
                return problem
    return None
