"""What a server needs to know about one artifact of a bundle: tensor names, dtypes, dims, batch range.

`serve_spec` is the only place in hrdeploy.serve that reads the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hrdeploy.errors import UserError

# numpy dtype name -> Triton data type (model_config.proto DataType without the TYPE_ prefix)
TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "int8": "INT8", "uint8": "UINT8", "int32": "INT32",
                 "int64": "INT64"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output without the batch axis; -1 marks a dynamic dim."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    dims: tuple[int, ...]

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class ServeSpec:
    """An artifact as a server sees it."""

    bundle: Path
    model: str  # the bundle's model name
    key: str  # artifact key ("onnx", "fp16", "int8", "engine_fp16", ...)
    path: Path
    kind: str  # "onnx" | "engine"
    precision: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    batch_range: tuple[int, int | None] | None  # (min, max) of a batch axis, max None = unbounded; None = static
    static_batch: int | None  # the fixed batch of a static-batch artifact

    @property
    def full_input_shape(self) -> tuple[int, ...]:
        """Input shape with the batch axis (static-batch artifacts only)."""
        return (self.static_batch or 1, *self.input.dims)


def serve_spec(bundle: str | os.PathLike, key: str = "onnx") -> ServeSpec:
    """Read artifact `key` of `bundle` (names, dims and batch range from the manifest, dtypes from the ONNX)."""
    from hrdeploy.manifest import artifact_path, load_manifest

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    artifacts = manifest.get("artifacts") or {}
    if key not in artifacts:
        have = ", ".join(artifacts) or "none"
        raise UserError(f"bundle {bundle} has no {key!r} artifact (it has: {have}); make it with `hrdeploy quantize` "
                        "(fp16/int8) or `hrdeploy build` (engines), or pick one with --artifact")
    path = artifact_path(bundle, manifest, key)
    entry = artifacts[key]
    kind = "engine" if path.suffix in (".engine", ".plan", ".trt") else "onnx"
    inp = manifest["input"]
    height, width = (-1, -1) if inp.get("dynamic_shape") else (int(inp["height"]), int(inp["width"]))
    in_dims = (3, height, width)
    out_dims = []
    for out in manifest["outputs"]:
        stride = int(out["stride"])
        out_dims.append((int(out["channels"]), *(d // stride if d > 0 else -1 for d in (height, width))))
    if kind == "onnx":
        dtypes = _onnx_io_dtypes(path)
        in_dtype = dtypes.get(inp["name"], "float32")
        out_dtypes = [dtypes.get(o["name"], "float32") for o in manifest["outputs"]]
    else:  # hrdeploy builds engines from ONNX with float32 inputs and outputs (keep_io_types)
        in_dtype, out_dtypes = "float32", ["float32"] * len(out_dims)
    batch_range, static_batch = _batch_range(manifest, entry, kind)
    return ServeSpec(
        bundle=bundle, model=manifest["model"]["name"], key=key, path=path, kind=kind,
        precision=entry.get("precision", "fp32"),
        input=TensorSpec(inp["name"], in_dtype, in_dims),
        outputs=tuple(TensorSpec(o["name"], dt, d)
                      for o, dt, d in zip(manifest["outputs"], out_dtypes, out_dims, strict=True)),
        batch_range=batch_range, static_batch=static_batch,
    )


def _batch_range(manifest: dict, entry: dict, kind: str) -> tuple[tuple[int, int | None] | None, int | None]:
    """((min, max), None) for a batch axis (engines: their profile; ONNX: unbounded), (None, N) for a static batch."""
    inp = manifest["input"]
    if not (inp.get("dynamic_batch") or inp.get("dynamic_shape")):
        batch = inp["shape"][0]
        return None, int(batch) if isinstance(batch, int) else 1
    profiles = entry.get("profiles") or [] if kind == "engine" else []
    if profiles:
        return (int(profiles[0]["min"][0]), int(profiles[0]["max"][0])), None
    return (1, None), None


def _onnx_io_dtypes(path: Path) -> dict[str, str]:
    """Input/output element types of an ONNX graph, read without its weights."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception as err:  # protobuf DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model; re-export the bundle ({type(err).__name__})") from err
    return {vi.name: tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
            for vi in [*graph.input, *graph.output]}
