"""`hrdeploy bench`: latency percentiles and throughput per backend and batch size."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hrdeploy.limits import MAX_ITERATIONS, MAX_THREADS


@click.command("bench")
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), help="Benchmark this ONNX on onnxruntime.")
@click.option("--engine", "engine_file", type=click.Path(path_type=Path), help="Benchmark this TensorRT engine.")
@click.option("--model", "model_name", help="Benchmark the eager PyTorch model NAME (seeded weights).")
@click.option("--backend", "backends",
              help="Comma list of eager,ort,trt for a bundle [default: eager,ort and trt when it has engines].")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma list of batch sizes, e.g. 1,4,8.")
@click.option("--iterations", type=click.IntRange(1, MAX_ITERATIONS), default=20, show_default=True,
              help="Timed calls per row.")
@click.option("--warmup", type=click.IntRange(0, MAX_ITERATIONS), default=3, show_default=True,
              help="Untimed calls first.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads (onnxruntime intra-op, torch).")
@click.option("--input-size", metavar="HxW", help="Input size for --model or a dynamic-shape ONNX.")
@click.option("--dataset", help="Dataset variant for --model [default: the model's first].")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the JSON; .md and .png go beside it [default: DIR/bench.json or ./bench.json].")
@click.option("--tune", is_flag=True,
              help="Measure onnxruntime session settings on the bundle's ONNX and record the fastest in its manifest.")
def bench_cmd(
    bundle: Path | None,
    onnx_file: Path | None,
    engine_file: Path | None,
    model_name: str | None,
    backends: str | None,
    batches: str,
    iterations: int,
    warmup: int,
    threads: int | None,
    input_size: str | None,
    dataset: str | None,
    json_file: Path | None,
    tune: bool,
) -> None:
    """Measure latency (p50/p90/p99/mean/min ms) and throughput of a bundle DIR, --onnx, --engine or --model.

    Several backends run side by side (for a bundle: the eager model, every ONNX on onnxruntime, every
    engine on TensorRT). Writes bench.json, bench.md and bench.png (latency and throughput vs batch).
    """
    from hrdeploy.bench.targets import parse_backend_list, parse_batches
    from hrdeploy.errors import UserError

    chosen = _chosen_source(bundle=bundle, onnx=onnx_file, engine=engine_file, model=model_name)
    batch_list = parse_batches(batches)
    if tune:
        if bundle is None:
            raise UserError("--tune records settings in a bundle; pass the bundle DIR")
        _tune(bundle, batch_list[0], threads, iterations)
        return
    backend_list = parse_backend_list(backends)
    size = _parse_size(input_size)
    if json_file is not None and json_file.suffix.lower() in (".md", ".png"):
        raise UserError(f"--json {json_file}: the .md and .png are written beside it; give a .json path")
    if bundle is not None:
        job = _bundle_job(bundle, backend_list, size, threads, json_file)
    else:
        _check_single_backend(chosen, backends, backend_list)
        job = _single_job(onnx_file, engine_file, model_name, dataset, size, threads, json_file)
    if not job.targets:
        reasons = "; ".join(s["reason"] for s in job.skipped) or "no artifacts for the chosen backends"
        raise UserError(f"nothing to benchmark ({reasons})")
    _measure(job, batch_list, iterations, warmup, threads)


@dataclass
class _Job:
    """What one bench run measures and where its report goes."""

    targets: list[Any]  # hrdeploy.bench.targets.BenchTarget
    size: tuple[int, int]
    name: str
    kind: str  # "bundle" | "model" | "onnx" | "engine"
    out: Path
    skipped: list[dict[str, str]] = field(default_factory=list)


def _chosen_source(**sources: Any) -> str:
    """The one source option given (DIR, --onnx, --engine or --model); a UserError for none or several."""
    from hrdeploy.errors import UserError

    flags = {"bundle": "DIR", "onnx": "--onnx", "engine": "--engine", "model": "--model"}
    chosen = [flags[k] for k, v in sources.items() if v is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one of DIR, --onnx FILE, --engine FILE or --model NAME"
                        + (f" (got {', '.join(chosen)})" if chosen else ""))
    return chosen[0]


def _parse_size(input_size: str | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    from hrdeploy.export.options import parse_size

    return parse_size(input_size)


def _bundle_job(bundle: Path, backend_list: list[str] | None, size: tuple[int, int] | None,
                threads: int | None, json_file: Path | None) -> _Job:
    """Every artifact of the bundle on the chosen backends (an --input-size only for a dynamic-shape bundle)."""
    from hrdeploy.bench.targets import bundle_targets
    from hrdeploy.bundle import Bundle
    from hrdeploy.errors import UserError

    opened = Bundle.open(bundle)
    targets, skipped, own_size = bundle_targets(opened, backend_list, threads)
    size = size or own_size
    if size != own_size and not opened.input.dynamic_shape:
        raise UserError(f"bundle {bundle} has a static input size {own_size[0]}x{own_size[1]}; drop --input-size")
    return _Job(targets, size, opened.model.name, "bundle", json_file or bundle / "bench.json", skipped)


def _check_single_backend(chosen: str, backends: str | None, backend_list: list[str] | None) -> None:
    """A file or model runs on one backend: a --backend naming others is a UserError."""
    from hrdeploy.errors import UserError

    wanted = {"--model": "eager", "--onnx": "ort", "--engine": "trt"}[chosen]
    if backend_list and set(backend_list) != {wanted}:
        raise UserError(f"--backend {backends} does not apply to {chosen} (it runs on {wanted}); "
                        "pass a bundle DIR to compare backends side by side")


def _single_job(onnx_file: Path | None, engine_file: Path | None, model_name: str | None, dataset: str | None,
                size: tuple[int, int] | None, threads: int | None, json_file: Path | None) -> _Job:
    """The eager --model, or the --onnx / --engine file, as the one target."""
    from hrdeploy.bench.targets import file_target, model_target

    out = json_file or Path("bench.json")
    if model_name:
        target, size = model_target(model_name, dataset, size, threads)
        return _Job([target], size, model_name, "model", out)
    path = onnx_file or engine_file
    assert path is not None
    kind = "onnx" if onnx_file else "engine"
    target, size = file_target(path, kind, size, threads)
    return _Job([target], size, path.name, kind, out)


def _measure(job: _Job, batches: list[int], iterations: int, warmup: int, threads: int | None) -> None:
    """Run the job, write bench.json/.md/.png and print the table."""
    from hrdeploy.bench.report import write_reports
    from hrdeploy.io import check_writable

    check_writable(job.out, "--json")
    report = _run_with_progress(job, batches, iterations, warmup, threads)
    paths = write_reports(report, job.out)
    _print(report)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


def _run_with_progress(job: _Job, batches: list[int], iterations: int, warmup: int, threads: int | None) -> dict:
    """run_bench with a progress bar on a terminal, and one plain line per row in logs."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hrdeploy.bench.run import run_bench
    from hrdeploy.io import console as make_console

    console = make_console()
    state: dict = {}
    with contextlib.ExitStack() as stack:
        if console.is_terminal:
            progress = stack.enter_context(Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            ))

            def on_start(label: str, batch: int, calls: int) -> None:
                state["task"] = progress.add_task(f"{label} batch {batch}", total=calls)

            def on_step() -> None:
                progress.advance(state["task"])
        else:
            def on_start(label: str, batch: int, calls: int) -> None:
                console.print(f"[bench] {label} batch {batch}: {calls} calls", highlight=False, markup=False)

            on_step = None
        return run_bench(job.targets, batches, tuple(job.size), iterations=iterations, warmup=warmup,
                         threads=threads, name=job.name, kind=job.kind, skipped=job.skipped, on_start=on_start,
                         on_step=on_step)


def _print(report: dict) -> None:
    from rich.table import Table

    from hrdeploy.bench.report import speedups
    from hrdeploy.io import console as make_console

    console = make_console()
    h, w = report["target"]["input_size"]
    table = Table(title=f"{report['target']['name']} {h}x{w}: latency per call ({report['machine']['cpu']})")
    for col in ("target", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "images/s", "vs eager"):
        table.add_column(col, justify="left" if col == "target" else "right", no_wrap=True)
    ups = speedups(report["results"])
    for r in report["results"]:
        up = ups.get((r["label"], r["batch"]))
        table.add_row(r["label"], str(r["batch"]), *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms",
                      "min_ms")), f"{r['throughput_ips']:.1f}", "-" if up is None else f"{up:.2f}")
    console.print(table)
    for s in report["skipped"]:
        console.print(f"[dim]skipped {s['backend']} {s.get('target', '')}: {s['reason']}[/]")


def _tune(bundle: Path, batch: int, threads: int | None, rounds: int) -> None:
    """Time the session-setting candidates on the bundle's fp32 ONNX at `batch`; write the fastest."""
    from rich.table import Table

    from hrdeploy.bench.tune import manifest_entry, tune
    from hrdeploy.bundle import Bundle
    from hrdeploy.io import console as make_console
    from hrdeploy.runtime.ort_options import MANIFEST_SECTION

    opened = Bundle.open(bundle)
    path = opened.artifact("onnx").path
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    thread_counts = (threads,) if threads else tuple(sorted({1, cores}))
    result = tune(path, (batch, 3, *opened.input.size), thread_counts, rounds=max(rounds, 5))
    opened.record_section(MANIFEST_SECTION[0], manifest_entry(result), key=MANIFEST_SECTION[1])
    console = make_console()
    table = Table(title=f"onnxruntime settings, {path.name} batch {batch} ({result['rounds']} alternating rounds)")
    for col in ("threads", "mem reuse", "graph opt", "p50 ms", "min ms", "peak RSS growth MB"):
        table.add_column(col, justify="right")
    for r in result["candidates"]:
        table.add_row(str(r["threads"]), "on" if r["mem_reuse"] else "off", r["graph_optimization"],
                      f"{r['p50_ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['peak_rss_growth_mb']:.1f}")
    console.print(table)
    chosen = result["chosen"]
    console.print(f"recorded in {bundle / 'manifest.json'}: threads={chosen['threads']} "
                  f"mem_reuse={chosen['mem_reuse']} graph_optimization={chosen['graph_optimization']}")
