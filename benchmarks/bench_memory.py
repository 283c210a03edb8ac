"""Peak memory of each onnxruntime session choice `hrdeploy bench --tune` considers, on the largest models.

Turning buffer reuse off (SessionOptions.enable_mem_reuse) makes the small Lite-HRNet graphs faster, but
every intermediate then keeps its own buffer; this measures what that costs where activations are big.
For each model: export a static batch-1 bundle at its default size, then for every candidate setting
(hrdeploy.bench.tune.candidates) open a session in a fresh process, run it, and record the peak resident
set growth (hrdeploy.bench.tune.peak_rss_mb). Writes benchmarks/memory_measured.md and puts it into
benchmarks/RESULTS.md between the `<!-- bench_memory -->` markers.

    python benchmarks/bench_memory.py                                  # the three largest models
    python benchmarks/bench_memory.py --models lite_hrnet_18 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results_md import publish  # noqa: E402 - benchmarks/, on sys.path when run as a script

from hrdeploy.bench.harness import library_versions, machine_info  # noqa: E402
from hrdeploy.bench.tune import candidates, peak_rss_mb  # noqa: E402
from hrdeploy.bundle import Bundle  # noqa: E402
from hrdeploy.export import export_bundle  # noqa: E402

MODELS = ("hrnetv2_w48", "higher_hrnet_w48", "hrnet_w48", "lite_hrnet_18")


def measure(name: str, work: Path, threads: int, reuse: bool) -> dict[str, Any]:
    """Peak RSS growth per candidate setting for one model's batch-1 ONNX."""
    out = work / name
    if not (reuse and (out / "manifest.json").is_file()):
        export_bundle(name, out, force=True, batch=1)
    h, w = Bundle.open(out).input.size
    shape = (1, 3, int(h), int(w))
    rows = [{**s.to_dict(), "peak_rss_growth_mb": peak_rss_mb(out / "model.onnx", s, shape)}
            for s in candidates((threads,))]
    return {"name": name, "input": f"{h}x{w}", "onnx_mb": round((out / "model.onnx").stat().st_size / 1e6, 1),
            "rows": rows}


def render(results: list[dict[str, Any]], command: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = library_versions()
    lines = [
        f"## Peak memory of the onnxruntime session choices ({stamp})", "",
        f"Measured by `{command}` on {machine_info()['cpu']}, onnxruntime {versions.get('onnxruntime')}. Each "
        "cell is the peak resident set growth of a fresh process that opens the session and runs 3 calls at "
        "batch 1 (weights, activations and onnxruntime's arenas; Linux VmHWM). `reuse off` is "
        "`SessionOptions.enable_mem_reuse = False`; `extended` skips the NCHWc layout transformer that `all` runs.",
        "",
        "| model | input | ONNX MB | reuse on, all | reuse off, all | reuse on, extended | reuse off, extended "
        "| cost of reuse off (all) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cell = {(row["mem_reuse"], row["graph_optimization"]): row["peak_rss_growth_mb"] for row in r["rows"]}
        on, off = cell[(True, "all")], cell[(False, "all")]
        lines.append(
            f"| {r['name']} | {r['input']} | {r['onnx_mb']} | {on:.0f} MB | {off:.0f} MB | "
            f"{cell[(True, 'extended')]:.0f} MB | {cell[(False, 'extended')]:.0f} MB | "
            f"{off - on:+.0f} MB ({off / on:.2f}x) |")
    cells = [{(row["mem_reuse"], row["graph_optimization"]): row["peak_rss_growth_mb"] for row in r["rows"]}
             for r in results]
    reuse_cost = max((c[(False, "all")] - c[(True, "all")], r["name"]) for c, r in zip(cells, results, strict=True))
    nchwc_cost = max((c[(True, "all")] - c[(True, "extended")], r["name"]) for c, r in zip(cells, results, strict=True))
    lines += ["", f"Largest peak growth from turning buffer reuse off: {reuse_cost[0]:+.0f} MB ({reuse_cost[1]}); "
              f"largest from the NCHWc transformer (`all` over `extended`, reuse on): {nchwc_cost[0]:+.0f} MB "
              f"({nchwc_cost[1]})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("out/bench_memory"))
    ap.add_argument("--reuse", action="store_true", help="take bundles already exported into --work")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    results = [measure(name, args.work, args.threads, args.reuse) for name in args.models.split(",")]
    command = "python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command.strip())
    print(section)
    if not args.no_write:
        publish(section, HERE / "memory_measured.md", HERE / "RESULTS.md", "bench_memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
