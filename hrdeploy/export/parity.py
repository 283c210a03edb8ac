"""Export-time parity: the ONNX on onnxruntime CPU vs the upstream-form eager model, seeded inputs.

Run and judged by hrdeploy.parity's comparator with the fp32 tolerance every stage uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrdeploy.parity.comparator import Comparator, TensorCompare
from hrdeploy.parity.compare import bounds_for
from hrdeploy.parity.loaders import SeededInputs, seeded_batch
from hrdeploy.parity.tolerances import FLOOR_FACTOR, TOLERANCES
from hrdeploy.runtime.base import Runner

FP32 = TOLERANCES["fp32"]


@dataclass(frozen=True)
class ParityCase:
    batch: int
    input_size: tuple[int, int]
    seed: int = 0

    def input(self) -> np.ndarray:
        return seeded_batch(self.batch, self.input_size, self.seed)


def compare(
    reference: Runner,
    candidate: Runner,
    cases: list[ParityCase],
    *,
    heatmap_outputs: tuple[str, ...] = (),
    exact_reference: Runner | None = None,
) -> dict:
    """Both runners on each case's seeded batch (the comparator); one row per (case, output) with tensor (and
    heatmap-peak) metrics, judged with the fp32 tolerance (max rel, cosine). The `exact_reference` (the
    reference model in float64) runs only on a case with a row over max rel, for that row's fp32 floor."""
    loader = SeededInputs([(c.batch, c.input_size, c.seed) for c in cases])
    results = Comparator.run([reference, candidate], loader)
    rows = []
    for row in Comparator.compare(results, TensorCompare(FP32, heatmap_outputs, exact_reference)):
        case = cases[row.pop("iteration")]
        row.pop("failures")
        rows.append({"backend": row.pop("backend"), "batch": case.batch, "input_size": list(case.input_size), **row})
    return {
        "reference": reference.name,
        "tolerance": {**bounds_for(FP32, {"max_rel": 0, "cosine": 0}),
                      **({"floor_factor": FLOOR_FACTOR} if exact_reference is not None else {})},
        "rows": rows,
        "passed": all(r["passed"] for r in rows),
    }


def to_markdown(report: dict, title: str) -> str:
    """A parity report as a Markdown table."""
    tol = report["tolerance"]
    lines = [
        f"# {title}",
        "",
        f"Reference: {report['reference']}. Tolerance (hrdeploy.parity, fp32): max abs error <= {tol['max_rel']:g} "
        f"x max |reference|, cosine >= {tol['min_cosine']}"
        + (f", or max rel <= {tol['floor_factor']:g} x the reference's own fp32 rounding error (its distance "
           "from float64, `fp32 floor`)" if "floor_factor" in tol else "")
        + f". Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        "| backend | batch | input | output | max abs | max rel | p99 abs | cosine "
        "| argmax agree % | max kpt err px | fp32 floor | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        agree = f"{r['argmax_agreement_pct']:.1f}" if "argmax_agreement_pct" in r else "-"
        kerr = f"{r['max_kpt_err_px']:.2f}" if "max_kpt_err_px" in r else "-"
        floor = f"{r['fp32_floor_rel']:.2e}" if "fp32_floor_rel" in r else "-"
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['input_size'][0]}x{r['input_size'][1]} | {r['output']} "
            f"| {r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['p99_abs']:.2e} | {r['cosine']:.7f} | {agree} | {kerr} "
            f"| {floor} | {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"
