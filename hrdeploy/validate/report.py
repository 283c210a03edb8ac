"""Validation reports: parity.json / parity.md in the bundle, and the console table.

`hrdeploy export` writes parity.json as {"export": <export-time check>} and its own parity.md; validate
adds {"validate": <this report>} next to it, so neither stage clobbers the other's meaning, and
parity.md holds the validate section followed by the export section re-rendered from parity.json.
Other stages' sections (quantize adds "fp16" / "int8") are kept the same way.
The manifest's "parity" entry gets a "validate" summary beside export's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrdeploy.bundle import Bundle

PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"

COLUMNS = ("target", "backend", "precision", "batch", "output", "max abs", "max rel", "p99 abs", "cosine",
           "argmax %", "crops: OKS / PCK % / dAP", "status")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def crop_cell(pose: dict[str, Any] | None) -> str:
    """A target's verdict on person crops: OKS / PCK against eager, and the AP drop when annotated."""
    if not pose:
        return "-"
    a = pose["agreement"]
    text = f"{a['oks']:.4f} / {a['pck@0.05']:.1f}"
    if "ap_drop" in pose["gated"]:
        text += f" / {-pose['gated']['ap_drop']:+.2f}"
    return text


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per (target, output), then one per skipped backend: the cells of COLUMNS."""
    rows = []
    for r in report["rows"]:
        status = "pass" if r["passed"] else "FAIL"
        for name, m in r["outputs"].items():
            if "shape_mismatch" in m:
                rows.append((r["target"], r["backend"], r["precision"], str(r["batch"]), name,
                             "shape mismatch", "-", "-", "-", "-", "-", status))
                continue
            agree = m.get("argmax_agreement_pct", m.get("label_agreement_pct"))
            rows.append((
                r["target"], r["backend"], r["precision"], str(r["batch"]), name,
                _fmt(m["max_abs"], ".2e"), _fmt(m["max_rel"], ".2e"), _fmt(m["p99_abs"], ".2e"),
                _fmt(m["cosine"], ".6f"), _fmt(agree, ".1f"), crop_cell(r.get("pose")), status,
            ))
    for s in report["skipped"]:
        rows.append((s.get("target", "-"), s["backend"], "-", "-", "-", "-", "-", "-", "-", "-", "-",
                     f"skipped: {s['reason']}"))
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    tol = "; ".join(f"{p}: " + ", ".join(f"{k} {v:g}" for k, v in t.items()) for p, t in report["tolerances"].items())
    kinds = {}
    for i in report["inputs"]:
        kinds.setdefault(f"{i['kind']} {i['size'][0]}x{i['size'][1]}", []).append(i["name"])
    inputs = "; ".join(f"{len(v)} {k}" for k, v in kinds.items())
    lines = [
        f"# Validation: {report['model']}",
        "",
        f"{report['date']}. Reference: {report['reference']}. Inputs: {inputs}. "
        f"Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        f"Tolerances (hrdeploy.parity; tensor bounds on each whole output, fp32 targets and non-pose models): "
        f"{tol}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    crops = report.get("crops")
    if crops:
        lines[4:4] = [f"fp16/int8 targets are judged on {crops['people']} person crops ({crops['source']}) by "
                      + ("COCO AP drop against eager fp32" + (f" (eager AP {crops['eager_ap']:.4f})"
                                                             if "eager_ap" in crops else "")
                         if crops["mode"] == "coco-ap" else "keypoint agreement with eager (OKS, PCK@0.05)") + ".", ""]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    failing = [r for r in report["rows"] if not r["passed"]]
    if failing:
        lines += ["", "## Failures", ""]
        for r in failing:
            lines.append(f"- **{r['target']}** ({r['backend']}, {r['precision']}): {'; '.join(r['failures'])}")
            if "divergence" in r:
                lines.append(f"  - {r['divergence']['summary']} (input {r['divergence'].get('input')}; "
                             f"{r['divergence'].get('method', '')})")
    return "\n".join(lines) + "\n"


def _section_markdown(key: str, section: dict[str, Any], model: str) -> str:
    """Another stage's section of parity.json (export's, quantize's) as Markdown, so parity.md keeps it."""
    if key == "export":
        try:
            from hrdeploy.export.parity import to_markdown as export_markdown

            return export_markdown(section, f"Export parity: {model} (fp32 ONNX vs eager)")
        except (KeyError, TypeError, ValueError):
            pass
    verdict = "PASS" if section.get("passed") else "FAIL"
    if "gated" in section:  # quantize's verdict (hrdeploy.parity)
        measured = ", ".join(f"{k} {v:.4g}" for k, v in section["gated"].items())
        bounds = ", ".join(f"{k} {v:g}" for k, v in section.get("tolerance", {}).items())
        return f"# {key} parity ({section.get('stage', key)}, {section.get('mode')}): {verdict}\n\n{measured} " \
               f"(bounds: {bounds})\n"
    lines = [f"# {key} parity ({section.get('stage', key)}): {verdict}", "",
             "| backend | output | max abs | max rel | cosine | passed |", "|---|---|---|---|---|---|"]
    for r in section["rows"]:
        lines.append(f"| {r.get('backend', '-')} | {r.get('output', '-')} | {_fmt(r.get('max_abs'), '.2e')} "
                     f"| {_fmt(r.get('max_rel'), '.2e')} | {_fmt(r.get('cosine'), '.6f')} | {r.get('passed')} |")
    return "\n".join(lines) + "\n"


def write_reports(b: Bundle, report: dict[str, Any]) -> tuple[Path, Path]:
    """Merge `report` into the bundle's parity.json, render parity.md from the merged report (both under the
    bundle's lock), and record it in the manifest."""

    def render(merged: dict[str, Any]) -> str:
        md = to_markdown(report)
        for key, section in merged.items():
            if key != "validate" and isinstance(section, dict) and (isinstance(section.get("rows"), list)
                                                                    or "gated" in section):
                md += "\n" + _section_markdown(key, section, report["model"])
        return md

    b.update_report(PARITY_JSON, "validate", report, render)
    b.record_section("parity", {"passed": report["passed"], "file": PARITY_JSON, "date": report["date"]},
                     key="validate")
    return b.root / PARITY_JSON, b.root / PARITY_MD
