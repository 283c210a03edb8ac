"""`hrdeploy validate DIR`: every artifact of a bundle on every available backend against eager fp32."""

from __future__ import annotations

from pathlib import Path

import click

from hrdeploy.limits import MAX_SEEDED, MAX_THREADS


@click.command("validate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backends", default="eager,ort,trt", show_default=True,
              help="Comma list of eager (the rewritten eager model), ort (ONNX artifacts), trt (engines).")
@click.option("--images", type=click.Path(path_type=Path),
              help="Folder of photos to validate on (with --ann: the folder of the annotated images) "
                   "[default: scikit-image's sample photos].")
@click.option("--ann", type=click.Path(path_type=Path),
              help="COCO keypoint json: judge fp16/int8 pose artifacts by the COCO AP drop on its annotated people "
                   "(default bars: fp16 0.5, int8 2 AP points) instead of keypoint agreement on photo crops.")
@click.option("--batch", type=click.IntRange(min=1),
              help="Batch size to run the artifacts at [default: each artifact's own, 1 when dynamic].")
@click.option("--tolerance", "tolerances", multiple=True, metavar="[PRECISION.]METRIC=VALUE",
              help="Override a bound of the tolerance table, e.g. fp32.max_rel=1e-3 or int8.min_oks=0.97 "
                   "(repeatable). Bounds: max_rel, min_cosine, max_ap_drop, min_oks, min_pck.")
@click.option("--seeded", type=click.IntRange(0, MAX_SEEDED), default=2, show_default=True,
              help="Seeded random inputs besides the photos.")
@click.option("--no-photos", is_flag=True, help="Seeded inputs only (no photos).")
@click.option("--no-localize", is_flag=True, help="Do not search for the first diverging node on failure.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads for onnxruntime and eager.")
@click.pass_context
def validate_cmd(
    ctx: click.Context,
    bundle: Path,
    backends: str,
    images: Path | None,
    ann: Path | None,
    batch: int | None,
    tolerances: tuple[str, ...],
    seeded: int,
    no_photos: bool,
    no_localize: bool,
    threads: int | None,
) -> None:
    """Check every artifact in bundle DIR against the eager fp32 model, on photos and seeded inputs.

    fp32 artifacts are judged by their output tensors; fp16/int8 artifacts of top-down pose models on person
    crops (COCO AP drop with --ann, else keypoint agreement with eager on the people found in the photos),
    with the tolerance table export, quantize and eval use.
    Writes parity.json / parity.md into the bundle (beside export's check) and prints a table.
    Exit status 0 when every artifact is within tolerance, 1 when one is not, 2 on bad input.
    """
    from hrdeploy.bundle import Bundle
    from hrdeploy.io import console as make_console
    from hrdeploy.validate.report import write_reports
    from hrdeploy.validate.run import validate_bundle

    console = make_console()
    b = Bundle.open(bundle)
    with console.status(f"validating {bundle} ...") as status:
        report = validate_bundle(
            b, backends=backends, images=images, batch=batch, tolerances=tolerances, seeded=seeded,
            photos=not no_photos, localize_failures=not no_localize, threads=threads, ann=ann,
            log=lambda msg: status.update(msg),
        )
    json_path, md_path = write_reports(b, report)
    print_report(console, report)
    console.print(f"wrote {json_path} and {md_path}")
    if not report["passed"]:
        ctx.exit(1)


CONSOLE_COLUMNS = ("artifact", "batch", "output", "max abs", "max rel", "cosine", "argmax %",
                   "crops: OKS / PCK % / dAP", "status")


def print_report(console, report: dict) -> None:  # noqa: ANN001 - rich Console
    from rich.table import Table

    from hrdeploy.validate.report import table_rows

    n = len(report["inputs"])
    table = Table(title=f"{report['model']}: every artifact vs eager fp32 ({n} inputs)")
    for col in CONSOLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("artifact", "output", "status") else "right",
                         no_wrap=col in ("artifact", "status"))
    for cells in table_rows(report):
        if cells[-1].startswith("skipped"):
            continue
        artifact = f"{cells[0]} ({cells[1]} {cells[2]})"
        table.add_row(artifact, *cells[3:7], *cells[8:], style="red" if cells[-1] == "FAIL" else None)
    console.print(table)
    for s in report["skipped"]:
        console.print(f"[dim]skipped {s['backend']} {s.get('target', '-')}: {s['reason']}[/]")
    for r in report["rows"]:
        if not r["passed"]:
            console.print(f"[red]FAIL[/] {r['target']} ({r['backend']} {r['precision']}): {'; '.join(r['failures'])}")
            if "divergence" in r:
                console.print(f"  {r['divergence']['summary']}")
    verdict = "[green]PASS[/]" if report["passed"] else "[red]FAIL[/]"
    console.print(f"{verdict} in {report['seconds']:.1f} s")
