"""onnxruntime session settings of a bundle: what `hrdeploy bench --tune` measured best, read by OrtRunner.

Stored in the manifest under `runtime.onnxruntime` as {"threads", "mem_reuse", "graph_optimization"} plus the
measurements that chose them, so every stage that opens the bundle's ONNX runs it the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GRAPH_LEVELS = ("disable", "basic", "extended", "all")  # "all" adds the NCHWc layout transformer
MANIFEST_SECTION = ("runtime", "onnxruntime")


@dataclass(frozen=True)
class OrtSettings:
    """Session options. `threads` None = onnxruntime's default (one per physical core); `mem_reuse` is
    SessionOptions.enable_mem_reuse (the allocation planner's buffer reuse)."""

    threads: int | None = None
    mem_reuse: bool = True
    graph_optimization: str = "all"

    def session_options(self, profile: bool = False):  # -> onnxruntime.SessionOptions
        import onnxruntime as ort

        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.enable_mem_reuse = self.mem_reuse
        opts.graph_optimization_level = levels[self.graph_optimization]
        opts.enable_profiling = profile
        opts.log_severity_level = 4  # fatal only: a failed run raises with the same message, once
        return opts

    def label(self) -> str:
        return (f"threads={self.threads or 'default'} mem_reuse={'on' if self.mem_reuse else 'off'} "
                f"opt={self.graph_optimization}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrtSettings:
        level = data.get("graph_optimization", "all")
        if level not in GRAPH_LEVELS:
            level = "all"
        threads = data.get("threads")
        return cls(threads=int(threads) if threads else None, mem_reuse=bool(data.get("mem_reuse", True)),
                   graph_optimization=level)


def settings_from_section(section: Any) -> OrtSettings | None:
    """The tuned settings of a bundle's `runtime` section, or None when the bundle was never tuned."""
    entry = section.get(MANIFEST_SECTION[1]) if isinstance(section, dict) else None
    return OrtSettings.from_dict(entry) if isinstance(entry, dict) else None


def settings_for_onnx(path: str | os.PathLike) -> OrtSettings | None:
    """Tuned settings for an ONNX that is an artifact of a bundle (its folder is a bundle that lists it)."""
    from hrdeploy.bundle import Bundle, is_bundle
    from hrdeploy.errors import UserError

    path = Path(path)
    if not is_bundle(path.parent):
        return None
    try:
        bundle = Bundle.open(path.parent)
    except UserError:  # a damaged manifest: the runner of a lone file runs with the defaults
        return None
    if path.name not in {a.file for a in bundle.artifacts.values()}:
        return None
    return settings_from_section(bundle.section(MANIFEST_SECTION[0]))
