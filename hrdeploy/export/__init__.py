"""Export stage: eager model -> rewritten model -> model.onnx bundle with manifest and parity report."""

from hrdeploy.export.bundle_export import ExportResult, export_bundle
from hrdeploy.export.options import ExportOptions, load_preset, parse_size

__all__ = ["ExportOptions", "ExportResult", "export_bundle", "load_preset", "parse_size"]
