"""`hrdeploy quantize DIR --precision fp16|int8`: add a precision variant of the bundle's ONNX."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hrdeploy.commands.stage_presets import OPENED, bundle_argument
from hrdeploy.parity.tolerances import BOOTSTRAP_RESAMPLES
from hrdeploy.precision.targets import (
    DEFAULT_MAX_AP_DROP,
    DEFAULT_MIN_OKS,
    DEFAULT_MIN_OKS_FOUND,
    DEFAULT_SEED,
    DEFAULT_TUNE_SHARE,
)

if TYPE_CHECKING:
    from hrdeploy.precision.result import QuantizeResult


@click.command("quantize")
@bundle_argument("bundle", "quantize", type=click.Path())
@click.option("--precision", help="fp16 (mixed precision, fp32 I/O) or int8 (Q/DQ) [default: the bundle's preset].")
@click.option("--calib-dir", type=click.Path(), help="Folder of calibration photos of people (needed for int8). "
              "Top-down models calibrate on person crops: the boxes of --calib-ann, or else up to three people per "
              "photo where the fp32 model finds them (it scores the whole photo and smaller windows of it, takes the "
              "box of each good window's confident keypoints, and keeps the best window when it finds none). "
              "Never the images you evaluate on.")
@click.option("--calib-ann", type=click.Path(), help="Person boxes of the --calib-dir photos: a COCO keypoint "
              "json (bbox) or an MPII json (list of {image, center, scale}; box height = scale x 200 px).")
@click.option("--calib-samples", type=click.IntRange(min=1), help="Use the first N photos by name [default: all].")
@click.option("--method", help="INT8 calibration: entropy|max|percentile "
                               "[default: percentile (ort), entropy (modelopt)].")
@click.option("--backend", default="auto", show_default=True,
              help="modelopt (NVIDIA ModelOpt) | ort (onnxruntime / onnxconverter-common) | "
                   "auto (int8: ort, whose INT8 keeps COCO AP on the trained network; fp16: modelopt AutoCast "
                   "if installed, else ort).")
@click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
              help="Keep matching nodes in fp32: glob over node names, op types or module paths "
                   "(e.g. '*spatial_weighting*'). Repeatable.")
@click.option("--auto-exclude/--no-auto-exclude", default=True,
              help="INT8: keep depthwise convs with wide-range inputs in fp32 [default: on].")
@click.option("--equalize/--no-equalize", default=False,
              help="INT8 (ort): bring the input channels of each depthwise conv to one range before calibration, "
                   "the scales moved into its weights (the same fp32 function) [default: off].")
@click.option("--equalize-dense/--no-equalize-dense", default=None,
              help="INT8 (ort): the same for dense convs whose input another conv alone produces, the scales folded "
                   "into both convs' weights [default: on when the INT8 search runs].")
@click.option("--shift-activations/--no-shift-activations", default=None,
              help="INT8 (ort): quantize non-negative conv inputs (ReLU outputs) shifted by half their range, on all "
                   "256 INT8 codes instead of 128, the shift added back after the conv [default: the INT8 search "
                   "tries both and keeps the one closer to fp32 on its tuning people; off without the search].")
@click.option("--ann", type=click.Path(), help="COCO keypoint json: gate on the COCO AP drop against eager fp32 "
              "on its annotated people [default bars: fp16 0.5, int8 2 AP points].")
@click.option("--images", type=click.Path(), help="Folder of the --ann images.")
@click.option("--val-dir", type=click.Path(), help="Without --ann: photos whose person crops the keypoint-agreement "
              "gate runs on [default: the calibration crops, else scikit-image's sample photos].")
@click.option("--val-samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Validate on the first N photos.")
@click.option("--tolerance", "tolerances", multiple=True, metavar="[PRECISION.]METRIC=VALUE",
              help="Override a bound of the tolerance table, e.g. int8.max_ap_drop=3 or min_oks=0.97 (repeatable).")
@click.option("--sensitivity/--no-sensitivity", default=True, help="INT8: rank blocks by the error they add.")
@click.option("--search/--no-search", default=None,
              help="INT8 of a top-down pose model: keep the fewest conv blocks in float for the accuracy target, "
                   "judged on tuning people held out from the calibration photos [default: on with --calib-ann "
                   "or a trained checkpoint].")
@click.option("--max-ap-drop", type=click.FloatRange(min=0), default=DEFAULT_MAX_AP_DROP, show_default=True,
              help="Search target with a COCO keypoint --calib-ann: AP points lost on the tuning people.")
@click.option("--min-oks", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Search target: mean OKS of the INT8 keypoints against fp32's on the tuning people "
              f"[default: {DEFAULT_MIN_OKS:g} with --calib-ann, {DEFAULT_MIN_OKS_FOUND:g} on the crops the fp32 "
              "model finds].")
@click.option("--tune-share", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=DEFAULT_TUNE_SHARE, show_default=True,
              help="Share of the calibration photos whose people tune instead of calibrate (>= 20 people).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="Seed of the calibration/tuning split and of the bootstrap.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=BOOTSTRAP_RESAMPLES, show_default=True,
              help="With --ann: resamples of the people for the AP drop's paired 95% interval (0: off).")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.pass_context
def quantize_cmd(
    ctx: click.Context, bundle: str, precision: str | None, calib_dir: str | None, calib_ann: str | None,
    calib_samples: int, method: str | None, backend: str, exclude: tuple[str, ...], auto_exclude: bool,
    equalize: bool, equalize_dense: bool | None, shift_activations: bool | None, ann: str | None,
    images: str | None, val_dir: str | None, val_samples: int, tolerances: tuple[str, ...], sensitivity: bool,
    search: bool | None, max_ap_drop: float, min_oks: float | None, tune_share: float, seed: int, bootstrap: int,
    threads: int | None,
) -> None:
    """Write model.fp16.onnx or model.int8.onnx into BUNDLE and check it against the eager fp32 model.

    Options not given on the command line come from the `quantize` section of the preset the bundle was
    exported with (`hrdeploy export --config`), when it has one.

    The gate (hrdeploy.parity, the same table as export, validate and eval): with --ann/--images the COCO
    keypoint AP drop against eager fp32; without, keypoint agreement (OKS, PCK) with eager and the heatmaps'
    cosine on person crops.

    Exit status 0 when the variant is within tolerance, 1 when it drifts beyond it (the file is kept and
    recorded as failed), 2 on bad input (the bundle is left unchanged).
    """
    from hrdeploy.bundle import Bundle
    from hrdeploy.errors import UserError
    from hrdeploy.io import console as make_console
    from hrdeploy.parity.tolerances import parse_tolerances
    from hrdeploy.precision.quantize import QUANTIZED, quantize_bundle

    if precision is None:
        raise UserError("pass --precision fp16 or --precision int8 (the bundle's preset names none)")
    precision = str(precision).lower()
    tol = parse_tolerances(tolerances).get(precision) if precision in QUANTIZED else None
    console = make_console()
    b = ctx.meta.get(OPENED) or Bundle.open(bundle)
    with console.status(f"quantizing {bundle} to {precision} ..."):
        result = quantize_bundle(
            b, precision, calib_dir=calib_dir, calib_samples=calib_samples, method=method, backend=backend,
            exclude=exclude, calib_ann=calib_ann, auto_exclude=auto_exclude, equalize=equalize,
            equalize_dense=equalize_dense, shift_activations=shift_activations, val_dir=val_dir,
            val_samples=val_samples, ann=ann, images=images, tolerance=tol, sensitivity=sensitivity, search=search,
            max_ap_drop=max_ap_drop, min_oks=min_oks, tune_share=tune_share, seed=seed, bootstrap=bootstrap,
            threads=threads, log=console.log,
        )
    _print_summary(console, bundle, result)
    if not result.passed:
        ctx.exit(1)


def _print_summary(console, bundle: str, r: QuantizeResult) -> None:  # noqa: ANN001 - rich Console
    from rich.table import Table

    from hrdeploy.accuracy.report import UNITS

    console.print(f"[bold]{r.precision}[/] -> {r.path} ({r.size_bytes / 1e6:.1f} MB, {r.converter})")
    cal = r.calibration
    console.print(f"images: {cal.count} of {cal.available} from {cal.source}")
    if r.precision == "int8":
        console.print(
            f"method {r.method}; inputs equalized: depthwise {len(r.equalized or {})}, dense "
            f"{len(r.equalized_dense or {})}; shifted inputs {r.shifted_convs or 0}; convs quantized "
            f"{r.convs_quantized}, left fp32 {r.convs_unquantized} (excluded "
            f"{len(r.excluded_nodes)}, wide-range depthwise {len(r.auto_excluded or {})}, run-time weights "
            f"{len(r.runtime_weight_convs or [])})"
        )
    else:
        console.print(
            f"fp16 compute nodes {r.fp16_compute_nodes}; kept fp32 {r.kept_fp32_count} "
            f"(overflow {r.overflow_count}, excluded {len(r.excluded_nodes)})"
        )
    if r.search:
        _print_search(console, r.search)
    val = r.validation
    if val is None:
        return
    what = {"coco-ap": "COCO AP drop on annotated people", "crop-agreement": "keypoint agreement on person crops",
            "tensor": "output tensors"}[val.mode]
    table = Table(title=f"{r.precision} on onnxruntime CPU vs eager fp32: {what} ({val.inputs} inputs)")
    cells = dict(val.gated)
    cells.pop("non_finite", None)
    if val.ap is not None:
        cells = {"eager AP": val.eager_ap, f"{r.precision} AP": val.ap, **cells}
    for col in (*cells, "ok"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:.4g}" for v in cells.values()), "[green]yes[/]" if val.passed else "[red]NO[/]")
    console.print(table)
    ci = val.interval
    if ci:
        console.print(f"AP drop {-ci['dap']:.2f}, paired 95% interval of dAP [{ci['low']:+.2f}, {ci['high']:+.2f}] "
                      f"over {ci['units']} {UNITS[ci['unit']]} ({ci['resamples']} resamples): {ci['call']} against the "
                      f"bar {ci['bar']:g}")
    bounds = ", ".join(f"{k} {v:g}" for k, v in val.tolerance.items())
    for failure in val.failures:
        console.print(f"[red]FAIL[/] {failure} (bounds {bounds}; override with --tolerance)")
    console.print(f"report: {bundle}/{r.report}")


def _print_search(console, search: dict) -> None:  # noqa: ANN001 - rich Console
    """The path the INT8 search walked, one row per point, the chosen one marked."""
    from rich.table import Table

    annotated = search["annotated"]
    table = Table(title=f"INT8 search on {search['tuning_people']} tuning people (target: {search['target']})")
    for col in ("step", "change", "convs int8", "MACs int8", *(["tuning dAP"] if annotated else []),
                "OKS vs fp32", "latency / fp32", ""):
        table.add_column(col, justify="left" if col in ("step", "change") else "right")
    for i, p in enumerate(search["points"]):
        dap = [f"{-p['ap_drop']:+.2f}"] if annotated else []
        ratio = "-" if p["latency_ratio"] is None else f"{p['latency_ratio']:.2f}"
        mark = "[bold green]chosen[/]" if i == search["chosen"] else ("met" if p["within"] else "")
        table.add_row(p["step"], p["change"] or "(every conv int8)", str(p["convs_int8"]),
                      f"{100 * p['mac_share_int8']:.1f} %", *dap, f"{p['oks']:.4f}", ratio, mark)
    console.print(table)
    encodings = search.get("encodings", {})
    if len(encodings) > 1:
        tried = ", ".join(f"{k} {v['oks']:.4f}{'' if v['within'] else ' (target not met)'}"
                          for k, v in encodings.items())
        console.print(f"activations: {search['activations']} (chosen points' OKS vs fp32: {tried})")
