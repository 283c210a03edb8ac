"""hrdeploy: export and deployment toolkit for the HRNet family of pose networks.

Public API (imported lazily so that `import hrdeploy` stays light):
    build_model(name, *, dataset, input_size, checkpoint) -> torch.nn.Module
    list_models() -> list[str]
    get_spec(name) -> ModelSpec
    export_bundle(name, out_dir, **options) -> ExportResult
    Bundle.open(path) -> Bundle   (typed, validated view of a bundle directory; hrdeploy.bundle)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "hrdeploy.zoo",
    "list_models": "hrdeploy.registry",
    "get_spec": "hrdeploy.registry",
    "export_bundle": "hrdeploy.export",
    "Bundle": "hrdeploy.bundle",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hrdeploy' has no attribute {name!r}")
