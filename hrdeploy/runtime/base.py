"""The Runner protocol shared by every backend, and the lifecycle base the runners derive from."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str  # backend name: "eager", "ort", "trt"
    output_names: list[str]

    def activate(self) -> Any:
        """Load the session, engine or model (once); returns the runner."""
        ...

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; return float32 outputs by name, in output_names order."""
        ...

    def close(self) -> None:
        """Release the session, engine or model; activate() loads it again."""
        ...


class RunnerBase:
    """The lifecycle of a runner, as Polygraphy's: nothing heavy is loaded until activate() (called by
    `with open_runner(...) as r:` and by the first run()), and close() releases it.

    Subclasses put the loading in `_activate()` and the release in `_deactivate()`."""

    active = False

    def activate(self) -> Any:
        if not self.active:
            self._activate()
            self.active = True
        return self

    def close(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()
