"""The torch intra-op thread count used while exporting, set for the export only and then restored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# The export's eager work (seeded init, parity references) is many small ops and the rest is Python
# (tracing, graph passes): one thread is as fast as several on an idle machine, and on a loaded one a
# multi-threaded torch waits at every op for a descheduled worker (lite_hrnet_18 forward 0.1 s -> 5 s).
EXPORT_TORCH_THREADS = 1


@contextmanager
def torch_threads(n: int = EXPORT_TORCH_THREADS) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, restoring the caller's setting afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
