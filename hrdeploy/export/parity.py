"""Export-time parity: the ONNX on onnxruntime CPU vs the upstream-form eager model, seeded inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrdeploy.runtime.base import Runner
from hrdeploy.validate.metrics import keypoint_metrics, tensor_metrics

FP32_REL_TOL = 1e-4  # max abs error <= 1e-4 x max |reference output|
FP32_MIN_COSINE = 0.99999


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
) -> dict:
    """Run both runners on each case; one row per (case, output) with tensor (and keypoint) metrics."""
    rows = []
    for case in cases:
        x = case.input()
        ref, out = reference.run(x), candidate.run(x)
        for name in reference.output_names:
            row = {"backend": candidate.name, "batch": case.batch, "input_size": list(case.input_size), "output": name}
            row.update(tensor_metrics(ref[name], out[name]))
            if name in heatmap_outputs:
                row.update(keypoint_metrics(ref[name], out[name]))
            row["passed"] = row["max_rel"] <= rel_tol and row["cosine"] >= min_cosine
            rows.append(row)
    return {
        "reference": reference.name,
        "tolerance": {"max_rel": rel_tol, "min_cosine": min_cosine},
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
        f"cosine >= {tol['min_cosine']}. Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        "| backend | batch | input | output | max abs | max rel | p99 abs | cosine "
        "| argmax agree % | max kpt err px | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        agree = f"{r['argmax_agreement_pct']:.1f}" if "argmax_agreement_pct" in r else "-"
        kerr = f"{r['max_kpt_err_px']:.2f}" if "max_kpt_err_px" in r else "-"
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['input_size'][0]}x{r['input_size'][1]} | {r['output']} "
            f"| {r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['p99_abs']:.2e} | {r['cosine']:.7f} | {agree} | {kerr} "
            f"| {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"
