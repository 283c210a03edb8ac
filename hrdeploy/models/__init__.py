"""Faithful eager reference networks, one file per family. Each file registers its models.

Nothing here knows about ONNX or TensorRT: export-friendly forms live in hrdeploy/rewrite/.
"""
