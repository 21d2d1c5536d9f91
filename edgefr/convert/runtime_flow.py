"""The conversion flow a runtime deploys: one function so that profiling and export cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgefr.convert.onnx_flow import export_onnx
from edgefr.convert.rewrites import decompose_prelu
from edgefr.convert.tflite_flow import export_tflite
from edgefr.errors import EdgefrError

RUNTIME_SUFFIX = {"onnxruntime": ".onnx", "tflite": ".tflite"}
# Bump when a flow changes the graphs it writes: cached model files and latency tables record it and go stale.
FLOW_VERSION = "2"


def latency_calibration_batches(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Activation-range stand-ins for quantizing a block whose latency (not accuracy) is measured.

    Kernel cost does not depend on the quantization scales; whole-model exports calibrate on real faces instead.
    """
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def convert_for_runtime(model: torch.nn.Module, example: torch.Tensor, runtime: str, dtype: str, path: str | Path,
                        calibration: list[np.ndarray] | None = None, float_head: bool = False) -> Path:
    """Convert as deployed on `runtime`: ONNX Runtime gets PReLU decomposed (see `rewrites.DecomposedPReLU`).
    `float_head` keeps an int8 model's embedding head after its global depthwise conv in float32."""
    if runtime not in RUNTIME_SUFFIX:
        raise EdgefrError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIME_SUFFIX)}")
    if dtype == "int8" and calibration is None:
        calibration = latency_calibration_batches(tuple(example.shape))
    if runtime == "onnxruntime":
        return export_onnx(decompose_prelu(model), example, path, quantize=dtype, calibration=calibration,
                           float_head=float_head)
    return export_tflite(model, example, path, quantize=dtype, calibration=calibration, float_head=float_head)
