"""The bundle manifest (`manifest.json`): the contract between pipeline stages.

A bundle directory holds one model's artifacts. Its manifest records (see docs in design.md):

    {
      "format": "hrdeploy-bundle/1",
      "model":   {"name", "family", "task", "dataset", "upstream", "checkpoint": path|null},
      "input":   {"name": "input", "shape": [N|"batch", 3, H|"height", W|"width"], "layout": "NCHW",
                  "color": "RGB", "scale": 255.0, "mean": [...], "std": [...],
                  "height": H, "width": W, "dynamic_batch": bool, "dynamic_shape": bool, "stride": 32},
      "outputs": [{"name": "heatmaps", "stride": 4, "channels": 17}, ...],
      "keypoints": {"dataset", "names": [...], "flip_pairs": [[a, b], ...], "skeleton": [[a, b], ...]} | null,
      "rewrites": ["dynamic_kernel_aggregation", ...],
      "export":  {"exporter", "opset", "simplified", "batch": N|null, ...},
      "artifacts": {"onnx": {"file": "model.onnx", "precision": "fp32", "sha256", ...},
                    "fp16": {...}, "int8": {...}, "engine_fp16": {"file": "model.fp16.engine", ...}},
      "versions": {"hrdeploy", "torch", "onnx", "onnxruntime", ...}
    }

Mean/std are on the 0..1 scale of RGB pixels (divide uint8 by `scale` first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hrdeploy.errors import UserError
from hrdeploy.io import sha256, write_json

FORMAT = "hrdeploy-bundle/1"
MANIFEST = "manifest.json"


def load_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """Read a bundle's manifest; a missing or foreign one is a UserError."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise UserError(f"{bundle} is not a bundle directory; create one with `hrdeploy export MODEL -o {bundle}`")
    if not path.is_file():
        raise UserError(f"{bundle} has no {MANIFEST}; create the bundle with `hrdeploy export MODEL -o {bundle}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-run `hrdeploy export` with --force") from err
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an hrdeploy manifest (format {manifest.get('format')!r})")
    return manifest


def save_manifest(bundle: str | os.PathLike, manifest: dict[str, Any]) -> None:
    write_json(Path(bundle) / MANIFEST, manifest)


def artifact_path(bundle: str | os.PathLike, manifest: dict[str, Any], key: str) -> Path:
    """Path of artifact `key` ("onnx", "fp16", "int8", "engine_fp16", ...); UserError if absent."""
    entry = manifest.get("artifacts", {}).get(key)
    if entry is None or not (Path(bundle) / entry["file"]).is_file():
        raise UserError(f"bundle {bundle} has no {key!r} artifact; see `hrdeploy --help` for the stage that makes it")
    return Path(bundle) / entry["file"]


def record_artifact(bundle: str | os.PathLike, key: str, file: str, **info: Any) -> dict[str, Any]:
    """Add or replace artifact `key` (a file inside the bundle) in the manifest, with its sha256."""
    manifest = load_manifest(bundle)
    entry = {"file": file, "sha256": sha256(Path(bundle) / file), **info}
    manifest.setdefault("artifacts", {})[key] = entry
    save_manifest(bundle, manifest)
    return manifest
