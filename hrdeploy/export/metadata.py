"""ONNX metadata_props written from the manifest (the manifest stays the source of truth)."""

from __future__ import annotations

import json

import onnx

from hrdeploy.manifest import Manifest

PREFIX = "hrdeploy."


def manifest_metadata(manifest: Manifest) -> dict[str, str]:
    """The metadata_props an exported ONNX carries: enough to preprocess and decode without the bundle."""
    inp, model, kps = manifest.input, manifest.model, manifest.keypoints
    props = {
        "model": model.name,
        "task": model.task,
        "dataset": model.dataset,
        "input_name": inp.name,
        "input_shape": list(inp.shape),
        "mean": list(inp.mean),
        "std": list(inp.std),
        "outputs": [o.name for o in manifest.outputs],
        "output_strides": [o.stride for o in manifest.outputs],
        "keypoint_names": list(kps.names) if kps else [],
        "flip_pairs": [list(p) for p in kps.flip_pairs] if kps else [],
        "rewrites": list(manifest.rewrites),
        "version": manifest.versions["hrdeploy"],
    }
    return {PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict[str, object]:
    """hrdeploy's metadata_props of `model`, JSON-decoded, without the prefix."""
    out: dict[str, object] = {}
    for p in model.metadata_props:
        if p.key.startswith(PREFIX):
            try:
                out[p.key[len(PREFIX):]] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key[len(PREFIX):]] = p.value
    return out
