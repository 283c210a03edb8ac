"""Wall and CPU time per export phase, recorded in the manifest so a slow export shows where it went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    """Accumulates wall and process-CPU seconds per named phase (a phase may run more than once).

    CPU time is reported next to wall time because on a shared machine wall time also counts the time
    other processes held the cores; CPU time is what the export itself costs.
    """

    def __init__(self) -> None:
        self._wall: dict[str, float] = {}
        self._cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._wall[name] = self._wall.get(name, 0.0) + time.perf_counter() - wall
            self._cpu[name] = self._cpu.get(name, 0.0) + time.process_time() - cpu

    def to_dict(self) -> dict[str, dict[str, float]]:
        """{phase: {"wall_s", "cpu_s"}} in the order the phases first ran."""
        return {k: {"wall_s": round(self._wall[k], 2), "cpu_s": round(self._cpu[k], 2)} for k in self._wall}
