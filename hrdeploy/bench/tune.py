"""`hrdeploy bench --tune`: measure onnxruntime session settings on a bundle's ONNX and record the fastest.

Latency: every candidate session is opened in this process and timed in alternation (one call each per
round), so all see the same machine load; the p50 of the rounds decides. Memory: each candidate's peak
resident set size is measured in a fresh subprocess (the peak is per process), as the growth over the
resident size before the session was created (Linux /proc).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hrdeploy.runtime.ort_options import OrtSettings


def candidates(threads: tuple[int, ...]) -> list[OrtSettings]:
    """Buffer reuse on/off x graph level extended/all (all = NCHWc layouts) x the thread counts."""
    return [OrtSettings(t, reuse, level)
            for t, reuse, level in itertools.product(threads, (True, False), ("extended", "all"))]


def time_alternating(
    path: str | os.PathLike, settings: list[OrtSettings], x: np.ndarray, rounds: int, warmup: int = 2
) -> list[list[float]]:
    """Per candidate, `rounds` call times in ms, the candidates called in turn within each round."""
    from hrdeploy.runtime.onnxruntime import OrtRunner

    runners = [OrtRunner(path, settings=s) for s in settings]
    for r in runners:
        for _ in range(warmup):
            r.run(x)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, r in enumerate(runners):
            t = time.perf_counter()
            r.run(x)
            times[i].append((time.perf_counter() - t) * 1e3)
    return times


def peak_rss_mb(path: str | os.PathLike, settings: OrtSettings, shape: tuple[int, ...], calls: int = 3) -> float:
    """Peak RSS growth (MB) of a fresh process that opens a session with `settings` and runs `calls` calls."""
    args = json.dumps({"path": os.fspath(path), "settings": settings.to_dict(), "shape": list(shape), "calls": calls})
    proc = subprocess.run([sys.executable, "-m", "hrdeploy.bench.tune", args], capture_output=True, text=True,
                          timeout=600, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_growth_mb"])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _probe(args: dict[str, Any]) -> dict[str, float]:
    """Peak RSS over the resident size before the session (Linux: VmHWM reset through clear_refs)."""
    from hrdeploy.runtime.onnxruntime import OrtRunner

    x = np.random.default_rng(0).standard_normal(args["shape"], dtype=np.float32)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    runner = OrtRunner(args["path"], settings=OrtSettings.from_dict(args["settings"]))
    for _ in range(args["calls"]):
        runner.run(x)
    return {"peak_rss_growth_mb": round((_status_kb("VmHWM") - before) / 1024, 1)}


def tune(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    threads: tuple[int, ...] = (1,),
    rounds: int = 15,
    memory: bool = True,
) -> dict[str, Any]:
    """Measure every candidate on input `shape`; returns {"chosen": settings dict, "candidates": rows}."""
    settings = candidates(threads)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    times = time_alternating(path, settings, x, rounds)
    rows = []
    for s, t in zip(settings, times, strict=True):
        row = {**s.to_dict(), "p50_ms": round(statistics.median(t), 3), "min_ms": round(min(t), 3)}
        if memory:
            row["peak_rss_growth_mb"] = peak_rss_mb(path, s, shape)
        rows.append(row)
    best = min(rows, key=lambda r: r["p50_ms"])
    return {"chosen": OrtSettings.from_dict(best).to_dict(), "input_shape": list(shape), "rounds": rounds,
            "candidates": rows}


def manifest_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `runtime.onnxruntime` entry: the chosen settings and the measurements behind them."""
    return {**result["chosen"], "tuning": {k: v for k, v in result.items() if k != "chosen"}}


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
