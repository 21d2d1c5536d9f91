"""Weight-only compression of an already converted fp32 model file: the graph the fp32 flow wrote stays the same,
only its constant weights are stored smaller and dequantized on load (compute stays float).

- TFLite: ai-edge-quantizer (the LiteRT team's post-training quantizer) on the litert-torch fp32 flatbuffer:
  fp16 = weights cast to float16, int8-weights = per-channel symmetric int8 weights (weight-only recipe).
- ONNX: per-channel symmetric int8 initializers behind DequantizeLinear for every Conv/Gemm/MatMul weight
  (onnxruntime.quantization has no weight-only mode for convolutions; its QDQ format is what this writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefr.convert.onnx_flow import quiet_converter
from edgefr.errors import EdgefrError

WEIGHT_MODES = ("fp16", "int8-weights")


def _check_mode(fmt: str, mode: str, supported: tuple[str, ...]) -> None:
    if mode not in supported:
        raise EdgefrError(f"{fmt} weight compression {mode!r} is not supported; expected one of {', '.join(supported)}")


def compress_tflite_weights(source: str | Path, path: str | Path, mode: str) -> Path:
    """Write `source` (an fp32 .tflite) to `path` with fp16 or int8 weight-only weights."""
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    _check_mode("TFLite", mode, WEIGHT_MODES)
    path = Path(path)
    with quiet_converter():
        if mode == "fp16":
            weight_quantizer = quantizer.Quantizer(str(source))
            weight_quantizer.add_weight_only_config(".*", TFLOperationName.ALL_SUPPORTED, 16,
                                                    algorithm_key=AlgorithmName.FLOAT_CASTING)
        else:
            weight_quantizer = quantizer.Quantizer(str(source), recipe.weight_only_wi8_afp32())
        try:
            result = weight_quantizer.quantize()
        except Exception as exc:  # the quantizer raises ValueError/KeyError for ops it has no policy for
            raise EdgefrError(f"TFLite {mode} weight compression of {source} failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        tmp = path.with_name(path.name + ".tmp")
        result.export_model(str(tmp), overwrite=True)
    tmp.replace(path)
    return path


# Weight input index and output-channel axis of the weight tensor, per op type.
_ONNX_WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}


def _onnx_weight_axis(node) -> int | None:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return _ONNX_WEIGHT_AXIS.get(node.op_type)


def compress_onnx_weights(source: str | Path, path: str | Path, mode: str = "int8-weights") -> Path:
    """Write `source` (an fp32 .onnx) to `path` with per-channel int8 weights behind DequantizeLinear."""
    import onnx
    from onnx import helper, numpy_helper

    _check_mode("ONNX", mode, ("int8-weights",))
    path = Path(path)
    model = onnx.load(str(source))
    if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import):
        raise EdgefrError(f"{source}: per-channel DequantizeLinear needs ONNX opset >= 13")
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    dequantize_nodes = []
    for node in graph.node:
        axis = _onnx_weight_axis(node)
        if axis is None or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.input[1]
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.maximum(np.abs(weight).max(axis=reduce_axes), 1e-12) / 127.0
        shape = [1] * weight.ndim
        shape[axis] = -1
        quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers.pop(name))
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point")])
        dequantize_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                                      f"{name}_zero_point"], [name], axis=axis,
                                                 name=f"{name}_dequantize"))
    if not dequantize_nodes:
        raise EdgefrError(f"{source}: no Conv/Gemm/MatMul weights to compress")
    # Dequantize nodes only read initializers, so putting them first keeps the node list topologically sorted.
    nodes = dequantize_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
