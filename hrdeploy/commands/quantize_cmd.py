"""`hrdeploy quantize DIR --precision fp16|int8`: add a precision variant of the bundle's ONNX."""

from __future__ import annotations

import click


@click.command("quantize")
@click.argument("bundle", type=click.Path())
@click.option("--precision", help="fp16 (mixed precision, fp32 I/O) or int8 (Q/DQ) [default: the bundle's preset].")
@click.option("--calib-dir", type=click.Path(), help="Folder of calibration images (needed for int8).")
@click.option("--calib-samples", type=int, default=32, show_default=True, help="Use the first N images by name.")
@click.option("--method", help="INT8 calibration: entropy|max|percentile "
                               "[default: percentile (ort), entropy (modelopt)].")
@click.option("--backend", default="auto", show_default=True,
              help="modelopt (NVIDIA ModelOpt) | ort (onnxruntime / onnxconverter-common) | "
                   "auto (modelopt if installed).")
@click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
              help="Keep matching nodes in fp32: glob over node names, op types or module paths "
                   "(e.g. '*spatial_weighting*'). Repeatable.")
@click.option("--auto-exclude/--no-auto-exclude", default=True,
              help="INT8: keep depthwise convs with wide-range inputs in fp32 [default: on].")
@click.option("--val-dir", type=click.Path(), help="Validation images [default: the calibration images, else "
                                                  "scikit-image's sample photos].")
@click.option("--val-samples", type=int, default=16, show_default=True, help="Validate on the first N images.")
@click.option("--min-cosine", type=float, help="Pass threshold vs eager fp32 [default: 0.999 fp16, 0.98 int8].")
@click.option("--min-agreement", type=float, help="Keypoint argmax agreement % threshold [default: 90 fp16, 50 int8].")
@click.option("--sensitivity/--no-sensitivity", default=True, help="INT8: rank blocks by the error they add.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@click.pass_context
def quantize_cmd(
    ctx: click.Context, bundle: str, precision: str | None, calib_dir: str | None, calib_samples: int,
    method: str | None, backend: str, exclude: tuple[str, ...], auto_exclude: bool, val_dir: str | None,
    val_samples: int, min_cosine: float | None, min_agreement: float | None, sensitivity: bool, threads: int | None,
) -> None:
    """Write model.fp16.onnx or model.int8.onnx into BUNDLE and check it against the eager fp32 model.

    Options not given on the command line come from the `quantize` section of the preset the bundle was
    exported with (`hrdeploy export --config`), when it has one.

    Exit status 0 when the variant is within tolerance, 1 when it drifts beyond it (the file is kept and
    recorded as failed), 2 on bad input (the bundle is left unchanged).
    """
    from dataclasses import replace

    from click.core import ParameterSource

    from hrdeploy.errors import UserError
    from hrdeploy.io import console as make_console
    from hrdeploy.manifest import load_manifest
    from hrdeploy.precision.evaluate import DEFAULT_TOLERANCES
    from hrdeploy.precision.quantize import PRECISIONS, quantize_bundle

    preset = (load_manifest(bundle).get("stages") or {}).get("quantize") or {}
    given = {name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE for name in ctx.params}
    precision = precision if given["precision"] else preset.get("precision", precision)
    calib_samples = calib_samples if given["calib_samples"] else int(preset.get("calib_samples", calib_samples))
    method = method if given["method"] else preset.get("method", method)
    backend = backend if given["backend"] else preset.get("backend", backend)
    preset_exclude = preset.get("exclude", ())
    exclude = exclude if given["exclude"] else ((preset_exclude,) if isinstance(preset_exclude, str)
                                                else tuple(preset_exclude))
    if precision is None:
        raise UserError("pass --precision fp16 or --precision int8 (the bundle's preset names none)")
    precision = str(precision).lower()
    tol = DEFAULT_TOLERANCES.get(precision) if precision in PRECISIONS else None
    if tol is not None:
        if min_cosine is not None:
            tol = replace(tol, min_cosine=min_cosine)
        if min_agreement is not None:
            tol = replace(tol, min_agreement_pct=min_agreement)
    console = make_console()
    with console.status(f"quantizing {bundle} to {precision} ..."):
        path = quantize_bundle(
            bundle, precision, calib_dir=calib_dir, calib_samples=calib_samples, method=method, backend=backend,
            exclude=exclude, auto_exclude=auto_exclude, val_dir=val_dir, val_samples=val_samples, tolerance=tol,
            sensitivity=sensitivity, threads=threads, log=console.log,
        )
    passed = _print_summary(console, bundle, precision, path)
    if not passed:
        ctx.exit(1)


def _print_summary(console, bundle: str, precision: str, path) -> bool:  # noqa: ANN001 - rich Console, Path
    from rich.table import Table

    from hrdeploy.manifest import load_manifest

    entry = load_manifest(bundle)["artifacts"][precision]
    console.print(f"[bold]{precision}[/] -> {path} ({entry['size_bytes'] / 1e6:.1f} MB, {entry['converter']})")
    cal = entry["calibration"]
    console.print(f"images: {cal['count']} of {cal['available']} from {cal['source']}")
    if precision == "int8":
        console.print(
            f"method {entry['method']}; convs quantized {entry['convs_quantized']}, left fp32 "
            f"{entry['convs_unquantized']} (excluded {len(entry['excluded_nodes'])}, wide-range depthwise "
            f"{len(entry['auto_excluded'])}, run-time weights {len(entry['runtime_weight_convs'])})"
        )
    else:
        console.print(
            f"fp16 compute nodes {entry['fp16_compute_nodes']}; kept fp32 {entry['kept_fp32_count']} "
            f"(overflow {entry['overflow_count']}, excluded {len(entry['excluded_nodes'])})"
        )
    val = entry.get("validation")
    if val is None:
        return True
    table = Table(title=f"{precision} on onnxruntime CPU vs eager fp32 ({val['images']} images)")
    for col in ("cosine", "max rel", "argmax %", "mean kpt px", "ok"):
        table.add_column(col, justify="right")
    agree, kpt = val.get("argmax_agreement_pct"), val.get("mean_kpt_err_px")
    table.add_row(
        f"{val['cosine']:.6f}", f"{val['max_rel']:.2e}", "-" if agree is None else f"{agree:.1f}",
        "-" if kpt is None else f"{kpt:.2f}", "[green]yes[/]" if val["passed"] else "[red]NO[/]",
    )
    console.print(table)
    for failure in val["failures"]:
        console.print(f"[red]FAIL[/] {failure} (set the bar with --min-cosine / --min-agreement)")
    console.print(f"report: {bundle}/{entry['report']}")
    return bool(val["passed"])
