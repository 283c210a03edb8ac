"""Step lines for long commands: a rich status line on a terminal, plain timestamped lines in logs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

Step = Callable[[str], None]


@contextlib.contextmanager
def steps(console, prefix: str) -> Iterator[Step]:  # noqa: ANN001 - rich Console
    """Yield `step(text)`: one line per step, under a spinner on a terminal and as plain timestamped lines
    (`[export 12.3s] simplifying ...`) otherwise, so CI logs show where a long command is."""
    start = time.perf_counter()
    if console.is_terminal:
        with console.status(f"{prefix} ...") as status:
            def tty_step(text: str) -> None:
                console.print(f"[dim]{prefix}:[/] {text}", highlight=False)
                status.update(f"{prefix}: {text} ({time.perf_counter() - start:.0f} s)")

            yield tty_step
        return

    def plain_step(text: str) -> None:
        console.print(f"[{prefix} {time.perf_counter() - start:.1f}s] {text}", highlight=False, markup=False)
        console.file.flush()

    yield plain_step
