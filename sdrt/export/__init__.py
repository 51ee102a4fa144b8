"""torch modules -> ONNX, one described component at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdrt.lazy import lazy_names

if TYPE_CHECKING:
    from sdrt.export.exporter import ExportConfig, export_model

# imported on first use: the exporter imports torch, which the CLI's help (reading fp16.PRECISIONS) does without
__getattr__ = lazy_names(__name__, {"ExportConfig": "sdrt.export.exporter", "export_model": "sdrt.export.exporter"})

__all__ = ["ExportConfig", "export_model"]
