"""`hrdeploy doctor MODEL.onnx|DIR`: TensorRT-compatibility lint, no GPU needed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import click

SHOW_NODES = 4


@click.command("doctor")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--trt", "trt_gen", type=click.Choice(["10", "11"]),
              help="TensorRT generation to check against [default: the installed one, else 10].")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too, not only on blockers.")
@click.option("-v", "--verbose", is_flag=True, help="List every node of repeated findings.")
def doctor_cmd(path: Path, trt_gen: str | None, as_json: bool, strict: bool, verbose: bool) -> None:
    """Lint an ONNX model (or every ONNX of bundle PATH) for the TensorRT ONNX parser.

    Checks each node's op and attributes against the parser's operator support for the chosen TensorRT
    generation, and graph traps (run-time conv weights, batch-dependent group, INT64, Resize modes, dynamic
    dims without a profile, opset range, Q/DQ zero-points). Exit 1 when a blocker is found.
    """
    from hrdeploy.engine.compat import lint_file
    from hrdeploy.engine.version import generation_of, installed_tensorrt_version
    from hrdeploy.errors import UserError

    if trt_gen:
        generation = int(trt_gen)
    else:
        installed = installed_tensorrt_version()
        generation = generation_of(installed) if installed else 10
    targets: list[tuple[Path, dict | None]] = []
    passes_line = None
    if path.is_dir():
        from hrdeploy.bundle import Bundle

        bundle = Bundle.open(path)
        hint = {bundle.input.name: [None, 3, bundle.input.height, bundle.input.width]}
        passes_line = _graph_passes_line(bundle.section("export", {}).get("graph_passes"))
        for key, art in bundle.onnx_artifacts().items():
            if art.exists:
                targets.append((bundle.artifact(key).path, hint))
        if not targets:
            raise UserError(f"bundle {path} has no ONNX artifact; create it with `hrdeploy export MODEL -o {path}`")
    else:
        targets.append((path, None))
    reports = [lint_file(p, generation, profile_shapes=hint) for p, hint in targets]
    if as_json:
        click.echo(json.dumps({"tensorrt": f"{generation}.x", "reports": [r.to_dict() for r in reports]}, indent=2))
    else:
        for report in reports:
            _print_report(report, verbose)
        if passes_line:
            click.echo(passes_line)
    failed = any(not r.ok for r in reports) or (strict and any(r.warnings for r in reports))
    if failed:
        click.get_current_context().exit(1)


def _print_report(report, verbose: bool) -> None:  # noqa: ANN001 - LintReport
    click.echo(report.summary())
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for f in report.findings:
        grouped[(f.severity, f.code)].append(f)
    order = {"error": 0, "warning": 1, "info": 2}
    for (severity, code), items in sorted(grouped.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        if len(items) == 1 or verbose:
            for f in items:
                click.echo("  " + f.line())
            continue
        nodes = [f"{f.node} ({f.op})" for f in items if f.node]
        more = f", ... (+{len(nodes) - SHOW_NODES})" if len(nodes) > SHOW_NODES else ""
        shown = ", ".join(nodes[:SHOW_NODES]) + more
        click.echo(f"  {severity.upper():7s} {code} x{len(items)}: {shown}")
        click.echo(f"          {items[0].message}")


def _graph_passes_line(records: list[dict] | None) -> str | None:
    """'graph passes: 1076 -> 978 nodes (shuffle_to_gather x49, ...)' from the manifest's export record."""
    if not records:
        return None
    fired = [f"{r['pass']} x{r['sites']}" for r in records if r["sites"]]
    return (f"graph passes: {records[0]['nodes_before']} -> {records[-1]['nodes_after']} nodes "
            f"({', '.join(fired) or 'no pattern found'})")
