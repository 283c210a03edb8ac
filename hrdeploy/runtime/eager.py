"""Eager PyTorch runner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class EagerRunner:
    """Runs a torch model on float32 numpy input; `dtype=torch.float64` runs it (a model already converted
    with `.double()`) in double precision, e.g. as the exact reference of an fp32 noise floor."""

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
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dtype))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().numpy() for n, o in zip(self.output_names, outs, strict=True)}
