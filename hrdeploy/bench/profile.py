"""Where an onnxruntime session spends its time: per op type and per node, from ORT's own profiler.

onnxruntime writes a Chrome-trace JSON when `SessionOptions.enable_profiling` is set
(OrtRunner(profile=True)); each "Node" event has `dur` (us), `name` ("<node>_kernel_time") and
`args.op_name`. Summing the kernel times of the timed runs gives the op-type breakdown.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def summarize_profile(events: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Op-type and node totals (ms per run) from ORT profile events; the first run is taken as warm-up."""
    run_starts = [e["ts"] for e in events if e.get("name") == "model_run"]
    cutoff = sorted(run_starts)[1] if len(run_starts) > 1 else -1
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, tuple[str, float]] = {}
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e.get("ts", 0) < cutoff:
            continue
        op = e.get("args", {}).get("op_name", "?")
        node = e["name"][: -len("_kernel_time")]
        by_op[op] += e["dur"] / 1e3
        count[op] += 1
        by_node[node] = (op, by_node.get(node, (op, 0.0))[1] + e["dur"] / 1e3)
    timed = max(runs, 1)
    total = sum(by_op.values()) / timed
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    nodes = sorted(by_node.items(), key=lambda kv: -kv[1][1])
    return {
        "kernel_ms_per_run": total,
        "ops": [{"op": op, "ms": ms / timed, "share": ms / timed / total if total else 0.0,
                 "kernels": count[op] // timed} for op, ms in ops],
        "top_nodes": [{"node": n, "op": op, "ms": ms / timed} for n, (op, ms) in nodes[:10]],
    }


def profile_ort(onnx_path: str | os.PathLike, x: np.ndarray, runs: int = 5, threads: int | None = None) -> dict:
    """Run `onnx_path` once to warm up and `runs` times profiled; return summarize_profile's breakdown."""
    from hrdeploy.runtime.onnxruntime import OrtRunner

    runner = OrtRunner(onnx_path, threads=threads, profile=True)
    for _ in range(runs + 1):
        runner.run(x)
    trace = Path(runner.session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    return summarize_profile(events, runs)
