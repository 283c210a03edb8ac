"""hrdeploy's bundle vs the upstream-form module exported static batch 1, timed in one process, alternating.

For each model: `hrdeploy export NAME --dynamic-batch` (hrdeploy's graph) and `hrdeploy export NAME
--no-rewrite --batch 1` (`export_bundle(name, rewrite=False, batch=1)`: what a user gets by exporting the
upstream module), both run as commands and timed (the command's wall time, and the export's own phase
profile of wall and CPU time). Then, at 1 and 2 onnxruntime threads, the two
graphs run on the same seeded input in alternation (hrdeploy b1, upstream b1, hrdeploy b8, repeat), once
with onnxruntime's default session options for both and once with the options `hrdeploy bench --tune`
picks for the hrdeploy bundle (again applied to both), so a ratio compares graphs, never settings.
The two graphs' batch-1 outputs are compared too (max rel = max abs difference / max |upstream|).

Writes benchmarks/graph_vs_upstream.md and puts it into benchmarks/RESULTS.md between the
`<!-- bench_graph -->` markers (appended the first time).

    python benchmarks/bench_graph.py                         # the four models, ~25 min on a busy 2-core machine
    python benchmarks/bench_graph.py --models lite_hrnet_18 --rounds 10 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results_md import publish  # noqa: E402 - benchmarks/, on sys.path when run as a script

from hrdeploy.bench.harness import library_versions, machine_info  # noqa: E402
from hrdeploy.bench.tune import tune  # noqa: E402
from hrdeploy.io import write_text  # noqa: E402
from hrdeploy.runtime.onnxruntime import OrtRunner  # noqa: E402
from hrdeploy.runtime.ort_options import OrtSettings  # noqa: E402

MODELS = ("lite_hrnet_18", "lite_hrnet_30", "wider_naive_lite_hrnet_18", "dite_hrnet_18")
TARGET_RATIO = {"lite_hrnet_18": 0.75, "wider_naive_lite_hrnet_18": 0.75, "dite_hrnet_18": 0.80}
TARGET_BATCH_GAIN = ("lite_hrnet_18", 1.2)  # b8 images/s over b1 images/s, one thread
TARGET_EXPORT_S = {"lite_hrnet_18": 20.0, "dite_hrnet_18": 45.0}  # wall seconds of the hrdeploy export


def export_or_reuse(name: str, out: Path, reuse: bool, *flags: str) -> dict[str, Any]:
    """Run `hrdeploy export NAME -o OUT --force FLAGS` as a user does (or, with `reuse`, take the bundle
    already at `out`). `command_s` is the command's wall time (interpreter start and imports included);
    the per-phase wall / CPU times come from the manifest."""
    command_s = None
    if not (reuse and (out / "manifest.json").is_file()):
        cli = Path(sys.executable).with_name("hrdeploy")
        t = time.perf_counter()
        subprocess.run([str(cli), "export", name, "-o", str(out), "--force", *flags], check=True,
                       stdout=subprocess.DEVNULL)
        command_s = time.perf_counter() - t
    manifest = json.loads((out / "manifest.json").read_text())
    parity = json.loads((out / "parity.json").read_text())["export"]
    phases = manifest["export"].get("phases", {})
    return {"path": str(out / "model.onnx"), "command_s": command_s,
            "wall_s": sum(p["wall_s"] for p in phases.values()),
            "cpu_s": sum(p["cpu_s"] for p in phases.values()), "phases": phases, "parity_passed": parity["passed"],
            "parity_max_rel": max(r["max_rel"] for r in parity["rows"]), "nodes": nodes(out / "model.onnx"),
            "graph_passes": manifest["export"].get("graph_passes"), "exporter": manifest["export"].get("exporter")}


def alternate(ours: Path, upstream: Path, settings: OrtSettings, x1: np.ndarray, x8: np.ndarray,
              rounds: int) -> dict[str, Any]:
    """Median ms of hrdeploy b1, upstream b1 and hrdeploy b8, called in turn `rounds` times."""
    a, b = OrtRunner(ours, settings=settings), OrtRunner(upstream, settings=settings)
    for _ in range(2):
        a.run(x1), b.run(x1), a.run(x8)
    t_a, t_b, t_a8 = [], [], []
    for _ in range(rounds):
        for runner, x, times in ((a, x1, t_a), (b, x1, t_b), (a, x8, t_a8)):
            t = time.perf_counter()
            runner.run(x)
            times.append((time.perf_counter() - t) * 1e3)
    out_a, out_b = a.run(x1), b.run(x1)
    rel = max(float(np.abs(out_a[k] - out_b[k]).max() / max(np.abs(out_b[k]).max(), 1e-12)) for k in out_b)
    ours_b1, up_b1, ours_b8 = (statistics.median(t) for t in (t_a, t_b, t_a8))
    return {"ours_b1_ms": ours_b1, "upstream_b1_ms": up_b1, "ours_b8_ms": ours_b8, "ratio": ours_b1 / up_b1,
            "b8_over_b1": (8 / ours_b8) / (1 / ours_b1), "graphs_max_rel": rel}


def op_profile(result: dict[str, Any], runs: int) -> dict[str, Any]:
    """onnxruntime's kernel time per op type (ms per batch-1 run, 1 thread) for both graphs of a model."""
    from hrdeploy.bench.profile import profile_ort

    h, w = result["size"]
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    out = {}
    for key in ("ours", "upstream"):
        prof = profile_ort(result[key]["path"], x, runs=runs, threads=1)
        out[key] = {"total_ms": prof["kernel_ms_per_run"],
                    "ops": {o["op"]: {"ms": o["ms"], "kernels": o.get("kernels")} for o in prof["ops"]}}
    return out


def render_profiles(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        ours, up = prof["ours"], prof["upstream"]
        ops = sorted(set(ours["ops"]) | set(up["ops"]), key=lambda o: -max(ours["ops"].get(o, {"ms": 0})["ms"],
                                                                            up["ops"].get(o, {"ms": 0})["ms"]))
        lines += ["", f"{r['name']}: onnxruntime kernel time per op type, batch 1, 1 thread, default options "
                  f"(profiler on; total {ours['total_ms']:.1f} ms hrdeploy vs {up['total_ms']:.1f} ms upstream, "
                  f"ratio {ours['total_ms'] / up['total_ms']:.2f}):", "",
                  "| op | hrdeploy ms | kernels | upstream ms | kernels |", "|---|---|---|---|---|"]
        for op in ops:
            a, b = ours["ops"].get(op, {"ms": 0.0, "kernels": 0}), up["ops"].get(op, {"ms": 0.0, "kernels": 0})
            if max(a["ms"], b["ms"]) >= 0.01 * up["total_ms"]:
                lines.append(f"| {op} | {a['ms']:.2f} | {a['kernels'] or 0} | {b['ms']:.2f} | {b['kernels'] or 0} |")
    return lines


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def bench_model(
    name: str, work: Path, rounds: int, threads: tuple[int, ...], tune_rounds: int, reuse: bool
) -> dict[str, Any]:
    from hrdeploy.registry import get_spec

    spec = get_spec(name)
    h, w = spec.input_size(spec.datasets[0])
    ours = export_or_reuse(name, work / name / "hrdeploy", reuse, "--dynamic-batch")
    upstream = export_or_reuse(name, work / name / "upstream", reuse, "--no-rewrite", "--batch", "1")
    rng = np.random.default_rng(0)
    x8 = rng.standard_normal((8, 3, h, w), dtype=np.float32)
    x1 = x8[:1].copy()
    rows = []
    for t in threads:
        tuned = tune(ours["path"], (1, 3, h, w), (t,), rounds=tune_rounds, memory=False)["chosen"]
        for label, settings in (("defaults", OrtSettings(threads=t)), ("tuned", OrtSettings.from_dict(tuned))):
            load = loadavg()
            row = alternate(ours["path"], upstream["path"], settings, x1, x8, rounds)
            rows.append({"threads": t, "options": label, "settings": settings.label(), "load": load, **row})
            print(f"{name} t={t} {label}: {row['ours_b1_ms']:.1f} vs {row['upstream_b1_ms']:.1f} ms "
                  f"(ratio {row['ratio']:.2f}), b8/b1 {row['b8_over_b1']:.2f}, load {load}", flush=True)
    return {"name": name, "size": [h, w], "ours": ours, "upstream": upstream, "rows": rows,
            "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(os.fspath(path), load_external_data=False).graph.node)


def render(results: list[dict[str, Any]], command: str) -> str:
    m, v = machine_info(), library_versions()
    rounds = sorted({r["rounds"] for r in results})
    when = ", ".join(f"{r['name']} {r['measured']}" for r in results)
    lines = [
        "## hrdeploy bundle vs upstream-form static export (bench_graph.py)",
        "",
        f"Generated by `{command}`. {m['cpu']}, {m['cores']} cores usable, onnxruntime {v.get('onnxruntime')} CPU, "
        f"torch {v.get('torch')}. Measured: {when}. Seeded weights, each model's default input size. Per row, "
        f"{'/'.join(map(str, rounds))} rounds of "
        "alternating calls (hrdeploy b1, upstream b1, hrdeploy b8) in one process after 2 warm-up rounds; "
        "medians. `defaults` = onnxruntime's session options for both graphs (threads as given); `tuned` = "
        "the options `hrdeploy bench --tune` chose for the hrdeploy bundle, applied to both. The machine is "
        "shared with other work: the `load` column is the 1/5/15-minute load average when the row started, on "
        "2 cores, so absolute times are inflated and noisy; only the ratios of alternating calls are comparable.",
        "",
        "| model | threads | options | hrdeploy b1 ms | upstream b1 ms | ratio | hrdeploy b8 ms/img | b8/b1 img/s "
        "| outputs max rel | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            lines.append(
                f"| {r['name']} | {row['threads']} | {row['options']} ({row['settings']}) | {row['ours_b1_ms']:.1f} "
                f"| {row['upstream_b1_ms']:.1f} | {row['ratio']:.2f} | {row['ours_b8_ms'] / 8:.1f} "
                f"| {row['b8_over_b1']:.2f} | {row['graphs_max_rel']:.1e} | {row['load']} |")
    lines += ["", "Exports: `command s` is the wall time of the `hrdeploy export` command (interpreter start and "
              "imports included); `wall s` / `CPU s` sum the export's phases (parity included; CPU is what the "
              "export costs, wall adds the time other processes held the cores):", "",
              "| model | graph | exporter | nodes | command s | wall s | CPU s | parity max rel "
              "| export phases, CPU s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key, label in (("ours", "hrdeploy (dynamic batch)"), ("upstream", "upstream form, static b1")):
            e = r[key]
            phases = ", ".join(f"{k} {p['cpu_s']:.1f}" for k, p in e["phases"].items())
            command = "-" if e.get("command_s") is None else f"{e['command_s']:.1f}"
            lines.append(f"| {r['name']} | {label} | {e.get('exporter', '?')} | {e['nodes']} | {command} "
                         f"| {e['wall_s']:.1f} | {e['cpu_s']:.1f} "
                         f"| {'pass' if e['parity_passed'] else 'FAIL'} ({e['parity_max_rel']:.1e}) | {phases} |")
    lines += render_profiles(results)
    lines += ["", "Targets (threads 1, `defaults` rows):", ""]
    for r in results:
        one = next((row for row in r["rows"] if row["threads"] == 1 and row["options"] == "defaults"), None)
        if one is None:
            continue
        if r["name"] in TARGET_RATIO:
            goal = TARGET_RATIO[r["name"]]
            lines.append(f"- {r['name']} hrdeploy / upstream at batch 1: **{one['ratio']:.2f}** (target <= {goal}): "
                         f"{'met' if one['ratio'] <= goal else 'MISSED'}")
        if r["name"] in TARGET_EXPORT_S:
            goal, wall = TARGET_EXPORT_S[r["name"]], r["ours"].get("command_s") or r["ours"]["wall_s"]
            lines.append(f"- {r['name']} `hrdeploy export` wall time: **{wall:.1f} s** (target <= {goal:.0f} s): "
                         f"{'met' if wall <= goal else 'MISSED'}")
        if r["name"] == TARGET_BATCH_GAIN[0]:
            goal = TARGET_BATCH_GAIN[1]
            lines.append(f"- {r['name']} b8/b1 images/s: **{one['b8_over_b1']:.2f}** (target >= {goal}): "
                         f"{'met' if one['b8_over_b1'] >= goal else 'MISSED'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds per row")
    ap.add_argument("--tune-rounds", type=int, default=8, help="alternating rounds of the session-option tuning")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--work", type=Path, default=Path("out/bench_graph"),
                    help="bundles and one MODEL.json of results per model go here")
    ap.add_argument("--reuse", action="store_true", help="take bundles already exported into --work")
    ap.add_argument("--render-only", action="store_true", help="only merge the MODEL.json files into the table")
    ap.add_argument("--profile", type=int, default=0, metavar="RUNS",
                    help="add onnxruntime's per-op profile of both graphs (RUNS profiled runs) to each MODEL.json")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if not args.render_only:
        threads = tuple(int(t) for t in args.threads.split(","))
        for name in models:
            result = bench_model(name, args.work, args.rounds, threads, args.tune_rounds, args.reuse)
            result["rounds"] = args.rounds
            write_text(args.work / f"{name}.json", json.dumps(result, indent=1))
    results = [json.loads((args.work / f"{n}.json").read_text()) for n in models if (args.work / f"{n}.json").is_file()]
    if args.profile:
        for r in results:
            r["profile"] = op_profile(r, args.profile)
            write_text(args.work / f"{r['name']}.json", json.dumps(r, indent=1))
    command = "python benchmarks/bench_graph.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command.strip())
    print(section)
    if not args.no_write:
        publish(section, HERE / "graph_vs_upstream.md", HERE / "RESULTS.md", "bench_graph")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
