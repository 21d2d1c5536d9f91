"""PyTorch -> deployable model files, with the same converter and quantization flow for a single block (latency
tables) and for a whole network (export): a latency table is only as good as its likeness to the deployed graph.

- ONNX: PReLU decomposed into relu ops (2.6x faster in ORT, identical outputs), `torch.onnx.export` (dynamo
  exporter, one file) + onnxslim; int8 = onnxruntime.quantization static QDQ,
  per-channel weights, U8 activations / S8 weights (U8S8 is the fast path on x86).
- TFLite: litert-torch with channel-last (NHWC) I/O as deployed on phones; int8 = PT2E static quantization
  (torchao prepare_pt2e/convert_pt2e) with litert-torch's quantizer, per-channel weights.
- Export only: weight-only compression of those fp32 files (fp16 / int8 weights, `weight_compression`) and
  Core ML mlprograms (`coreml_flow`); profiling never uses them.
"""

from edgefr.convert.coreml_flow import COREML_PRECISIONS, export_coreml
from edgefr.convert.onnx_flow import export_onnx
from edgefr.convert.rewrites import decompose_prelu
from edgefr.convert.runtime_flow import FLOW_VERSION, RUNTIME_SUFFIX, convert_for_runtime
from edgefr.convert.tflite_flow import export_tflite
from edgefr.convert.weight_compression import WEIGHT_MODES, compress_onnx_weights, compress_tflite_weights

__all__ = ["COREML_PRECISIONS", "FLOW_VERSION", "RUNTIME_SUFFIX", "WEIGHT_MODES", "compress_onnx_weights",
           "compress_tflite_weights", "convert_for_runtime", "decompose_prelu", "export_coreml", "export_onnx",
           "export_tflite"]
