"""Per-precision parity tolerances and the `--tolerance` option's syntax.

A tolerance is a bound on one metric of hrdeploy.validate.metrics: upper bounds on errors
(`max_rel`, `p99_rel`, `mean_kpt_err_px`), lower bounds on agreement (`cosine`, `pck`). The defaults
follow what each precision can honestly promise on a network with unit-variance activations:
fp32 differs from eager only by summation order, fp16 by ~1e-3 relative per layer, int8 Q/DQ by
a few percent (as Polygraphy's comparator and MMDeploy's +-0.02 AP regression gate do, the bound
is on the output, not per element).

Syntax (repeatable, comma separated): `max_rel=1e-4` (every precision) or `fp16.cosine=0.995`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from hrdeploy.errors import UserError

# metric name in the tolerance -> (metric key in the metrics dict, "max" = upper bound | "min" = lower bound)
BOUNDS: dict[str, tuple[str, str]] = {
    "max_rel": ("max_rel", "max"),
    "p99_rel": ("p99_rel", "max"),
    "cosine": ("cosine", "min"),
    "pck": ("pck@0.05", "min"),
    "mean_kpt_err_px": ("mean_kpt_err_px", "max"),
    "label_agreement": ("label_agreement_pct", "min"),
}

PRECISIONS = ("fp32", "fp16", "int8")

DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel": 1e-3, "p99_rel": 1e-4, "cosine": 0.99999, "pck": 99.0, "label_agreement": 99.0},
    "fp16": {"max_rel": 3e-2, "p99_rel": 5e-3, "cosine": 0.999, "pck": 95.0, "label_agreement": 97.0},
    "int8": {"max_rel": 0.35, "p99_rel": 0.1, "cosine": 0.98, "pck": 80.0, "label_agreement": 85.0},
}


def parse_tolerances(specs: Iterable[str] | None) -> dict[str, dict[str, float]]:
    """The default tolerances with `specs` (e.g. ["max_rel=1e-4", "fp16.cosine=0.995"]) applied."""
    tol = {p: dict(v) for p, v in DEFAULT_TOLERANCES.items()}
    for spec in specs or ():
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            precision, dot, metric = key.strip().rpartition(".")
            if not sep or (dot and precision not in PRECISIONS) or metric not in BOUNDS:
                raise UserError(
                    f"bad --tolerance {item!r}; use METRIC=VALUE or PRECISION.METRIC=VALUE with "
                    f"PRECISION in {'|'.join(PRECISIONS)} and METRIC in {'|'.join(BOUNDS)}"
                )
            try:
                bound = float(value)
            except ValueError:
                raise UserError(f"bad --tolerance {item!r}: {value!r} is not a number") from None
            if not math.isfinite(bound):
                raise UserError(f"bad --tolerance {item!r}: the bound must be a finite number")
            for p in [precision] if dot else PRECISIONS:
                tol[p][metric] = bound
    return tol


def check(metrics: Mapping[str, float], tolerance: Mapping[str, float]) -> list[str]:
    """Violations of `tolerance` by `metrics`, as readable strings (empty: within tolerance).

    A metric that is absent (e.g. keypoint metrics of a non-pose output) is not checked; a NaN is a
    violation.
    """
    failures = []
    for name, bound in tolerance.items():
        key, kind = BOUNDS[name]
        if key not in metrics:
            continue
        value = metrics[key]
        bad = math.isnan(value) or (value > bound if kind == "max" else value < bound)
        if bad:
            op = "<=" if kind == "max" else ">="
            failures.append(f"{key} {value:.4g} (needs {op} {bound:g})")
    return failures
