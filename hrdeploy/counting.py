"""Parameter and MAC counts, measured the way the issue tracker's published facts were.

Params: sum(p.numel() for p in model.parameters()). MACs: torch.utils.flop_counter.FlopCounterMode
total FLOPs / 2 (it counts Conv, ConvTranspose, Linear and MatMul), batch 1, on the meta device so
that no real arithmetic runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hrdeploy.registry import get_spec
from hrdeploy.zoo import check_dataset, check_input_size


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int], device: str = "meta") -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2)."""
    model = model.to(device).eval()
    x = torch.empty((1, 3, *input_size), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def count_model(name: str, dataset: str | None = None, input_size: tuple[int, int] | None = None) -> dict:
    """{'params', 'macs', 'input_size'} of registered model `name`, without real compute."""
    spec = get_spec(name)
    dataset = check_dataset(spec, dataset)
    size = check_input_size(spec, input_size or spec.input_size(dataset))
    with torch.device("meta"):
        model = spec.builder(spec.num_outputs(dataset))
    return {"params": count_params(model), "macs": count_macs(model, size), "input_size": list(size)}
