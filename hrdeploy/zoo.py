"""build_model: a registered architecture as an eval-mode eager module, seeded or from a checkpoint."""

from __future__ import annotations

import os

from torch import nn

from hrdeploy.errors import UserError
from hrdeploy.limits import MAX_INPUT_SIDE
from hrdeploy.registry import ModelSpec, get_spec


def check_dataset(spec: ModelSpec, dataset: str | None) -> str:
    dataset = dataset or spec.datasets[0]
    if dataset not in spec.datasets:
        raise UserError(
            f"{spec.name} has no {dataset!r} variant; use --dataset {'|'.join(spec.datasets)}"
        )
    return dataset


def check_input_size(spec: ModelSpec, input_size: tuple[int, int]) -> tuple[int, int]:
    """Validate (h, w) against the network stride; return it as a tuple of ints."""
    h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0 or h % spec.stride or w % spec.stride:
        lo_h, lo_w = max(spec.stride, h // spec.stride * spec.stride), max(spec.stride, w // spec.stride * spec.stride)
        raise UserError(
            f"input size {h}x{w} does not divide by {spec.name}'s stride {spec.stride}; "
            f"use a multiple of {spec.stride}, e.g. {lo_h}x{lo_w}"
        )
    if max(h, w) > MAX_INPUT_SIDE:
        raise UserError(f"input size {h}x{w} is above {MAX_INPUT_SIDE} pixels a side; use a smaller --input-size")
    return h, w


def build_model(
    name: str,
    *,
    dataset: str | None = None,
    input_size: tuple[int, int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
) -> nn.Module:
    """Build `name` in upstream form, in eval mode.

    Without a checkpoint the weights come from a seeded unit-variance initialisation
    (hrdeploy.models.init); with one, it is loaded strictly (hrdeploy.checkpoints).
    `input_size` is only validated here: the networks themselves take any valid size.
    """
    spec = get_spec(name)
    dataset = check_dataset(spec, dataset)
    if input_size is not None:
        check_input_size(spec, input_size)
    model = spec.builder(spec.num_outputs(dataset))
    if checkpoint is None:
        from hrdeploy.models.init import init_weights

        init_weights(model, seed=seed, calib_size=(spec.stride * 4, spec.stride * 4))
    else:
        from hrdeploy.checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint, model_name=name)
    return model.eval()
