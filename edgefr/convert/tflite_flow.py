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


def export_tflite(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, quantize: str = "fp32",
                  calibration: Iterable[np.ndarray] | None = None) -> Path:
    """Write `model` (NCHW in PyTorch) as a TFLite flatbuffer with NHWC input; int8 needs `calibration`."""
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
                prepared = quantize_pt2e.prepare_pt2e(torch.export.export(wrapped, (example_nhwc,)).module(), quantizer)
                with torch.no_grad():
                    for batch in calibration:
                        prepared(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 2, 3, 1))
                converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
                edge_model = litert_torch.convert(converted, (example_nhwc,),
                                                  quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        except EdgefrError:
            raise
        except Exception as exc:
            raise EdgefrError(f"TFLite conversion of {type(model).__name__} failed: {str(exc).splitlines()[0]}") from None
        tmp = path.with_name(path.name + ".tmp")
        edge_model.export(str(tmp))
    tmp.replace(path)
    return path
