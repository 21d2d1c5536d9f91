"""PyTorch -> ONNX (fp32 or int8 QDQ)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from edgefr.errors import EdgefrError


def check_quantization(fmt: str, quantize: str, calibration, supported: tuple[str, ...] = ("fp32", "int8")) -> None:
    if quantize not in supported:
        raise EdgefrError(f"{fmt} quantization {quantize!r} is not supported; expected one of {', '.join(supported)}")
    if quantize == "int8" and calibration is None:
        raise EdgefrError(f"{fmt} int8 quantization needs calibration data")


@contextlib.contextmanager
def quiet_converter():
    """Exporters print pages of progress and warnings; keep the user's terminal for edgefr's own messages."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


@functools.cache
def _shared_torchlib_registry(registry_class: type, build, opset_version: int):
    return build(registry_class, opset_version=opset_version)


@contextlib.contextmanager
def torchlib_registry_built_once():
    """Within it, `torch.onnx.export` reuses one registry of ONNX decompositions per opset instead of building it.

    The dynamo exporter builds that registry on every call, reading the source of each of ~500 onnxscript
    functions: half of a block's conversion (0.96 -> 0.44 CPU s a block on the Intel host, 20 of 20 blocks'
    files byte-identical), and a profile converts hundreds of blocks. Shared safely because only a
    `custom_translation_table`, which edgefr never passes, writes to the registry. Private torch API, so where
    it is not as expected the exporter builds its own as before."""
    try:
        from torch.onnx._internal.exporter import _constants
        from torch.onnx._internal.exporter._registration import ONNXRegistry

        original = ONNXRegistry.__dict__.get("from_torchlib")
    except ImportError:
        original = None
    if not isinstance(original, classmethod):
        yield
        return

    def from_torchlib(cls, opset_version: int = _constants.TORCHLIB_OPSET):
        return _shared_torchlib_registry(cls, original.__func__, opset_version)

    ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = original


def _torch_to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    dynamic_shapes = ({"x": {0: torch.export.Dim("batch", min=1, max=1024)}},) if dynamic_batch else None
    with quiet_converter(), torchlib_registry_built_once():
        try:
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["output"], dynamic_shapes=dynamic_shapes,
                              verbose=False)
        except Exception as exc:
            raise EdgefrError(f"ONNX export of {type(model).__name__} failed: {str(exc).splitlines()[0]}") from None
        import onnx
        import onnxslim

        slimmed = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slimmed, str(path))


class _ArrayReader:
    """onnxruntime.quantization CalibrationDataReader over NCHW float32 arrays."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self._iter = ({input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches)

    def get_next(self):
        return next(self._iter, None)


def float_head_nodes(proto) -> list[str]:
    """The embedding head after its global depthwise conv (the GDC, whose kernel spans the whole feature map,
    then flatten, linear, BN): the node names to keep float in an int8 graph. The exporter's node names carry no
    module scope after slimming, so the head is found by its structure."""
    import onnx

    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input})
    nodes = list(proto.graph.node)
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node.op_type != "Conv":
            continue
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        if kernel and shapes.get(node.input[0], [])[2:] == kernel:
            return [n.name for n in nodes[index:]]
    raise EdgefrError("no global depthwise conv found to keep the embedding head float")


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, quantize: str = "fp32",
                calibration: Iterable[np.ndarray] | None = None, dynamic_batch: bool = False,
                metadata: dict[str, object] | None = None, float_head: bool = False) -> Path:
    """Write `model` to `path` as ONNX; `quantize="int8"` needs `calibration` (NCHW float batches); `float_head`
    keeps the embedding head (from the global depthwise conv on) in float32 there."""
    path = Path(path)
    check_quantization("ONNX", quantize, calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        _torch_to_onnx(model, example, fp32, dynamic_batch)
        if quantize == "int8":
            import onnx
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

            excluded = float_head_nodes(onnx.load(str(fp32))) if float_head else []
            with quiet_converter():
                quantize_static(str(fp32), str(Path(tmp) / "int8.onnx"), _ArrayReader("input", calibration),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded)
            fp32 = Path(tmp) / "int8.onnx"
        if metadata:
            import onnx

            proto = onnx.load(str(fp32))
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
            onnx.save(proto, str(fp32))
        fp32.replace(path)
    return path
