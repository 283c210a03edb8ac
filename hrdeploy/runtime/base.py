"""The Runner protocol shared by every backend, and the lifecycle base the runners derive from."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str  # backend name: "eager", "ort", "trt"
    output_names: list[str]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; return float32 outputs by name, in output_names order."""
        ...

    def close(self) -> None:
        """Release the session, engine or model; the runner is unusable afterwards."""
        ...


class RunnerBase:
    """close() plus the context-manager protocol: `with artifact.open_runner() as r: r.run(x)`."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
