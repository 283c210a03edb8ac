"""Benchmark reports: bench.json (the numbers), bench.md (a table), bench.png (latency vs batch).

The plot draws on a bare matplotlib Figure with the Agg canvas, so it never touches pyplot's global
state or needs a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrdeploy.io import atomic_path, write_json, write_text


def speedups(results: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(label, batch) -> eager p50 / this p50, where an eager result at that batch exists."""
    eager = {r["batch"]: r["p50_ms"] for r in results if r["backend"] == "eager"}
    return {(r["label"], r["batch"]): eager[r["batch"]] / r["p50_ms"] for r in results
            if r["batch"] in eager and r["p50_ms"] > 0}


def to_markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    h, w = report["target"]["input_size"]
    lines = [
        f"# Benchmark: {report['target']['name']}",
        "",
        f"{report['date']} on {m['cpu']} ({m['cores']} cores usable), {m['platform']}; {versions}.",
        f"Input {h}x{w}; {s['warmup']} warm-up + {s['iterations']} timed calls per row; "
        f"threads: {s['threads'] or 'library default'}. Latency is one `run(batch)` call, copies included.",
        "",
        "| target | batch | p50 ms | p90 ms | p99 ms | mean ms | min ms | images/s | ms/image | speed-up vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ups = speedups(report["results"])
    for r in report["results"]:
        up = ups.get((r["label"], r["batch"]))
        lines.append(
            f"| {r['label']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['mean_ms']:.2f} | {r['min_ms']:.2f} | {r['throughput_ips']:.1f} | {r['per_image_ms']:.2f} "
            f"| {'-' if up is None else f'{up:.2f}'} |"
        )
    for sk in report.get("skipped", []):
        lines.append(f"| {sk['backend']} {sk.get('target', '')} | - | skipped: {sk['reason']} | | | | | | | |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Two panels: p50 latency (p90 as the upper bar) and throughput, against batch, one line per target."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_lat, ax_thr = fig.subplots(1, 2)
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    for label in labels:
        rows = sorted((r for r in report["results"] if r["label"] == label), key=lambda r: r["batch"])
        b = [r["batch"] for r in rows]
        p50 = [r["p50_ms"] for r in rows]
        up = [r["p90_ms"] - r["p50_ms"] for r in rows]
        ax_lat.errorbar(b, p50, yerr=[[0] * len(up), up], marker="o", capsize=3, label=label)
        ax_thr.plot(b, [r["throughput_ips"] for r in rows], marker="o", label=label)
    p50s = [r["p50_ms"] for r in report["results"]]
    if p50s and min(p50s) > 0 and max(p50s) / min(p50s) > 20:
        ax_lat.set_yscale("log")  # backends an order of magnitude apart stay readable side by side
    ax_lat.set(xlabel="batch", ylabel="latency per call, ms (p50, bar to p90)", title="latency")
    ax_thr.set(xlabel="batch", ylabel="images / s", title="throughput")
    for ax in (ax_lat, ax_thr):
        ax.grid(True, alpha=0.3)
        batches = sorted({r["batch"] for r in report["results"]})
        if batches:
            ax.set_xticks(batches)
        ax.legend(fontsize=8)
    h, w = report["target"]["input_size"]
    fig.suptitle(f"{report['target']['name']} {h}x{w} - {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_reports(report: dict[str, Any], json_path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Write `json_path` and, beside it, the .md table and the .png plot (same stem)."""
    json_path = Path(json_path)
    md_path, png_path = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    write_json(json_path, report)
    write_text(md_path, to_markdown(report))
    plot(report, png_path)
    return json_path, md_path, png_path
