"""Run a saved Core ML `.mlpackage` without Core ML: Core ML's `predict` exists only on macOS, so on Linux the
mlprogram is loaded back as coremltools' MIL program and its ops are executed with torch.

Compressed weights (int8 affine, palettized LUT) are decompressed by coremltools' own `materialized_val_inference`
of the constexpr ops, so the numbers are those the file stores. Float16 compute is emulated by rounding every
fp16 op output to float16 (accumulating in float32): close to the GPU's, not bit-exact with the Neural Engine's,
so final fp16 figures need an Apple device.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgefr.errors import EdgefrError


def load_mil_program(path: str | Path):
    """(MIL program, user_defined_metadata) of a saved `.mlpackage`."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import (
        load as milproto_to_program,
    )

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise EdgefrError(f"{path}: not a Core ML .mlpackage (no Manifest.json)")
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
            spec = mlmodel.get_spec()
            program = milproto_to_program(spec, spec.specificationVersion, mlmodel.weights_dir)
        except Exception as exc:  # protobuf and MIL loaders raise many types for damaged packages
            raise EdgefrError(f"{path}: cannot load the Core ML program ({type(exc).__name__})") from None
    return program, dict(spec.description.metadata.userDefined)


def _pad_same(x: torch.Tensor, weight: torch.Tensor, strides, dilations) -> torch.Tensor:
    pads = []
    for size, kernel, stride, dilation in reversed(list(zip(x.shape[2:], weight.shape[2:], strides, dilations))):
        total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    strides = [int(s) for s in strides] if strides is not None else [1] * (x.dim() - 2)
    dilations = [int(d) for d in dilations] if dilations is not None else [1] * (x.dim() - 2)
    if pad_type == "custom":  # MIL: [begin_0, end_0, begin_1, end_1]; F.pad wants the last axis first
        pad = [int(p) for p in pad]
        x = F.pad(x, [v for i in reversed(range(0, len(pad), 2)) for v in (pad[i], pad[i + 1])])
    elif pad_type in ("same", "same_lower"):
        x = _pad_same(x, weight, strides, dilations)
    return F.conv2d(x, weight, bias, strides, 0, dilations, int(groups))


def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    return F.batch_norm(x, mean, variance, gamma, beta, False, 0.0, float(epsilon))


def _axes(value) -> list[int]:
    return [int(a) for a in np.atleast_1d(value)]


# MIL op type -> torch implementation over the op's named inputs (tensors; scalars and lists as numpy).
OPS = {
    "conv": _conv,
    "linear": lambda x, weight, bias=None: F.linear(x, weight, bias),
    "matmul": lambda x, y, transpose_x=False, transpose_y=False: torch.matmul(
        x.transpose(-1, -2) if transpose_x else x, y.transpose(-1, -2) if transpose_y else y),
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "real_div": lambda x, y: x / y,
    "relu": lambda x: F.relu(x),
    "leaky_relu": lambda x, alpha=0.01: F.leaky_relu(x, float(alpha)),
    "prelu": lambda x, alpha: F.prelu(x, alpha),
    "sigmoid": lambda x: torch.sigmoid(x),
    "clip": lambda x, alpha, beta: torch.clamp(x, float(alpha), float(beta)),
    "batch_norm": _batch_norm,
    "reshape": lambda x, shape: x.reshape([int(s) for s in shape]),
    "expand_dims": lambda x, axes: x.reshape(_expanded_shape(x.shape, _axes(axes))),
    "squeeze": lambda x, axes=None: x.squeeze() if axes is None else x.squeeze(tuple(_axes(axes))),
    "transpose": lambda x, perm: x.permute(*_axes(perm)),
    "reduce_mean": lambda x, axes, keep_dims=False: x.mean(dim=_axes(axes), keepdim=bool(keep_dims)),
    "identity": lambda x: x,
    "cast": lambda x, dtype: x,  # values are float32 tensors; fp16 rounding follows the output type below
}


def _expanded_shape(shape, axes: list[int]) -> list[int]:
    out = list(shape)
    rank = len(shape) + len(axes)
    for axis in sorted(a % rank for a in axes):
        out.insert(axis, 1)
    return out


def _as_torch(value):
    """MIL values: numpy arrays become float32 tensors (fp16 weights are exact in float32), scalars stay."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return torch.from_numpy(value.astype(np.float32))
    return value


class MilExecutor:
    """Executes the `main` function of a MIL program on float32 NCHW batches."""

    def __init__(self, program, source: str = "Core ML model"):
        from coremltools.converters.mil.mil import types

        self.source = source
        self.function = program.functions["main"]
        self._fp16 = types.fp16
        unsupported = sorted({op.op_type for op in self.function.operations
                              if op.op_type not in OPS and op.op_type != "const"
                              and not op.op_type.startswith("constexpr_")})
        if unsupported:
            raise EdgefrError(f"{source}: the Core ML emulator has no implementation of op(s) "
                              f"{', '.join(unsupported)}")
        self.constants = {}
        for op in self.function.operations:
            if op.op_type == "const":
                self.constants[op.outputs[0].name] = _as_torch(op.outputs[0].val)
            elif op.op_type.startswith("constexpr_"):
                self.constants[op.outputs[0].name] = _as_torch(np.asarray(op.materialized_val_inference()))

    def op_counts(self) -> Counter:
        return Counter(op.op_type for op in self.function.operations)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (input_var,) = self.function.inputs.values()
        values = dict(self.constants)
        values[input_var.name] = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        for op in self.function.operations:
            if op.outputs[0].name in values:
                continue
            arguments = {name: self._value(var, values) for name, var in op.inputs.items()}
            result = OPS[op.op_type](**arguments)
            if op.outputs[0].dtype == self._fp16:
                result = result.half().float()
            values[op.outputs[0].name] = result
        return values[self.function.outputs[0].name].numpy()

    @staticmethod
    def _value(var, values):
        if var.name in values:
            return values[var.name]
        return _as_torch(var.val) if isinstance(var.val, np.ndarray) else var.val
