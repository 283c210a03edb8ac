"""`hrdeploy export NAME -o DIR`: ONNX bundle with manifest and parity report."""

from __future__ import annotations

import click
from click.core import ParameterSource

# CLI parameter -> ExportOptions field, for the options a --config preset may also set.
_OPTION_FIELDS = {
    "dataset": "dataset", "input_size": "input_size", "checkpoint": "checkpoint", "batch": "batch",
    "dynamic_batch": "dynamic_batch", "dynamic_shape": "dynamic_shape", "opset": "opset", "exporter": "exporter",
    "simplify": "simplify", "rewrite": "rewrite", "graph_passes": "graph_passes",
}


@click.command("export")
@click.argument("name")
@click.option("-o", "--output", "out_dir", type=click.Path(), help="Bundle directory [default: out/NAME].")
@click.option("--dataset", type=click.Choice(["coco", "mpii", "cityscapes"]), help="Keypoint set / classes.")
@click.option("--input-size", metavar="HxW", help="Input height x width [default: the model's].")
@click.option("--checkpoint", type=click.Path(), help="Upstream / mmpose .pth or .safetensors (strict load).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Static batch size (<= 1024).")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension.")
@click.option("--dynamic-shape", is_flag=True, help="Dynamic batch, height and width (multiples of the stride).")
@click.option("--opset", type=int, default=19, show_default=True, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]),
              help="torch.onnx exporter [default: torchscript; dynamo with --dynamic-shape or for a model "
                   "TorchScript cannot export].")
@click.option("--simplify/--no-simplify", default=True, help="Simplify with onnxsim [default: on].")
@click.option("--rewrite/--no-rewrite", default=True, help="Apply the export-friendly rewrites [default: on].")
@click.option("--graph-passes/--no-graph-passes", default=True,
              help="Exact ONNX graph passes after the rewrites (hrdeploy.optimize) [default: on].")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), help="YAML preset (export_configs/).")
@click.option("--force", is_flag=True, help="Replace an existing bundle (never a folder that is not one).")
@click.pass_context
def export_cmd(ctx: click.Context, name: str, out_dir: str | None, config: str | None, force: bool, **flags) -> None:
    """Export model NAME to an ONNX bundle and check it against the eager model.

    Exit status 0 when parity passes, 1 when the ONNX drifts beyond tolerance, 2 on bad input.
    """
    from dataclasses import replace

    from hrdeploy.export import ExportOptions, export_bundle, load_preset, parse_size
    from hrdeploy.io import console as make_console
    from hrdeploy.progress import steps

    opts = load_preset(config) if config else ExportOptions()
    overrides = {}
    for param, field in _OPTION_FIELDS.items():
        # Without a preset every option applies; with one, only flags given on the command line override it.
        if config is None or ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            value = flags[param]
            overrides[field] = parse_size(value) if param == "input_size" and value is not None else value
    opts = replace(opts, **overrides)
    console = make_console()
    target = out_dir or f"out/{name}"
    with steps(console, f"export {name}") as step:
        result = export_bundle(name, target, opts, force=force, step=step)
    _print_summary(console, result)
    if not result.passed:
        ctx.exit(1)


def _print_summary(console, result) -> None:  # noqa: ANN001 - rich Console / ExportResult
    from rich.table import Table

    m, parity = result.manifest, result.parity
    onnx = m.artifacts["onnx"]
    console.print(
        f"[bold]{m.model.name}[/] -> {result.bundle / onnx.file} "
        f"({onnx.size_bytes / 1e6:.1f} MB, {m.export['exporter']} opset {m.export['opset']}, "
        f"input {list(m.input.shape)}, {result.seconds:.1f} s)"
    )
    console.print(f"rewrites applied: {', '.join(m.rewrites) or 'none'}")
    if result.simplify_error:
        console.print(f"[yellow]warning:[/] onnxsim failed ({result.simplify_error}); kept the unsimplified model")
    table = Table(title=f"parity: onnxruntime CPU vs eager (max rel <= {parity['tolerance']['max_rel']:g})")
    floors = any("fp32_floor_rel" in r for r in parity["rows"])
    columns = ["batch", "input", "output", "max abs", "max rel", "p99 abs", "cosine", "argmax %", "max kpt px"]
    for col in columns + (["fp32 floor"] if floors else []) + ["ok"]:
        table.add_column(col, justify="right")
    for r in parity["rows"]:
        table.add_row(
            str(r["batch"]), "x".join(map(str, r["input_size"])), r["output"], f"{r['max_abs']:.2e}",
            f"{r['max_rel']:.2e}", f"{r['p99_abs']:.2e}", f"{r['cosine']:.7f}",
            f"{r['argmax_agreement_pct']:.1f}" if "argmax_agreement_pct" in r else "-",
            f"{r['max_kpt_err_px']:.2f}" if "max_kpt_err_px" in r else "-",
            *([f"{r['fp32_floor_rel']:.2e}" if "fp32_floor_rel" in r else "-"] if floors else []),
            "[green]yes[/]" if r["passed"] else "[red]NO[/]",
        )
    console.print(table)
    if floors:
        tol = parity["tolerance"]
        console.print(
            f"rows over {tol['max_rel']:g} are judged against the eager model's own fp32 rounding error "
            f"(its distance from float64, `fp32 floor`): they pass within {tol['floor_factor']:g}x"
        )
    verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    console.print(f"parity {verdict}; report: {result.bundle / 'parity.md'}")
