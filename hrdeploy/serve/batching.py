"""Triton batching settings for an artifact: max batch size and preferred batch sizes.

Shared by the model repository writer and the PyTriton server, so both batch an artifact the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrdeploy.errors import UserError
from hrdeploy.serve.spec import ServeSpec

DEFAULT_MAX_BATCH = 8  # for artifacts whose batch axis has no upper bound (dynamic-batch ONNX)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int  # Triton's max_batch_size; 0 = the model takes whole fixed-shape tensors, no batcher
    preferred: tuple[int, ...]
    max_queue_delay_us: int


def preferred_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two from 2 up to `max_batch`, and `max_batch` itself."""
    sizes = {b for b in (2**i for i in range(1, max_batch.bit_length())) if b <= max_batch}
    if max_batch > 1:
        sizes.add(max_batch)
    return tuple(sorted(sizes))


def plan_batching(spec: ServeSpec, max_batch: int | None, max_queue_delay_us: int) -> Batching:
    """Triton's batching for `spec`: the artifact's batch range bounds `max_batch` [default: its max, else 8]."""
    if max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us {max_queue_delay_us}: give 0 or more microseconds")
    if spec.batch_range is None:
        if max_batch is not None:
            raise UserError(f"{spec.key} of {spec.bundle} has a static batch of {spec.static_batch}, so Triton cannot "
                            "batch requests for it; drop --max-batch, or re-export with --dynamic-batch "
                            "(and rebuild the engine with --max-batch) to batch on the server")
        return Batching(0, (), max_queue_delay_us)
    lo, hi = spec.batch_range
    if lo > 1:
        raise UserError(f"{spec.key} of {spec.bundle} accepts batches from {lo}, but Triton sends batches from 1; "
                        "rebuild the engine with --min-batch 1")
    if max_batch is None:
        max_batch = hi if hi is not None else DEFAULT_MAX_BATCH
    if max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: give 1 or more")
    if hi is not None and max_batch > hi:
        raise UserError(f"--max-batch {max_batch} is over the {spec.key} profile's max batch {hi}; "
                        f"use --max-batch {hi} or rebuild the engine with --max-batch {max_batch}")
    return Batching(max_batch, preferred_batch_sizes(max_batch), max_queue_delay_us)
