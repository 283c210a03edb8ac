"""`run_bench`: every target at every batch size, one result row each, with a progress callback."""

from __future__ import annotations

import datetime
import gc
from collections.abc import Callable, Sequence
from typing import Any

from hrdeploy.bench.harness import bench_input, bench_runner, library_versions, machine_info
from hrdeploy.bench.targets import BenchTarget
from hrdeploy.errors import UserError

FORMAT = "hrdeploy-bench/1"


def check_batches(targets: Sequence[BenchTarget], batches: Sequence[int]) -> None:
    """UserError when a batch lies outside what a target accepts (static ONNX batch, engine profile)."""
    for t in targets:
        lo, hi = t.batch_range
        bad = [b for b in batches if not lo <= b <= hi]
        if bad:
            what = t.file or t.label
            if lo == hi:
                raise UserError(f"{what} has a static batch of {lo}; --batch {bad[0]} cannot run on it "
                                "(use --batch {lo}, or re-export with --dynamic-batch)".replace("{lo}", str(lo)))
            raise UserError(f"--batch {bad[0]} is outside {what}'s profile (batch {lo}..{hi}); "
                            "use a batch in that range or rebuild the engine with a wider --min-batch/--max-batch")


def _run_targets(
    targets: Sequence[BenchTarget],
    batches: Sequence[int],
    input_size: tuple[int, int],
    iterations: int,
    warmup: int,
    on_start: Callable[[str, int, int], None] | None,
    on_step: Callable[[], None] | None,
    results: list[dict[str, Any]],
) -> None:
    for t in targets:
        with t.open() as runner:
            for b in batches:
                if on_start:
                    on_start(t.label, b, warmup + iterations)
                stats = bench_runner(runner, bench_input(b, input_size), iterations, warmup, on_step)
                results.append({"label": t.label, "backend": t.backend, "precision": t.precision, "file": t.file,
                                "batch": b, **stats})
        gc.collect()


def run_bench(
    targets: Sequence[BenchTarget],
    batches: Sequence[int],
    input_size: tuple[int, int],
    *,
    iterations: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    name: str = "",
    kind: str = "",
    skipped: Sequence[dict[str, str]] = (),
    on_start: Callable[[str, int, int], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Time each target at each batch; the report holds `results` rows with the STAT_KEYS and throughput.

    `on_start(label, batch, calls)` announces a row (for a progress bar), `on_step()` follows each call.
    """
    if iterations < 1 or warmup < 0:
        raise UserError("--iterations must be >= 1 and --warmup >= 0")
    check_batches(targets, batches)
    results = []
    torch = None
    if any(t.backend == "eager" for t in targets):  # EagerRunner(threads=N) changes torch's global setting
        import torch
    saved_threads = torch.get_num_threads() if torch else None
    if torch is not None and threads:
        torch.set_num_threads(threads)  # before an eager target builds its model (seeded init runs forwards)
    try:
        _run_targets(targets, batches, input_size, iterations, warmup, on_start, on_step, results)
    finally:
        if torch is not None:
            torch.set_num_threads(saved_threads)
    return {
        "format": FORMAT,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "target": {"name": name, "kind": kind, "input_size": list(input_size)},
        "machine": machine_info(),
        "versions": library_versions(),
        "settings": {"iterations": iterations, "warmup": warmup, "threads": threads, "batches": list(batches)},
        "results": results,
        "skipped": list(skipped),
    }
