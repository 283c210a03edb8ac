"""The Runner protocol shared by every backend."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str  # backend name: "eager", "ort", "trt"
    output_names: list[str]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; return float32 outputs by name, in output_names order."""
        ...
