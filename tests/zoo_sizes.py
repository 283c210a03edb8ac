"""Input sizes at which zoo models run cheaply in tests."""

from __future__ import annotations

from hrdeploy.registry import get_spec


def small_input(name: str) -> tuple[int, int]:
    """The smallest input at which every branch has at least 2x2 pixels (2 x the network stride)."""
    spec = get_spec(name)
    h, w = spec.default_input_size
    scale = 2 * spec.stride / min(h, w)
    return round(h * scale / spec.stride) * spec.stride, round(w * scale / spec.stride) * spec.stride
