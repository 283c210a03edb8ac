"""The README's Python examples on the bundle run as written (on a seeded lite_hrnet_18 bundle at out/l18)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def bundle_examples() -> list[str]:
    """The ```python blocks of the README that open the bundle at out/l18 or use the one opened before."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [code for code in blocks if "out/l18" in code or "Comparator" in code]


def test_the_readme_bundle_examples_run(lite18_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = bundle_examples()
    assert len(examples) == 3, "the README's bundle, manifest and comparator examples"
    shutil.copytree(lite18_bundle, tmp_path / "out" / "l18")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"x": np.zeros((2, 3, 128, 96), np.float32)}
    for code in examples:
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["heatmaps"].shape == (2, 17, 32, 24)
    rows = namespace["rows"]
    assert rows and all(row["passed"] for row in rows)
    assert {(row["iteration"], row["output"]) for row in rows} == {(0, "heatmaps"), (1, "heatmaps")}
