"""The export stage: quantize and export a student (ONNX, TFLite, Core ML) with the `edgefr.convert` flows, write
its preprocessing into the file, and check the exported file itself on real faces and on the device."""

from edgefr.export.artifacts import (
           FORMATS,
           QUANTIZATIONS,
           ExportTarget,
           load_artifact_embedder,
           write_artifact,
)
from edgefr.export.pipeline import REPORT_SCHEMA, ExportOptions, run_export

__all__ = ["FORMATS", "QUANTIZATIONS", "REPORT_SCHEMA", "ExportOptions", "ExportTarget", "load_artifact_embedder",
           "run_export", "write_artifact"]
