"""Eager PyTorch runner."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from hrdeploy.runtime.base import RunnerBase


class EagerRunner(RunnerBase):
    """Runs a torch model (or the model a zero-argument builder returns, built on activate()) on float32 numpy
    input. `dtype=torch.float64` runs a float64 copy of it, e.g. as the exact reference of an fp32 noise floor.

    `threads` limits torch's intra-op threads during each run() only; the process-wide setting is restored
    afterwards, so other runners and the caller keep theirs."""

    name = "eager"

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        output_names: Sequence[str],
        threads: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.source = model
        self.model: nn.Module | None = None
        self.output_names = list(output_names)
        self.dtype = dtype
        self.threads = threads

    def _activate(self) -> None:
        model = self.source if isinstance(self.source, nn.Module) else self.source()
        self.model = (copy.deepcopy(model).double() if self.dtype == torch.float64 else model).eval()

    def _deactivate(self) -> None:
        self.model = None

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        model = self.activate().model
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dtype))
        finally:
            if self.threads:
                torch.set_num_threads(before)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().numpy() for n, o in zip(self.output_names, outs, strict=True)}
