"""What an exported graph is made of: op counts, ops that compute in float in a quantized model, and ops that
fall out of the accelerated path (TFLite: not taken by the XNNPACK delegate)."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgefr.devices.agent import ORT_CONFIG_ENTRIES, ort_session_options


@dataclass
class GraphSummary:
    ops: dict[str, int]
    float_ops: dict[str, int] = field(default_factory=dict)  # compute ops left in float in an int8 graph
    # The float ops after the graph's last int8 op: where a float32 embedding head (`float_head`) lies.
    float_tail_ops: dict[str, int] = field(default_factory=dict)
    non_delegated_ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def warnings(self, label: str, float_head: bool = False) -> list[str]:
        """What deserves a look; with `float_head` the float tail was asked for, so only float ops before it count."""
        found = []
        if self.non_delegated_ops:
            found.append(f"{label}: {sum(self.non_delegated_ops.values())} op(s) not delegated to XNNPACK, run "
                         f"by the reference kernels: {_counts(self.non_delegated_ops)}")
        unexpected = Counter(self.float_ops) - Counter(self.float_tail_ops) if float_head else self.float_ops
        if unexpected:
            where = " before its float head" if float_head else ""
            found.append(f"{label}: {sum(unexpected.values())} op(s) stayed float in the int8 graph{where}: "
                         f"{_counts(dict(unexpected))}")
        return found


def _counts(ops: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(ops.items(), key=lambda kv: -kv[1]))


# TFLite/ONNX ops that convert between int8 and float at a quantized region's edges, or only move data.
_TFLITE_CONVERSIONS = {"QUANTIZE", "DEQUANTIZE"}
_ONNX_QUANTIZED_PREFIXES = ("QLinear", "QGemm")  # onnxruntime's fused int8 kernels (QGemm: com.microsoft)
_ONNX_NON_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten", "Transpose", "Squeeze",
                     "Unsqueeze", "Identity", "Shape", "Gather", "Concat"}


def tflite_graph(path: Path, quantized: bool) -> GraphSummary:
    """Ops of the model as written; with XNNPACK applied (the interpreter's default), every original op not
    inside a DELEGATE node's partition is a non-delegated op."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter._get_ops_details()  # the only listing of nodes, delegate nodes included
    original = [op for op in details if op["op_name"] != "DELEGATE"]
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    summary = GraphSummary(ops=dict(Counter(op["op_name"] for op in original)))
    delegated = _delegated_ops(original, delegates)
    summary.non_delegated_ops = dict(Counter(op["op_name"] for op in original if op["index"] not in delegated))
    if not delegates:
        summary.notes.append("no XNNPACK delegate node: the whole graph runs on the reference kernels")
    if quantized:
        def is_float(op) -> bool:
            return any(tensors[i]["dtype"] == np.float32 for i in (*op["inputs"], *op["outputs"]) if i >= 0)

        def is_compute(op) -> bool:
            return op["op_name"] not in _TFLITE_CONVERSIONS

        summary.float_ops, summary.float_tail_ops = _float_op_counts(
            [(op["op_name"], op) for op in original], lambda op: is_compute(op) and not is_float(op),
            lambda op: is_compute(op) and is_float(op))
        conversions = sum(summary.ops.get(name, 0) for name in _TFLITE_CONVERSIONS)
        if conversions:
            summary.notes.append(f"{conversions} QUANTIZE/DEQUANTIZE op(s) convert between int8 and float")
    return summary


def _float_op_counts(ops: list, is_quantized, is_float) -> tuple[dict[str, int], dict[str, int]]:
    """Op-type counts of the float ops, all of them and those after the last quantized one (the float tail);
    `ops` in execution order, each a (type, op)."""
    last_quantized = max((i for i, (_, op) in enumerate(ops) if is_quantized(op)), default=-1)
    return (dict(Counter(kind for kind, op in ops if is_float(op))),
            dict(Counter(kind for kind, op in ops[last_quantized + 1:] if is_float(op))))


def _delegated_ops(ops: list[dict], delegates: list[dict]) -> set[int]:
    """Indices of the original ops each DELEGATE node replaced: those that lie between the delegate's input
    and output tensors (producers of its outputs, walked back until its inputs)."""
    producer = {t: op for op in ops for t in op["outputs"]}
    taken: set[int] = set()
    for delegate in delegates:
        boundary = set(delegate["inputs"])
        stack = list(delegate["outputs"])
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            op = producer[tensor]
            taken.add(op["index"])
            stack.extend(i for i in op["inputs"] if i >= 0)
    return taken


def onnx_graph(path: Path, quantized: bool) -> GraphSummary:
    """Ops of the graph onnxruntime actually runs (after its fusions: QLinearConv and friends for QDQ)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort_session_options()  # as the checks and the deployment run it
        # EXTENDED applies the QDQ -> QLinear* fusions but not the NCHWc layout ops of ENABLE_ALL, which would
        # hide the op types behind com.microsoft.nchwc wrappers.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(optimized)).graph.node
    summary = GraphSummary(ops=dict(Counter(node.op_type for node in nodes)))
    summary.notes.append("onnxruntime CPU execution provider: every op runs on it (no partitions)")
    if quantized:
        def is_quantized(node) -> bool:
            return node.op_type.startswith(_ONNX_QUANTIZED_PREFIXES) or node.op_type.endswith("Integer")

        def is_float(node) -> bool:
            return node.op_type not in _ONNX_NON_COMPUTE and not is_quantized(node)

        # Nodes of the optimized model are in topological order, so the tail is what runs after the last int8 op.
        summary.float_ops, summary.float_tail_ops = _float_op_counts([(node.op_type, node) for node in nodes],
                                                                     is_quantized, is_float)
        entries = ", ".join(f"{key}={value}" for key, value in ORT_CONFIG_ENTRIES.items())
        summary.notes.append(f"deploy with the session config entries {entries}: without them x86 CPUs lacking "
                             "VNNI saturate int8 products (the checks here ran with them)")
    return summary


def coreml_graph(path: Path) -> GraphSummary:
    from edgefr.export.coreml_mil import MilExecutor, load_mil_program

    program, _ = load_mil_program(path)
    ops = MilExecutor(program, str(path)).op_counts()
    summary = GraphSummary(ops={name: count for name, count in ops.items() if name != "const"})
    compressed = sum(count for name, count in ops.items() if name.startswith("constexpr_"))
    if compressed:
        summary.notes.append(f"{compressed} compressed weight tensor(s), decompressed at load by Core ML")
    summary.notes.append("compute units (CPU/GPU/Neural Engine) are chosen on the Apple device; check them with "
                         "Xcode's Core ML performance report")
    return summary


def graph_summary(path: Path, fmt: str, quantize: str) -> GraphSummary:
    if fmt == "tflite":
        return tflite_graph(path, quantize == "int8")
    if fmt == "onnx":
        return onnx_graph(path, quantize == "int8")
    return coreml_graph(path)
