"""PyTorch -> TFLite via litert-torch (fp32 or int8 PT2E), NHWC I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from edgefr.convert.onnx_flow import check_quantization, quiet_converter
from edgefr.errors import EdgefrError


def _channel_last(model: torch.nn.Module, example: torch.Tensor):
    import litert_torch

    with torch.no_grad():
        spatial_output = model.eval()(example).dim() == 4
    wrapped = litert_torch.to_channel_last_io(model, args=[0], outputs=[0] if spatial_output else [])
    return wrapped, example.permute(0, 2, 3, 1).contiguous()


# The embedding head after the global depthwise conv (FaceNet module names): what `float_head` keeps float.
FLOAT_HEAD_MODULES = ("head.gdconv", "head.linear", "head.bn")


def _keep_float(graph_module: torch.fx.GraphModule, modules: tuple[str, ...]) -> None:
    """Mark the ops of `modules` as already annotated (with nothing), so the PT2E quantizer leaves them float."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    def inside(node) -> bool:  # a module path names `m` as a whole dotted segment run (the wrapper adds a prefix)
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return any(f".{m}." in f".{path}." for path in paths for m in modules)

    marked = [node for node in graph_module.graph.nodes if node.op == "call_function" and inside(node)]
    if not marked:
        raise EdgefrError(f"no ops of {', '.join(modules)} found to keep float")
    for node in marked:
        node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)


def export_tflite(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, quantize: str = "fp32",
                  calibration: Iterable[np.ndarray] | None = None, float_head: bool = False) -> Path:
    """Write `model` (NCHW in PyTorch) as a TFLite flatbuffer with NHWC input; int8 needs `calibration`;
    `float_head` keeps the embedding head after the global depthwise conv in float32 there."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    path = Path(path)
    check_quantization("TFLite", quantize, calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    litert_torch.config.show_progress = False
    wrapped, example_nhwc = _channel_last(model, example)
    with quiet_converter():
        try:
            if quantize == "fp32":
                edge_model = litert_torch.convert(wrapped, (example_nhwc,))
            else:
                from torchao.quantization.pt2e import quantize_pt2e

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                graph_module = torch.export.export(wrapped, (example_nhwc,)).module()
                if float_head:
                    _keep_float(graph_module, FLOAT_HEAD_MODULES)
                prepared = quantize_pt2e.prepare_pt2e(graph_module, quantizer)
                with torch.no_grad():
                    for batch in calibration:
                        prepared(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 2, 3, 1))
                converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
                edge_model = litert_torch.convert(converted, (example_nhwc,),
                                                  quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        except EdgefrError:
            raise
        except Exception as exc:
            raise EdgefrError(f"TFLite conversion of {type(model).__name__} failed: "
                              f"{str(exc).splitlines()[0]}") from None
        tmp = path.with_name(path.name + ".tmp")
        edge_model.export(str(tmp))
    tmp.replace(path)
    return path
