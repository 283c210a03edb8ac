"""Parameter and MAC counts, measured the way the issue tracker's published facts were.

Params: sum(p.numel() for p in model.parameters()). MACs: torch.utils.flop_counter.FlopCounterMode
total FLOPs / 2 (it counts Conv, ConvTranspose, Linear and MatMul), batch 1, on the meta device so
that no real arithmetic runs.

`zoo_rows()` counts every registered model (tens of seconds); its result is checked in as
hrdeploy/zoo_table.json, which `hrdeploy list` reads (`cached_zoo_rows`). Regenerate it after changing a
network or a ModelSpec with `python -m hrdeploy.counting`; tests compare it with a fresh count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

TABLE = Path(__file__).with_name("zoo_table.json")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int], device: str = "meta") -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to(device).eval()
    x = torch.empty((1, 3, *input_size), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def count_model(name: str, dataset: str | None = None, input_size: tuple[int, int] | None = None) -> dict:
    """{'params', 'macs', 'input_size'} of registered model `name`, without real compute."""
    import torch

    from hrdeploy.registry import get_spec
    from hrdeploy.zoo import check_dataset, check_input_size

    spec = get_spec(name)
    dataset = check_dataset(spec, dataset)
    size = check_input_size(spec, input_size or spec.input_size(dataset))
    with torch.device("meta"):
        model = spec.builder(spec.num_outputs(dataset))
    return {"params": count_params(model), "macs": count_macs(model, size), "input_size": list(size)}


def zoo_row(name: str) -> dict[str, Any]:
    """The `hrdeploy list` row of `name`: spec facts, measured counts, the matching published figures."""
    from hrdeploy.registry import get_spec

    spec = get_spec(name)
    counts = count_model(name)
    size = tuple(counts["input_size"])
    # The published row at our default input, else the first one (its input is reported with it).
    fallback = spec.published[0] if spec.published else None
    published = next((p for p in spec.published if p.input_size == size), fallback)
    return {
        "name": name, "family": spec.family, "task": spec.task, "datasets": list(spec.datasets), **counts,
        "published_input_size": list(published.input_size) if published else None,
        "published_params": published.params if published else None,
        "published_macs": published.macs if published else None,
        "published_metric": published.metric if published else None,
        "published_source": published.source if published else None,
    }


def zoo_rows() -> list[dict[str, Any]]:
    """One row per registered model (builds every network on the meta device)."""
    from hrdeploy.registry import list_models

    return [zoo_row(name) for name in list_models()]


def cached_zoo_rows() -> list[dict[str, Any]]:
    """The rows of the checked-in table (fresh counts when the table is absent)."""
    if TABLE.is_file():
        return json.loads(TABLE.read_text())
    return zoo_rows()


if __name__ == "__main__":
    from hrdeploy.io import write_json

    write_json(TABLE, zoo_rows())
    print(f"wrote {TABLE}")
