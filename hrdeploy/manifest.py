"""Deprecated dict-level manifest helpers, now thin wrappers over `hrdeploy.bundle.Bundle`.

They validate through `Bundle.open` (schema, path confinement) and write under the bundle lock. New code
uses `Bundle` directly; these go once every stage has moved to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrdeploy.bundle import FORMAT, MANIFEST, Bundle
from hrdeploy.io import write_json

__all__ = ["FORMAT", "MANIFEST", "artifact_path", "load_manifest", "record_artifact", "save_manifest"]


def load_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of `bundle` as a dict (a copy)."""
    return Bundle.open(bundle).manifest


def save_manifest(bundle: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write `manifest` after checking that it opens as a bundle, under the bundle lock."""
    b = Bundle(Path(bundle), manifest)
    with b.lock():
        write_json(Path(bundle) / MANIFEST, manifest)


def artifact_path(bundle: str | os.PathLike, manifest: dict[str, Any], key: str) -> Path:
    """Path of artifact `key`, confined to the bundle; UserError if absent."""
    return Bundle(Path(bundle), manifest).artifact(key).path


def record_artifact(bundle: str | os.PathLike, key: str, file: str, **info: Any) -> dict[str, Any]:
    b = Bundle.open(bundle)
    b.record_artifact(key, file, **info)
    return b.manifest
