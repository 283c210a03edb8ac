"""The eval report: `eval.json`, `eval.md`, one COCO results file per model, and the manifest's `eval` section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrdeploy.bundle import Bundle
from hrdeploy.io import write_json

COLUMNS = ("artifact", "precision", "backend", "batch", "AP", "AP50", "AP75", "AR", "mean OKS", "dAP",
           "dAP 95% CI", "crops/s", "gate")


UNITS = {"person": "people", "image": "images"}  # what a paired bootstrap resamples, in the plural


def predictions_file(key: str) -> str:
    return f"eval.{key}.results.json"


def cells(row: dict[str, Any]) -> list[str]:
    """One table row as text, in COLUMNS order."""
    def num(k: str, spec: str = ".4f") -> str:
        return "-" if row.get(k) is None else format(row[k], spec)

    gate = "reference" if row["artifact"] == "eager" else ("PASS" if row.get("passed") else "FAIL")
    dap = "-" if row["artifact"] == "eager" else f"{row['dAP']:+.2f}"
    ci = row.get("interval")
    interval = "-" if ci is None else f"[{ci['low']:+.2f}, {ci['high']:+.2f}]"
    if ci is not None and ci.get("call") == "inconclusive":
        gate += " (inconclusive)"
    return [row["artifact"], row["precision"], row["backend"], str(row["batch"]), num("AP"), num("AP50"), num("AP75"),
            num("AR"), num("mean_oks"), dap, interval, num("crops_per_s", ".1f"), gate]


def to_markdown(report: dict[str, Any]) -> str:
    h, w = report["input_size"]
    lines = [
        f"# COCO keypoint AP: {report['model']} {h}x{w}",
        "",
        f"{report['people']} annotated people of `{Path(report['annotations']).name}`, boxes: {report['boxes']}, "
        f"flip test {'on' if report['flip_test'] else 'off'}, decoding {report['post_process']}; scored by "
        f"{report['scorer']}. dAP is AP points against eager fp32; crops/s is each runner's throughput (eager "
        "PyTorch, onnxruntime CPU or TensorRT) at the batch shown. "
        + _interval_note(report.get("bootstrap", {}), report["rows"])
        + "Result: "
        + ("**PASS**" if report["passed"] else "**FAIL**") + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in report["rows"]]
    for r in report["rows"]:
        for f in r.get("failures", []):
            lines.append(f"\n- FAIL {r['artifact']}: {f}")
    for s in report["skipped"]:
        lines.append(f"\n- skipped {s['artifact']} ({s['file']}): {s['reason']}")
    return "\n".join(lines) + "\n"


def _interval_note(bootstrap: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ci = next((r["interval"] for r in rows if "interval" in r), None)
    if ci is None:
        return ""
    return (f"dAP 95% CI: paired bootstrap over {ci['units']} {UNITS[ci['unit']]} ({bootstrap.get('resamples')} "
            f"resamples, seed {bootstrap.get('seed')}); a gate is inconclusive when the interval straddles its bar. ")


def write_reports(report: dict[str, Any], extra_json: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write eval.json / eval.md / eval.<key>.results.json into the bundle and record the summary."""
    b = Bundle.open(report["bundle"])
    predictions = report.pop("predictions", {})
    report["predictions"] = {k: predictions_file(k) for k in predictions}
    b.write_reports({**{predictions_file(k): results for k, results in predictions.items()},
                     "eval.json": report, "eval.md": to_markdown(report)})
    json_path, md_path = b.root / "eval.json", b.root / "eval.md"
    if extra_json is not None:
        write_json(extra_json, report)
    b.record_section("eval", {
        "passed": report["passed"], "file": "eval.json", "annotations": report["annotations"],
        "images": report["images"],
        "people": report["people"], "boxes": report["boxes"],
        "rows": {r["artifact"]: {k: r.get(k) for k in ("AP", "dAP", "mean_oks", "passed")} for r in report["rows"]},
    })
    return json_path, md_path
