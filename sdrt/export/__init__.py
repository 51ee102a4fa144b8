"""torch modules -> ONNX, one described component at a time."""

from sdrt.export.exporter import ExportConfig, export_model

__all__ = ["ExportConfig", "export_model"]
