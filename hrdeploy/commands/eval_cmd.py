"""`hrdeploy eval DIR --ann COCO.json --images DIR`: COCO keypoint AP of every artifact against eager fp32."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hrdeploy.limits import MAX_THREADS
from hrdeploy.parity.tolerances import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

if TYPE_CHECKING:
    from rich.console import Console


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--ann", required=True, type=click.Path(path_type=Path),
              help="COCO keypoint annotations (json), e.g. person_keypoints_val2017.json.")
@click.option("--images", required=True, type=click.Path(path_type=Path), help="Folder of the --ann images.")
@click.option("--artifact", "artifacts", multiple=True, metavar="NAME",
              help="Artifact to score (repeatable; onnx, fp16, int8, engine keys) [default: onnx].")
@click.option("--all", "all_artifacts", is_flag=True, help="Score every artifact of the bundle.")
@click.option("--dets", type=click.Path(path_type=Path),
              help="Person boxes from a COCO-results detection file instead of the ground-truth boxes.")
@click.option("--min-det-score", type=float, default=0.0, show_default=True, help="Drop detections below this.")
@click.option("--flip-test", is_flag=True, help="Average with the mirrored crop (mmpose's flip test).")
@click.option("--dark", is_flag=True, help="DARK sub-pixel decoding instead of the quarter-pixel shift.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Crops per run (clamped to each artifact's batch range).")
@click.option("--tolerance", "tolerances", multiple=True, metavar="[PRECISION.]METRIC=VALUE",
              help="Override a bound, e.g. int8.max_ap_drop=3 (repeatable).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=BOOTSTRAP_RESAMPLES, show_default=True,
              help="Resamples of the people for each AP drop's paired 95% interval (0: off).")
@click.option("--seed", type=int, default=BOOTSTRAP_SEED, show_default=True, help="Seed of the bootstrap.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Also write the report to this file.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads for onnxruntime and eager.")
@click.pass_context
def eval_cmd(
    ctx: click.Context, bundle: Path, ann: Path, images: Path, artifacts: tuple[str, ...], all_artifacts: bool,
    dets: Path | None, min_det_score: float, flip_test: bool, dark: bool, batch: int, tolerances: tuple[str, ...],
    bootstrap: int, seed: int, json_file: Path | None, threads: int | None,
) -> None:
    """Score the eager fp32 model and the artifacts of BUNDLE by COCO keypoint AP (pycocotools).

    Top-down models run on crops of the annotated people's boxes (x1.25, the model's aspect ratio);
    bottom-up models on whole images. Each artifact's AP drop is judged against eager fp32 with the
    tolerance table every stage uses (default bars: fp16 0.5, int8 2 AP points), with a paired bootstrap
    95% interval over the people; a drop whose interval straddles the bar is called inconclusive. Writes
    eval.json, eval.md and each model's COCO results (eval.<artifact>.results.json) into the bundle.

    Exit status 0 when every artifact is within its bar, 1 when one is not, 2 on bad input.
    """
    from hrdeploy.accuracy.report import write_reports
    from hrdeploy.accuracy.run import evaluate_bundle
    from hrdeploy.io import console as make_console

    console = make_console()
    with console.status(f"evaluating {bundle} ...") as status:
        report = evaluate_bundle(
            bundle, ann, images, artifacts=artifacts, all_artifacts=all_artifacts, dets=dets,
            min_det_score=min_det_score, flip_test=flip_test, dark=dark, batch=batch, tolerances=tolerances,
            threads=threads, bootstrap=bootstrap, seed=seed, log=lambda msg: status.update(msg),
        )
    json_path, md_path = write_reports(report, json_file)
    _print_report(console, report)
    console.print(f"wrote {json_path} and {md_path}")
    if not report["passed"]:
        ctx.exit(1)


def _print_report(console: Console, report: dict[str, Any]) -> None:
    """The AP table, each AP drop's interval on a line of its own, the failures and the skipped artifacts."""
    from rich.table import Table

    from hrdeploy.accuracy.report import COLUMNS, UNITS, cells

    h, w = report["input_size"]
    table = Table(title=f"{report['model']} {h}x{w}: COCO keypoint AP on {report['people']} people ({report['boxes']})")
    shown = [i for i, col in enumerate(COLUMNS) if col != "dAP 95% CI"]  # intervals get a line each, below
    for i in shown:
        table.add_column(COLUMNS[i], justify="left" if COLUMNS[i] in ("artifact", "precision", "backend", "gate")
                         else "right")
    for row in report["rows"]:
        row_cells = cells(row)
        row_cells[-1] = row_cells[-1].replace(" (inconclusive)", "")  # said on the interval's line
        table.add_row(*(row_cells[i] for i in shown), style="red" if row.get("passed") is False else None)
    console.print(table)
    for row in report["rows"]:
        ci = row.get("interval")
        if ci is not None:
            console.print(f"{row['artifact']}: dAP {row['dAP']:+.2f}, paired 95% interval [{ci['low']:+.2f}, "
                          f"{ci['high']:+.2f}] over {ci['units']} {UNITS[ci['unit']]}: {ci['call']} against the bar "
                          f"{ci['bar']:g}")
    for row in report["rows"]:
        for failure in row.get("failures", []):
            console.print(f"[red]FAIL[/] {row['artifact']}: {failure}")
    for s in report["skipped"]:
        console.print(f"[dim]skipped {s['artifact']}: {s['reason']}[/]")
