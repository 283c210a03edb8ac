"""The one tolerance table: what each precision must keep against the eager fp32 model, in every stage.

Export, quantize, validate and eval judge an artifact with `hrdeploy.parity.compare.judge` against
`TOLERANCES[precision]`, so an artifact gets the same verdict wherever it is checked. Bounds:

- `max_rel`, `min_cosine`: tensor statistics of raw outputs: of fp32 artifacts (a converted graph must compute
  the same function; a row over `max_rel` still passes within FLOOR_FACTOR x the reference's own fp32 rounding
  error, `fp32_floor_rel`), of fp16/int8 heatmaps on person crops (beside keypoint agreement), and of the
  outputs of models without keypoints.
- `max_ap_drop`: COCO keypoint AP points (0-100) below eager fp32 on annotated people (pycocotools).
- `min_oks`, `min_pck`: keypoint agreement with eager fp32 on person crops when there are no annotations: the
  mean OKS of the artifact's decoded keypoints taking eager's as ground truth (eager-confident joints of
  people only), and the % of those joints within 0.05 x the person box's longer side.

Syntax of overrides (`--tolerance`, repeatable, comma separated): `min_oks=0.97` (every precision) or
`int8.max_ap_drop=3`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

from hrdeploy.bundle import PRECISIONS
from hrdeploy.errors import UserError

# Two fp32 implementations cannot agree closer than their own rounding errors allow: when a network amplifies
# fp32 rounding (Lite-HRNet-30's branch-0 stream doubles in every module, upstream's fuse quirk, so it is
# ~2^14 times its input by the last stage), the eager model itself is ~1e-4 away from its float64 result.
# A row over max_rel then still passes if it is within FLOOR_FACTOR x that distance (each side may be up to
# one floor away from the exact result, in opposite directions, plus a margin); the row records both.
FLOOR_FACTOR = 4.0
# Eager keypoints below this heatmap score are not judged (the model itself does not know where they are).
CONFIDENT_SCORE = 0.3
# A crop counts as a person (is judged) when the reference is confident about at least this many joints.
PERSON_MIN_JOINTS = 4
PCK_ALPHA = 0.05


@dataclass(frozen=True)
class Tolerance:
    """Bounds for one precision; None = not checked."""

    max_rel: float | None = None
    min_cosine: float | None = None
    max_ap_drop: float | None = None
    min_oks: float | None = None
    min_pck: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# Crop-agreement bounds are set on the trained PP-TinyPose network (wider_naive_lite_hrnet_18) at both input
# sizes by `python benchmarks/bench_accuracy.py` (benchmarks/RESULTS.md, "The crop gate, derived from these
# pairs"): INT8 variants' crop agreement (on the tuning people of coco-train, the crops the search's INT8 is
# gated on) against their COCO AP drop on coco-val. No crop metric separates the variants that lose more than
# 2 AP from the rest (an AP drop on 149 people is itself uncertain by about a point), so the int8 heatmap-cosine
# bar is the one that rejects every variant losing more than 2 AP while passing the searched INT8 at both sizes,
# at the cost of rejecting some plain INT8 builds that lose less; the OKS and PCK bars sit below every good
# variant and catch broken builds. With annotated people the AP gate is the reliable one. For models without
# keypoints min_cosine is the only bound (not set on a trained network).
# AP bars: fp16 0.5 and int8 2 AP points (MMDeploy's regression gate is +-2 AP for int8).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4, min_cosine=0.99999, max_ap_drop=0.1, min_oks=0.999, min_pck=99.0),
    "fp16": Tolerance(min_cosine=0.999, max_ap_drop=0.5, min_oks=0.99, min_pck=98.0),
    "int8": Tolerance(min_cosine=0.9882, max_ap_drop=2.0, min_oks=0.94, min_pck=92.0),
}


# Paired bootstrap of AP drops (hrdeploy.parity.bootstrap): resamples of the people and the seed.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

# Not a verdict: the per-tensor bounds (max rel, cosine) at which divergence localisation calls an
# intermediate of a failing artifact "diverged" (hrdeploy.validate.localize), per precision.
LOCALIZE: dict[str, tuple[float, float]] = {"fp32": (1e-3, 0.99999), "fp16": (3e-2, 0.999), "int8": (0.35, 0.98)}


def parse_tolerances(specs: Iterable[str] | None) -> dict[str, Tolerance]:
    """TOLERANCES with `specs` (e.g. ["min_oks=0.97", "int8.max_ap_drop=3"]) applied."""
    names = [f.name for f in fields(Tolerance)]
    tol = dict(TOLERANCES)
    for spec in specs or ():
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            precision, dot, metric = key.strip().rpartition(".")
            if not sep or (dot and precision not in PRECISIONS) or metric not in names:
                raise UserError(
                    f"bad --tolerance {item!r}; use METRIC=VALUE or PRECISION.METRIC=VALUE with "
                    f"PRECISION in {'|'.join(PRECISIONS)} and METRIC in {'|'.join(names)}"
                )
            try:
                bound = float(value)
            except ValueError:
                raise UserError(f"bad --tolerance {item!r}: {value!r} is not a number") from None
            if not math.isfinite(bound):
                raise UserError(f"bad --tolerance {item!r}: the bound must be a finite number")
            for p in [precision] if dot else PRECISIONS:
                tol[p] = replace(tol[p], **{metric: bound})
    return tol
