"""Precision variants of a bundle's fp32 ONNX: FP16 mixed precision and INT8 explicit Q/DQ.

`quantize_bundle(bundle, precision, ...)` is the stage function (hrdeploy.precision.quantize); the TensorRT
builder calls it for TensorRT 11, where precision comes from the ONNX graph itself.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "quantize_bundle": "hrdeploy.precision.quantize",
    "QUANTIZED": "hrdeploy.precision.quantize",
    "QuantizeResult": "hrdeploy.precision.result",
    "BACKENDS": "hrdeploy.precision.quantize",
    "FILES": "hrdeploy.precision.quantize",
    "modelopt_available": "hrdeploy.precision.quantize",
    "METHODS": "hrdeploy.precision.int8",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hrdeploy.precision' has no attribute {name!r}")
