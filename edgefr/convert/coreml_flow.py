"""PyTorch -> Core ML (`mlprogram`, `.mlpackage`) with coremltools, weights optionally compressed with
`coremltools.optimize`.

Precision: fp32 = float32 compute; fp16 = float16 compute (Core ML's default, what the GPU/ANE run);
int8-weights = fp16 compute with per-channel symmetric int8 weights; paletteN = fp16 compute with N-bit k-means
palettized weights. Input: NCHW float32 tensor named `input`, output `embedding`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import torch

from edgefr.convert.onnx_flow import quiet_converter
from edgefr.errors import EdgefrError

COREML_PRECISIONS = ("fp32", "fp16", "int8-weights", "palette6", "palette4")
# iOS 16 / macOS 13: the first target whose mlprogram stores compressed weights (constexpr ops).
COREML_DEPLOYMENT_TARGET = "iOS16"


def _compress(mlmodel, precision: str):
    import coremltools.optimize.coreml as cto

    if precision == "int8-weights":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"))
        return cto.linear_quantize_weights(mlmodel, config)
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans",
                                                                         nbits=int(precision.removeprefix("palette"))))
    return cto.palettize_weights(mlmodel, config)


def export_coreml(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, precision: str = "fp16",
                  metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as an `.mlpackage` (a folder) at `path`; `metadata` goes to `user_defined_metadata`."""
    import coremltools as ct

    if precision not in COREML_PRECISIONS:
        raise EdgefrError(f"Core ML precision {precision!r} is not supported; expected one of "
                          f"{', '.join(COREML_PRECISIONS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    # coremltools draws progress bars on stderr for every pass.
    with quiet_converter(), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        try:
            traced = torch.jit.trace(model.eval(), example)
            mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
                                 outputs=[ct.TensorType(name="embedding")], convert_to="mlprogram",
                                 compute_precision=compute,
                                 minimum_deployment_target=getattr(ct.target, COREML_DEPLOYMENT_TARGET))
        except Exception as exc:  # the torch frontend raises plain errors naming the unsupported op
            raise EdgefrError(f"Core ML conversion of {type(model).__name__} failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if precision not in ("fp32", "fp16"):
            mlmodel = _compress(mlmodel, precision)
    for key, value in (metadata or {}).items():
        mlmodel.user_defined_metadata[key] = value
    tmp = path.with_name(f".{path.stem}.partial.mlpackage")  # coremltools insists on the suffix
    shutil.rmtree(tmp, ignore_errors=True)
    mlmodel.save(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path
