"""Export-time parity: the ONNX on onnxruntime CPU vs the upstream-form eager model, seeded inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrdeploy.runtime.base import Runner
from hrdeploy.validate.metrics import keypoint_metrics, tensor_metrics

FP32_REL_TOL = 1e-4  # max abs error <= 1e-4 x max |reference output|
FP32_MIN_COSINE = 0.99999
# Two fp32 implementations cannot agree closer than their own rounding errors allow: when a network amplifies
# fp32 rounding (Lite-HRNet-30's branch-0 stream doubles in every module, upstream's fuse quirk, so it is
# ~2^14 times its input by the last stage), the eager model itself is ~1e-4 away from its float64 result.
# A row over FP32_REL_TOL then still passes if it is within FLOOR_FACTOR x that distance (each side may be
# up to one floor away from the exact result, in opposite directions, plus a margin); the row records both.
FLOOR_FACTOR = 4.0


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
    rel_tol: float = FP32_REL_TOL,
    min_cosine: float = FP32_MIN_COSINE,
    exact_reference: Runner | None = None,
) -> dict:
    """Run both runners on each case; one row per (case, output) with tensor (and keypoint) metrics.

    `exact_reference` (the reference model in float64) is run only for a case with a row over `rel_tol`:
    that row's `fp32_floor_rel` is the reference's own distance from it, and the row passes if its error
    is within FLOOR_FACTOR x that floor (see FLOOR_FACTOR).
    """
    rows = []
    for case in cases:
        x = case.input()
        ref, out = reference.run(x), candidate.run(x)
        exact = None
        for name in reference.output_names:
            row = {"backend": candidate.name, "batch": case.batch, "input_size": list(case.input_size), "output": name}
            row.update(tensor_metrics(ref[name], out[name]))
            if name in heatmap_outputs:
                row.update(keypoint_metrics(ref[name], out[name]))
            row["passed"] = row["max_rel"] <= rel_tol and row["cosine"] >= min_cosine
            if not row["passed"] and exact_reference is not None and row["cosine"] >= min_cosine:
                exact = exact if exact is not None else exact_reference.run(x)
                row["fp32_floor_rel"] = tensor_metrics(exact[name], ref[name])["max_rel"]
                row["passed"] = row["max_rel"] <= FLOOR_FACTOR * row["fp32_floor_rel"]
            rows.append(row)
    return {
        "reference": reference.name,
        "tolerance": {"max_rel": rel_tol, "min_cosine": min_cosine,
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
        f"Reference: {report['reference']}. Tolerance: max abs error <= {tol['max_rel']:g} x max |reference|, "
        f"cosine >= {tol['min_cosine']}"
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
