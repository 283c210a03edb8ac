"""Export-time parity: the ONNX on onnxruntime CPU vs the upstream-form eager model, seeded inputs.

Judged by hrdeploy.parity (the comparator and fp32 tolerances every stage uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrdeploy.parity.compare import argmax_agreement, bounds_for, judge, tensor_stats
from hrdeploy.parity.tolerances import FLOOR_FACTOR, TOLERANCES
from hrdeploy.runtime.base import Runner

FP32 = TOLERANCES["fp32"]


@dataclass(frozen=True)
class ParityCase:
    batch: int
    input_size: tuple[int, int]
    seed: int = 0

    def input(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((self.batch, 3, *self.input_size), dtype=np.float32)


def compare(
    reference: Runner,
    candidate: Runner,
    cases: list[ParityCase],
    *,
    heatmap_outputs: tuple[str, ...] = (),
    exact_reference: Runner | None = None,
) -> dict:
    """Run both runners on each case; one row per (case, output) with tensor (and heatmap-peak) metrics.

    Rows are judged by hrdeploy.parity.compare.judge with the fp32 tolerance (max rel, cosine). The
    `exact_reference` (the reference model in float64) is run only for a case with a row over max rel: that
    row's `fp32_floor_rel` is the reference's own distance from it, and judge lets the row pass within
    FLOOR_FACTOR x that floor.
    """
    rows = []
    for case in cases:
        x = case.input()
        ref, out = reference.run(x), candidate.run(x)
        exact = None
        for name in reference.output_names:
            row = {"backend": candidate.name, "batch": case.batch, "input_size": list(case.input_size), "output": name}
            row.update(tensor_stats(ref[name], out[name]))
            if name in heatmap_outputs:
                row.update(argmax_agreement(ref[name], out[name]))
            failures = judge(row, FP32)
            if failures and exact_reference is not None and not judge({"cosine": row["cosine"]}, FP32):
                exact = exact if exact is not None else exact_reference.run(x)
                row["fp32_floor_rel"] = tensor_stats(exact[name], ref[name])["max_rel"]
                failures = judge(row, FP32)
            row["passed"] = not failures
            rows.append(row)
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
