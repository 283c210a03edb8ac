"""Benchmark the whole model zoo into benchmarks/RESULTS.md.

For every registered model at its default input size: parameters and MACs (hrdeploy.counting), the
export (rewritten, dynamic batch) with its time and fp32 parity, eager vs onnxruntime latency at batch
1 and 8, and the upstream-form export (`export_bundle(..., rewrite=False, batch=1)`) on onnxruntime at
batch 1 for the rewritten/upstream ratio (or why that export fails); for models no rewrite applies to,
the upstream form is the same graph and is not exported twice unless --all-upstream. Iterations adapt to the model:
each row gets about --row-seconds of timed calls (at least 1, at most --max-iterations), so the heavy
models (hrnetv2_w48 at 512x1024, higher_hrnet_w48 at 640) take few calls.

Then the performance targets for lite_hrnet_18 (onnxruntime p50 <= 0.3x eager p50 at batch 1;
batch-8 throughput >= 1.3x batch 1 per image) are checked, and its onnxruntime session is profiled
(per op type) so a miss can be traced to the ops that cost the time.

    python benchmarks/run_zoo.py                      # everything, ~20 min on 2 cores
    python benchmarks/run_zoo.py --models lite_hrnet_18,hrnet_w32 --quick --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hrdeploy.bench.harness import (  # noqa: E402
    bench_input,
    latency_stats,
    library_versions,
    machine_info,
    time_calls,
)

TARGET_ORT_EAGER = 0.3  # lite_hrnet_18: onnxruntime p50 / eager p50 at batch 1
TARGET_BATCH_GAIN = 1.3  # lite_hrnet_18 onnxruntime: images/s at batch 8 / images/s at batch 1
TARGET_DITE_LITE = 1.3  # rewritten dite_hrnet_18 onnxruntime p50 / lite_hrnet_18's, batch 1


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def measure(
    runner: Any, batch: int, size: tuple[int, int], row_seconds: float, max_iter: int, estimate_s: float = 0.0
) -> dict[str, Any]:
    """One warm-up call, then as many timed calls as fit in `row_seconds` (1..max_iter).

    When a call is expected (`estimate_s`, e.g. from batch 1) to take longer than `row_seconds` on its own,
    the warm-up is skipped and the single timed call stands alone: for the heavy models at batch 8
    (tens of seconds per call) the first-call set-up is negligible.
    """
    x = bench_input(batch, size)
    if estimate_s > row_seconds:
        stats = latency_stats(time_calls(lambda: runner.run(x), 1, warmup=0), batch)
        stats["warmup"] = 0
        return stats
    t0 = time.perf_counter()
    runner.run(x)
    first = time.perf_counter() - t0
    iterations = max(1, min(max_iter, int(row_seconds / max(first, 1e-6))))
    stats = latency_stats(time_calls(lambda: runner.run(x), iterations, warmup=0), batch)
    stats["first_call_ms"] = first * 1e3
    stats["warmup"] = 1
    return stats


def measure_pair(a: Any, b: Any, size: tuple[int, int], row_seconds: float, max_iter: int) -> tuple[dict, dict]:
    """Batch-1 latency of runners `a` and `b` measured in alternation (a, b, a, b, ...) after one warm-up
    call each, so both see the same machine load: their ratio is what the noisy machine can still tell."""
    x = bench_input(1, size)
    t0 = time.perf_counter()
    a.run(x)
    b.run(x)
    iterations = max(1, min(max_iter, int(row_seconds / max(time.perf_counter() - t0, 1e-6))))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(iterations):
        for runner, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            runner.run(x)
            out.append(time.perf_counter() - start)
    return latency_stats(times[0], 1), latency_stats(times[1], 1)


def bench_model(name: str, work: Path, args: argparse.Namespace, log) -> dict[str, Any]:  # noqa: ANN001
    from hrdeploy.counting import count_model
    from hrdeploy.export import export_bundle
    from hrdeploy.registry import get_spec
    from hrdeploy.runtime.eager import EagerRunner
    from hrdeploy.runtime.onnxruntime import OrtRunner
    from hrdeploy.zoo import build_model

    spec = get_spec(name)
    size = spec.input_size()
    row: dict[str, Any] = {"model": name, "family": spec.family, "task": spec.task,
                           "input_size": list(size), "notes": [],
                           "measured_at": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}
    counts = count_model(name)
    row["params"], row["macs"] = counts["params"], counts["macs"]
    batches = [1, 8]

    log(f"{name}: export (rewritten, dynamic batch) at {size[0]}x{size[1]}")
    try:
        res = export_bundle(name, work / name, dynamic_batch=True, force=True)
        row["export_s"] = res.manifest.export["seconds"]
        row["export_total_s"] = round(res.seconds, 1)
        row["rewrites"] = list(res.manifest.rewrites)
        row["exporter"] = res.manifest.export["exporter"]
        row["parity_passed"] = res.passed
        row["parity_max_rel"] = max(r["max_rel"] for r in res.parity["rows"])
        floors = [r["fp32_floor_rel"] for r in res.parity["rows"] if "fp32_floor_rel" in r]
        if floors:  # judged against the eager model's own fp32 rounding error (hrdeploy.export.parity)
            row["parity_fp32_floor"] = max(floors)
        row["parity_min_cosine"] = min(r["cosine"] for r in res.parity["rows"])
        onnx_path = work / name / "model.onnx"
        row["onnx_mb"] = onnx_path.stat().st_size / 1e6
    except Exception as err:  # the table says what failed; the run goes on with the next model
        row["export_error"] = first_line(err)
        log(f"{name}: export failed: {row['export_error']}")
        onnx_path = None

    eager = EagerRunner(build_model(name), spec.output_names, threads=args.threads)
    row["eager"], row["ort"] = {}, {}
    for b in batches:
        log(f"{name}: eager batch {b}")
        est = row["eager"][1]["p50_ms"] * b / 1e3 if 1 in row["eager"] else 0.0
        row["eager"][b] = measure(eager, b, size, args.row_seconds, args.max_iterations, est)
    del eager
    gc.collect()
    if onnx_path is not None:
        ort = OrtRunner(onnx_path, threads=args.threads)
        for b in batches:
            log(f"{name}: onnxruntime batch {b}")
            est = row["ort"][1]["p50_ms"] * b / 1e3 if 1 in row["ort"] else 0.0
            row["ort"][b] = measure(ort, b, size, args.row_seconds, args.max_iterations, est)
        del ort
        gc.collect()

    # Without rewrites the upstream form is the same graph (only the batch is static): not exported twice.
    same_graph = "export_error" not in row and not row.get("rewrites") and not args.all_upstream
    if same_graph:
        row["upstream_skipped"] = "no rewrite applies (same graph)"
    if not args.skip_upstream and not same_graph:
        log(f"{name}: upstream-form export (rewrite=False, batch=1)")
        try:
            up = export_bundle(name, work / f"{name}.upstream", rewrite=False, batch=1, force=True)
            row["upstream_parity_passed"] = up.passed
            if not up.passed:
                row["notes"].append(
                    f"upstream-form ONNX drifts from eager (max rel {max(r['max_rel'] for r in up.parity['rows']):.2g})"
                )
            ort_up = OrtRunner(work / f"{name}.upstream" / "model.onnx", threads=args.threads)
            if onnx_path is None:
                row["upstream_ort"] = measure(ort_up, 1, size, args.row_seconds, args.max_iterations)
            else:
                ort_rw = OrtRunner(onnx_path, threads=args.threads)
                row["rewritten_ort_paired"], row["upstream_ort"] = measure_pair(
                    ort_rw, ort_up, size, 2 * args.row_seconds, args.max_iterations
                )
                del ort_rw
            del ort_up
        except Exception as err:
            row["upstream_error"] = first_line(err)
            log(f"{name}: upstream-form export failed: {row['upstream_error']}")
        gc.collect()

    if name == "lite_hrnet_18" and onnx_path is not None:
        from hrdeploy.bench.profile import profile_ort

        log(f"{name}: profiling the onnxruntime session at batch 1 and 8")
        row["ort_profile"] = {b: profile_ort(onnx_path, bench_input(b, size), runs=runs, threads=args.threads)
                              for b, runs in ((1, 10), (8, 3))}
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def derived(row: dict[str, Any]) -> dict[str, float | None]:
    e, o = row.get("eager", {}), row.get("ort", {})

    def get(d: dict, b: int, key: str) -> float | None:
        return d[b][key] if b in d else None

    return {
        "ort_eager_b1": ratio(get(o, 1, "p50_ms"), get(e, 1, "p50_ms")),
        "ort_eager_b8": ratio(get(o, 8, "per_image_ms"), get(e, 8, "per_image_ms")),
        "ort_b8_gain": ratio(get(o, 8, "throughput_ips"), get(o, 1, "throughput_ips")),
        "rewritten_upstream": ratio(row.get("rewritten_ort_paired", o.get(1, {})).get("p50_ms"),
                                    row["upstream_ort"]["p50_ms"]) if "upstream_ort" in row else None,
    }


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    # rows measured before the manifest's exporter was recorded here were exported with dynamo
    exporters = "/".join(sorted({r.get("exporter", "dynamo") for r in rows if "export_s" in r})) or "no"
    lines = [
        "# hrdeploy zoo benchmark",
        "",
        f"Generated by `python benchmarks/run_zoo.py{meta['argv']}` on {meta['date']}.",
        "",
    ]
    stamps: dict[str, list[str]] = {}
    for r in rows:
        stamps.setdefault(r.get("measured_at", meta["date"]), []).append(r["model"])
    if len(stamps) > 1:
        lines += ["Rows measured at different times (--merge): " + "; ".join(
            f"{when}: {', '.join(models)}" for when, models in sorted(stamps.items())) + ".", ""]
    lines += [
        f"- Machine: {m['cpu']} ({m['caches']}), {m['cores']} cores usable, {m['platform']}, no GPU"
        + (f"; load average {meta['load_start']} at start, {meta['load_end']} at the end." if meta.get("load_start")
           else ".") + (f" {meta['note']}" if meta.get("note") else ""),
        f"- Versions: {versions}.",
        f"- Threads: {meta['threads']} for both torch and onnxruntime (CPU execution provider). Weights are "
        "seeded (hrdeploy.build_model without checkpoint); the input is a seeded normal tensor at the "
        "model's default size.",
        f"- Latency: one `run(batch)` call, numpy in/out copies included; one warm-up call, then as many timed "
        f"calls as fit in {meta['row_seconds']} s (1..{meta['max_iterations']}; `n` columns); a batch-8 call "
        f"expected to take over {meta['row_seconds']} s runs once without warm-up. p50 is the median.",
        "- MACs: torch FlopCounterMode / 2 at batch 1 (hrdeploy.counting). Export: the rewritten model, "
        f"dynamic batch, {exporters} exporter + onnxsim; `export s` excludes the parity check. Parity: fp32 ONNX on "
        "onnxruntime vs eager on seeded inputs at batch 1 and 4 (max rel = max abs error / max |eager|).",
        "- Ratios: `ort/eager` < 1 means onnxruntime is faster (batch 1: p50; batch 8: ms per image); "
        "`b8/b1` is onnxruntime images/s at batch 8 over batch 1; `rewritten/upstream` is the p50 of the "
        "rewritten dynamic-batch ONNX over the upstream-form static batch-1 ONNX "
        "(`export_bundle(..., rewrite=False, batch=1)`), both on onnxruntime at batch 1, timed in alternation "
        "(rewritten, upstream, rewritten, ...) so both see the same load; `upstream ort b1 p50 ms` is from "
        "that paired run.",
        "",
        "| model | input | params M | GMACs | export s | parity (max rel) | eager b1 p50 ms | ort b1 p50 ms "
        "| ort/eager b1 | eager b8 ms/img | ort b8 ms/img | ort/eager b8 | ort b8/b1 | upstream ort b1 p50 ms "
        "| rewritten/upstream | n (b1/b8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = derived(r)
        e, o = r.get("eager", {}), r.get("ort", {})
        if "export_error" in r:
            parity = f"export failed: {r['export_error']}"
        else:
            parity = f"{'pass' if r['parity_passed'] else 'FAIL'} ({r['parity_max_rel']:.1e}"
            parity += f"; fp32 floor {r['parity_fp32_floor']:.1e})" if "parity_fp32_floor" in r else ")"
        if "upstream_ort" in r:
            upstream = fmt(r["upstream_ort"]["p50_ms"], ".1f")
        elif "upstream_error" in r:
            upstream = f"export fails: {r['upstream_error']}"
        elif "upstream_skipped" in r:
            upstream = r["upstream_skipped"]
        else:
            upstream = "not run"
        n = f"{o.get(1, e.get(1, {})).get('iterations', '-')}/{o.get(8, e.get(8, {})).get('iterations', '-')}"
        lines.append(
            f"| {r['model']} | {r['input_size'][0]}x{r['input_size'][1]} | {r['params'] / 1e6:.2f} "
            f"| {r['macs'] / 1e9:.2f} | {fmt(r.get('export_s'), '.1f')} | {parity} "
            f"| {fmt(e.get(1, {}).get('p50_ms'), '.1f')} | {fmt(o.get(1, {}).get('p50_ms'), '.1f')} "
            f"| {fmt(d['ort_eager_b1'])} | {fmt(e.get(8, {}).get('per_image_ms'), '.1f')} "
            f"| {fmt(o.get(8, {}).get('per_image_ms'), '.1f')} | {fmt(d['ort_eager_b8'])} | {fmt(d['ort_b8_gain'])} "
            f"| {upstream} | {fmt(d['rewritten_upstream'])} | {n} |"
        )
    notes = [(r["model"], note) for r in rows for note in r["notes"]]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {model}: {note}" for model, note in notes]
    lines += targets_section(rows)
    lines += ["", "Raw numbers (p50/p90/p99/mean/min per row) are in the JSON written with `--json FILE`.", ""]
    return "\n".join(lines)


def target_line(label: str, value: float | None, limit: float, at_most: bool = True) -> str:
    ok = value is not None and (value <= limit if at_most else value >= limit)
    return f"- {label}: **{fmt(value)}** (target {'<=' if at_most else '>='} {limit}): {'met' if ok else 'MISSED'}"


def targets_section(rows: list[dict[str, Any]]) -> list[str]:
    by_name = {r["model"]: r for r in rows}
    row = by_name.get("lite_hrnet_18")
    if row is None:
        return []
    d = derived(row)
    lines = ["", "## Performance targets (256x192)", ""]
    lines.append(target_line("lite_hrnet_18 onnxruntime p50 / eager p50 at batch 1", d["ort_eager_b1"],
                             TARGET_ORT_EAGER))
    lines.append(target_line("lite_hrnet_18 onnxruntime images/s at batch 8 / batch 1", d["ort_b8_gain"],
                             TARGET_BATCH_GAIN, at_most=False))
    lines.append(target_line("lite_hrnet_18 rewritten dynamic-batch / upstream static, onnxruntime batch 1",
                             d["rewritten_upstream"], 1.0))
    dite = by_name.get("dite_hrnet_18")
    if dite is not None:
        lines.append(target_line("dite_hrnet_18 rewritten dynamic-batch / upstream static, onnxruntime batch 1",
                                 derived(dite)["rewritten_upstream"], 1.0))
        both = [r.get("ort", {}).get(1, {}).get("p50_ms") for r in (dite, row)]
        lines.append(target_line("dite_hrnet_18 / lite_hrnet_18 onnxruntime p50 at batch 1 (rows timed one after "
                                 "the other)", ratio(*both), TARGET_DITE_LITE))
    prof = row.get("ort_profile")
    if prof:
        p1, p8 = prof[1], prof[8]
        per8 = {o["op"]: o["ms"] / 8 for o in p8["ops"]}
        lines += [
            "",
            "onnxruntime profile (OrtRunner(profile=True); kernel time only, profiler overhead included): "
            f"{p1['kernel_ms_per_run']:.2f} ms per image at batch 1, {p8['kernel_ms_per_run'] / 8:.2f} ms per "
            "image at batch 8. By op type, sorted by batch-1 time:",
            "",
            "| op | kernels/run | b1 ms/img | share b1 | b8 ms/img | b8/b1 per image |",
            "|---|---|---|---|---|---|",
        ]
        for op in p1["ops"][:12]:
            b8 = per8.get(op["op"])
            lines.append(f"| {op['op']} | {op['kernels']} | {op['ms']:.2f} | {100 * op['share']:.1f}% "
                         f"| {fmt(b8)} | {fmt(ratio(b8, op['ms']))} |")
        lines += ["", "Most expensive nodes at batch 1: " + ", ".join(
            f"{n['node']} ({n['op']}, {n['ms']:.2f} ms)" for n in p1["top_nodes"][:5]) + "."]
        b1 = {o["op"]: o["ms"] for o in p1["ops"]}
        grow = sorted(((op, ms - b1[op]) for op, ms in per8.items() if op in b1 and ms > b1[op]), key=lambda t: -t[1])
        shrink = sum(b1[op] - ms for op, ms in per8.items() if op in b1 and ms < b1[op])
        if grow and (d["ort_b8_gain"] or 0) < TARGET_BATCH_GAIN:
            lines += ["", "Where batching loses: per image, " + ", ".join(
                f"{op} +{extra:.2f} ms ({per8[op] / b1[op]:.2f}x)" for op, extra in grow[:6])
                + f" at batch 8, against {shrink:.2f} ms saved by the ops that do get cheaper (Conv first). "
                "The ops that grow are memory-bound data movement and element-wise work (NCHWc reorders around "
                "the channel-shuffle Transpose/Split/Concat, residual Add, Upsample/Resize); the likely cause is that "
                "at batch 8 the high-resolution activations (branch 0: 40 x 64 x 48 floats, 0.47 MB per image) "
                "no longer fit the per-core L2 cache, so they stream from L3."]
    return lines


def shown_argv(argv: list[str]) -> str:
    """The command line for the header, without the --note text (it is printed in the header anyway)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return "".join(f" {a}" for a in out)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a previous --json, with the batch keys JSON turned into strings made ints again."""
    rows = json.loads(path.read_text())
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    for r in rows:
        for key in ("eager", "ort", "ort_profile"):
            if isinstance(r.get(key), dict):
                r[key] = {int(b): v for b, v in r[key].items()}
        r.setdefault("measured_at", stamp)
    return rows


def main(argv: list[str] | None = None) -> int:
    from hrdeploy.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma list of models [default: the whole zoo]")
    p.add_argument("--quick", action="store_true", help="about 1 s of timed calls per row, at most 5 calls")
    p.add_argument("--row-seconds", type=float, default=4.0, help="timed seconds per row [4]")
    p.add_argument("--max-iterations", type=int, default=30, help="timed calls per row at most [30]")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and onnxruntime threads [all]")
    p.add_argument("--skip-upstream", action="store_true", help="do not export the upstream form")
    p.add_argument("--all-upstream", action="store_true",
                   help="export the upstream form also for models no rewrite applies to")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown output [benchmarks/RESULTS.md]")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--keep", type=Path, help="keep the bundles in this folder")
    p.add_argument("--merge", type=Path,
                   help="a previous --json: its rows for models not measured now are kept in the table")
    p.add_argument("--render-only", action="store_true", help="with --merge: rewrite the table, measure nothing")
    p.add_argument("--note", default="", help="a sentence added to the header (e.g. the machine's load)")
    p.add_argument("--append", type=Path, action="append", default=[],
                   help="a Markdown file appended to the output (hand-measured analyses); repeatable")
    args = p.parse_args(argv)
    if args.quick:
        args.row_seconds, args.max_iterations = 1.0, 5
    zoo = list_models()
    names = [n.strip() for n in args.models.split(",")] if args.models else zoo
    if args.render_only:
        if not args.merge:
            p.error("--render-only needs --merge FILE")
        names = []
    unknown = [n for n in names if n not in zoo]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(zoo)}")

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="hrdeploy-zoo-") as tmp:
        work = args.keep or Path(tmp)
        for name in names:
            try:
                rows.append(bench_model(name, work, args, log))
            except Exception as err:
                traceback.print_exc()
                log(f"{name}: failed: {first_line(err)}")
            if rows and args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
            if args.keep is None:
                import shutil

                for d in (work / name, work / f"{name}.upstream"):
                    shutil.rmtree(d, ignore_errors=True)
    if args.merge:
        previous = {r["model"]: r for r in load_rows(args.merge)}
        measured = {r["model"]: r for r in rows}
        rows = [measured.get(n) or previous[n] for n in zoo if n in measured or n in previous]
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_info(),
        "versions": library_versions(),
        "threads": args.threads,
        "row_seconds": args.row_seconds,
        "max_iterations": args.max_iterations,
        "load_start": None if args.render_only else load_start,
        "load_end": None if args.render_only else ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "note": args.note,
        "argv": shown_argv(argv if argv is not None else sys.argv[1:]),
    }
    text = render(rows, meta)
    if not args.render_only:
        text = text.replace("Raw numbers", f"Total wall time {time.perf_counter() - start:.0f} s. Raw numbers")
    for extra in args.append:
        text += "\n" + extra.read_text()
    tmp_out = args.out.with_suffix(".md.tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, args.out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
