"""Runners: one interface over eager PyTorch, ONNX Runtime and TensorRT.

A runner takes a float32 NCHW numpy batch and returns {output name: float32 numpy array}.
"""

from hrdeploy.runtime.base import Runner

__all__ = ["Runner"]
