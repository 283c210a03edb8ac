"""What a server needs to know about one artifact of a bundle: tensor names, dtypes, dims, batch range.

`serve_spec` is the only place in hrdeploy.serve that opens the bundle (through hrdeploy.bundle.Bundle).
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
        if self.dtype not in TRITON_DTYPES:
            raise UserError(f"tensor {self.name!r} has dtype {self.dtype}, which hrdeploy does not serve "
                            f"({', '.join(TRITON_DTYPES)})")
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

    def whole_shape(self, t: TensorSpec) -> tuple[int, ...]:
        """`t`'s shape with the fixed batch axis, as a model that does not batch (max_batch_size 0) declares it."""
        return (self.static_batch or 1, *t.dims)


def serve_spec(bundle: str | os.PathLike, key: str = "onnx") -> ServeSpec:
    """Artifact `key` of `bundle`: names and dims from the manifest, dtypes from the ONNX, batch range."""
    from hrdeploy.bundle import Bundle

    b = Bundle.open(bundle)
    if key not in b.artifacts:
        have = ", ".join(b.artifacts) or "none"
        raise UserError(f"bundle {b.root} has no {key!r} artifact (it has: {have}); make it with `hrdeploy quantize` "
                        "(fp16/int8) or `hrdeploy build` (engines), or pick one with --artifact")
    a = b.artifact(key)
    inp = b.input
    height, width = (-1, -1) if inp.dynamic_shape else inp.size
    out_dims = [(o.channels, *(d // o.stride if d > 0 else -1 for d in (height, width))) for o in b.outputs]
    if a.kind == "onnx":
        graph = a.onnx_model().graph
        dtypes = {vi.name: _np_dtype(vi.type.tensor_type.elem_type) for vi in [*graph.input, *graph.output]}
    else:  # hrdeploy builds engines from ONNX with float32 inputs and outputs (keep_io_types)
        dtypes = {}
    lo, hi = a.batch_range
    if not (inp.dynamic_batch or inp.dynamic_shape):
        batch_range, static_batch = None, lo
    else:
        batch_range, static_batch = ((lo, hi) if a.kind == "engine" else (1, None)), None
    return ServeSpec(
        bundle=b.root, model=b.model.name, key=key, path=a.path, kind=a.kind, precision=a.precision,
        input=TensorSpec(inp.name, dtypes.get(inp.name, "float32"), (3, height, width)),
        outputs=tuple(TensorSpec(o.name, dtypes.get(o.name, "float32"), d) for o, d in zip(b.outputs, out_dims,
                                                                                             strict=True)),
        batch_range=batch_range, static_batch=static_batch,
    )


def _np_dtype(elem_type: int) -> str:
    from onnx.helper import tensor_dtype_to_np_dtype

    return tensor_dtype_to_np_dtype(elem_type).name
