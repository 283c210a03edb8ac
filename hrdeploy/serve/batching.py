"""Triton batching settings for an artifact: max batch size and preferred batch sizes.

Shared by the model repository writer and the PyTriton server, so both batch an artifact the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrdeploy.errors import UserError
from hrdeploy.serve.spec import ServeSpec

DEFAULT_MAX_BATCH = 8  # for artifacts whose batch axis has no upper bound (dynamic-batch ONNX)
DEFAULT_MAX_BOXES = 32  # keypoint pipeline: people per request; each request's crops reach the network as one batch
DEFAULT_PIPELINE_INSTANCES = 4  # `serve --pipeline`: requests decoded, cropped and in flight to the network at once


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


def plan_pipeline_batching(spec: ServeSpec, max_batch: int | None, max_boxes: int | None,
                           max_queue_delay_us: int) -> tuple[Batching, int]:
    """The network's batching behind the keypoint pipeline, and the most boxes a request may carry.

    Each request's crops reach the network as one batch, so the network batches dynamically and its max batch
    holds `max_boxes` crops. Defaults: the max batch is the artifact's max (an engine profile's), else
    `--max-batch`, else max(`max_boxes`, 8); `max_boxes` is DEFAULT_MAX_BOXES, or the max batch when smaller.
    A `max_boxes` over the max batch is a UserError.
    """
    if spec.batch_range is None:
        raise UserError(f"{spec.key} of {spec.bundle} has a static batch of {spec.static_batch}, but the keypoint "
                        "pipeline sends each photo's crops as one batch; re-export with --dynamic-batch")
    if max_boxes is not None and max_boxes < 1:
        raise UserError(f"--max-boxes {max_boxes}: give 1 or more")
    hi = spec.batch_range[1]
    if max_batch is None:
        max_batch = hi if hi is not None else max(max_boxes or DEFAULT_MAX_BOXES, DEFAULT_MAX_BATCH)
    batching = plan_batching(spec, max_batch, max_queue_delay_us)
    if max_boxes is None:
        max_boxes = min(DEFAULT_MAX_BOXES, batching.max_batch_size)
    if max_boxes > batching.max_batch_size:
        raise UserError(f"--max-boxes {max_boxes} is over the network's max batch {batching.max_batch_size}; "
                        f"a photo's crops go to the network as one batch, so use --max-boxes "
                        f"{batching.max_batch_size} or a larger --max-batch (engines: rebuild with --max-batch)")
    return batching, max_boxes
