"""Latency harness: warm up, time each call with a monotonic clock, summarise as percentiles.

The summary is trtexec's (min / mean / median / p90 / p99 and throughput); MMDeploy's
tools/profiler.py reports only mean/median/min/max and FPS. Each timed call is one full
`runner.run(batch)`, host<->runtime copies included, as an application would see it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms")


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean/min/max/std in ms of per-call times, throughput in images/s, p50 per image."""
    if not len(seconds):
        raise ValueError("no timings to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "throughput_ips": batch * 1e3 / mean,
        "per_image_ms": p50 / batch,
        "iterations": len(ms),
    }


def time_calls(
    fn: Callable[[], Any],
    iterations: int,
    warmup: int = 2,
    on_step: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Call `fn` `warmup` times untimed, then `iterations` times timed; return the seconds of each call."""
    if iterations < 1 or warmup < 0:
        raise ValueError("iterations must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
        if on_step:
            on_step()
    times = []
    for _ in range(iterations):
        t0 = clock()
        fn()
        times.append(clock() - t0)
        if on_step:
            on_step()
    return times


def bench_runner(
    runner: Any,
    x: np.ndarray,
    iterations: int,
    warmup: int = 2,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Latency statistics of `runner.run(x)` (x: one NCHW batch)."""
    times = time_calls(lambda: runner.run(x), iterations, warmup, on_step)
    return latency_stats(times, int(x.shape[0]))


def bench_input(batch: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A seeded standard-normal NCHW float32 batch (the input does not change the timing of these nets)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, *size), dtype=np.float32)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_caches() -> str:
    """Per-core cache sizes of CPU 0 from sysfs, e.g. 'L1d 48K, L1i 64K, L2 2048K, L3 491520K' ('' if unknown)."""
    out = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out.append(f"L{level}{suffix} {size}")
    return ", ".join(out)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: CPU model, caches, logical cores usable, OS, Python."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_name(),
        "caches": cpu_caches(),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    """Versions of what was measured (only libraries that are installed; none imported needlessly)."""
    from importlib import metadata

    out = {}
    for dist in ("hrdeploy", "torch", "onnx", "onnxruntime", "tensorrt", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
