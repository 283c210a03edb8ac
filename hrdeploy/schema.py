"""Strict field types shared by the manifest and preset schemas, and their pydantic errors as one line.

Types are never coerced (`batch: "4"` or `simplify: "false"` are errors, not 4 or False) and numbers are
bounded (hrdeploy.limits), so a typo is one `error:` line, never an allocation or an overflow.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator

PRECISIONS = ("fp32", "fp16", "int8")


def _check(test: Any, problem: str) -> BeforeValidator:
    def check(v: Any) -> Any:
        if not test(v):
            raise ValueError(f"{problem}, not {v!r}")
        return v

    return BeforeValidator(check)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bounded_int(low: int, high: int) -> Any:
    """An integer in low..high (a bool is not one)."""
    return Annotated[int, _check(lambda v: _is_int(v) and low <= v <= high, f"must be an integer in {low}..{high}")]


def bounded_float(low: float, high: float) -> Any:
    """A number above `low` and at most `high`."""
    return Annotated[float, _check(lambda v: _is_num(v) and low < v <= high,
                                   f"must be a number above {low:g} and at most {high:g}")]


def _triple(positive: bool) -> Any:
    def ok(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_num(x) for x in v)
                and (not positive or all(x > 0 for x in v)))

    return Annotated[tuple[float, float, float],
                     _check(ok, f"must be a list of 3 finite {'positive ' if positive else ''}numbers")]


Int = Annotated[int, _check(_is_int, "must be an integer")]
Bool = Annotated[bool, _check(lambda v: isinstance(v, bool), "must be true or false")]
Str = Annotated[str, _check(lambda v: isinstance(v, str), "must be a string")]
Name = Annotated[str, _check(lambda v: isinstance(v, str) and bool(v), "must be a non-empty string")]
StrList = Annotated[list[str], _check(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                                      "must be a list of strings")]
SizeHW = Annotated[str | list, _check(lambda v: isinstance(v, (str, list)), "must be a string HxW or a list [H, W]")]
IndexPairs = Annotated[tuple[tuple[int, int], ...], _check(
    lambda v: isinstance(v, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(i) and i >= 0 for i in p) for p in v),
    "must be a list of [a, b] keypoint index pairs")]
Finite3 = _triple(positive=False)
Positive3 = _triple(positive=True)
Precision = Annotated[str, _check(lambda v: v in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}")]


def where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a path: ("outputs", 0, "channels") -> "outputs[0].channels"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def describe(err: dict[str, Any], sections: tuple[str, ...] = ()) -> str:
    """One pydantic error as "<path> <problem>". Errors under a top-level key in `sections` (a preset stored
    in the manifest) read like the preset's own: "stages (the preset for later stages): quantize.x ..."."""
    loc = tuple(err["loc"])
    if loc and loc[0] in sections:
        return f"{loc[0]} (the preset for later stages): {describe({**err, 'loc': loc[1:]})}"
    path, kind, msg = where(loc), err["type"], err["msg"]
    if kind == "missing":
        return f"{path} {'section ' if len(loc) == 1 else ''}is missing"
    if kind == "extra_forbidden":
        parent = where(loc[:-1])
        return f"unknown key {loc[-1]!r} in {parent!r}" if parent else f"unknown section {loc[-1]!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        what = f"section {path!r}" if len(loc) == 1 else path or "the file"
        return f"{what} must be a mapping, not {type(err['input']).__name__}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg if path and msg.startswith(path) else f"{path} {msg}".strip()
    return f"{path} {msg[0].lower()}{msg[1:]}, not {err['input']!r}"
