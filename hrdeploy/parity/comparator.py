"""The comparator: runners produce outputs, compare functions judge them (as Polygraphy's Comparator.run and
compare_func).

`Comparator.run(runners, loader)` feeds every batch of a loader (hrdeploy.parity.loaders) to every runner
(hrdeploy.runtime.factory) and keeps the outputs; `Comparator.compare(results, compare_func)` applies a compare
function to the reference's outputs and each other runner's, batch by batch. The compare functions:
- `TensorCompare`: tensor statistics of each output (max abs / rel, cosine, ...; heatmap peaks), judged
  with `judge_tensors`, which holds the one fp32-floor re-judge;
- `compare_ap`: a COCO keypoint AP drop and its paired bootstrap interval (hrdeploy.parity.bootstrap);
- keypoint agreement on person crops is `hrdeploy.parity.pose.check_pose` (OKS, PCK, AP with annotations); the
  crops reach the runners by `Comparator.run` too (`CropSet.keypoints`).
Every verdict is `hrdeploy.parity.compare.judge` against a tolerance of hrdeploy.parity.tolerances.TOLERANCES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hrdeploy.parity.bootstrap import Outcomes, paired_interval
from hrdeploy.parity.compare import argmax_agreement, bounds_for, judge, tensor_stats
from hrdeploy.parity.tolerances import Tolerance

Outputs = dict[str, np.ndarray]
CompareFunc = Callable[[Outputs, Outputs, np.ndarray], list[dict[str, Any]]]


@dataclass
class RunResults:
    """The loader's batches and each runner's outputs on them (keyed by runner name, in runner order)."""

    inputs: list[np.ndarray]
    outputs: dict[str, list[Outputs]] = field(default_factory=dict)

    def joined(self, runner: str, count: int | None = None) -> Outputs:
        """A runner's outputs over all batches, concatenated per name and cut to the first `count` items."""
        runs = self.outputs[runner]
        return {name: np.concatenate([o[name] for o in runs])[:count] for name in runs[0]}


class Comparator:
    """Runs runners on a loader's batches, then compares their outputs; it never opens a runner itself."""

    @staticmethod
    def run(runners: Sequence[Any], loader: Iterable[np.ndarray]) -> RunResults:
        """Every runner on every batch; a runner is activated for the run and, unless it was active, closed."""
        results = RunResults([np.asarray(x) for x in loader])
        for runner in runners:
            if runner.name in results.outputs:
                raise ValueError(f"two runners named {runner.name!r}; give each runner of a comparison its own name")
            was_active = getattr(runner, "active", True)
            if hasattr(runner, "activate"):
                runner.activate()
            try:
                results.outputs[runner.name] = [runner.run(x) for x in results.inputs]
            finally:
                if not was_active:
                    runner.close()
        return results

    @staticmethod
    def compare(results: RunResults, compare_func: CompareFunc, reference: str | None = None) -> list[dict[str, Any]]:
        """`compare_func(reference outputs, outputs, input)` of every other runner on every batch: its rows,
        each with the runner's name as "backend" (first key) and the batch's index as "iteration"."""
        names = list(results.outputs)
        ref_name = reference or names[0]
        rows = []
        for name in (n for n in names if n != ref_name):
            for i, x in enumerate(results.inputs):
                for row in compare_func(results.outputs[ref_name][i], results.outputs[name][i], x):
                    rows.append({"backend": name, "iteration": i, **row})
        return rows


def judge_tensors(gated: dict[str, Any], tol: Tolerance, ref: np.ndarray,
                  exact: Callable[[], np.ndarray] | None = None) -> list[str]:
    """`judge(gated, tol)`, and the one fp32-floor re-judge: a row over max_rel whose cosine passes is judged
    again with `fp32_floor_rel` = the reference's own max rel distance from `exact()` (its float64 outputs,
    computed only then), recorded in `gated`."""
    failures = judge(gated, tol)
    if failures and exact is not None and "max_rel" in gated and not judge({"cosine": gated["cosine"]}, tol):
        gated["fp32_floor_rel"] = tensor_stats(exact(), ref)["max_rel"]
        failures = judge(gated, tol)
    return failures


@dataclass
class TensorCompare:
    """Compare function: one row per output with tensor statistics (and heatmap-peak agreement for
    `heatmap_outputs`), judged with `tol`; `exact` (a float64 reference runner) is run on a batch only when
    one of its rows needs the fp32 floor."""

    tol: Tolerance
    heatmap_outputs: tuple[str, ...] = ()
    exact: Any = None

    def __call__(self, ref: Outputs, out: Outputs, x: np.ndarray) -> list[dict[str, Any]]:
        cache: dict[str, Outputs] = {}

        def exact_of(name: str) -> Callable[[], np.ndarray]:
            def get() -> np.ndarray:
                if "out" not in cache:
                    cache["out"] = self.exact.run(x)
                return cache["out"][name]
            return get

        rows = []
        for name in ref:
            row: dict[str, Any] = {"output": name, **tensor_stats(ref[name], out[name])}
            if name in self.heatmap_outputs:
                row.update(argmax_agreement(ref[name], out[name]))
            failures = judge_tensors(row, self.tol, ref[name], exact_of(name) if self.exact is not None else None)
            rows.append({**row, "failures": failures, "passed": not failures})
        return rows


def compare_ap(ref_stats: Mapping[str, Any], stats: Mapping[str, Any], tol: Tolerance, *,
               ref_outcomes: Outcomes | None = None, outcomes: Outcomes | None = None, bootstrap: int = 0,
               seed: int = 0) -> dict[str, Any]:
    """The COCO keypoint AP drop (AP points) against the reference, judged; with `bootstrap` resamples and both
    models' per-person outcomes, its paired 95 % interval too (`interval`; the verdict stays on the point)."""
    gated = {"ap_drop": 100.0 * (ref_stats["AP"] - stats["AP"])}
    failures = judge(gated, tol)
    out: dict[str, Any] = {"gated": gated, "tolerance": bounds_for(tol, gated), "failures": failures,
                           "passed": not failures}
    if bootstrap and ref_outcomes is not None and outcomes is not None:
        out["interval"] = paired_interval(ref_outcomes, outcomes, bootstrap, seed, tol.max_ap_drop)
    return out
