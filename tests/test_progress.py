"""Step lines: plain timestamped lines in logs, a spinner plus the same lines on a terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console

from hrdeploy.progress import steps


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with steps(Console(file=out, force_terminal=False, width=120), "export m") as step:
        step("building m")
        step("simplifying (onnxsim)")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r"\[export m \d+\.\ds\] .+", ln) for ln in lines)
    assert lines[1].endswith("simplifying (onnxsim)")  # markup-like text is printed as it is


def test_terminal_shows_every_step() -> None:
    out = io.StringIO()
    with steps(Console(file=out, force_terminal=True, width=120), "export m") as step:
        step("building m")
        step("parity: onnxruntime vs eager")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "export m: building m" in text and "export m: parity: onnxruntime vs eager" in text
