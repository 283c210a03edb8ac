"""Eager PyTorch runner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hrdeploy.runtime.base import RunnerBase


class EagerRunner(RunnerBase):
    """Runs a torch model on float32 numpy input; `dtype=torch.float64` runs it (a model already converted
    with `.double()`) in double precision, e.g. as the exact reference of an fp32 noise floor.

    `threads` limits torch's intra-op threads during each run() only; the process-wide setting is restored
    afterwards, so other runners and the caller keep theirs."""

    name = "eager"

    def __init__(
        self,
        model: nn.Module,
        output_names: Sequence[str],
        threads: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model.eval()
        self.output_names = list(output_names)
        self.dtype = dtype
        self.threads = threads

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dtype))
        finally:
            if self.threads:
                torch.set_num_threads(before)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
