"""ONNX face models under onnxruntime, repaired in memory where onnxruntime refuses them as shipped and rewritten
where it would run them slowly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgefr.devices.agent import ort_session_options
from edgefr.digests import file_sha256
from edgefr.errors import EdgefrError
from edgefr.teachers.base import Teacher, probe_embedding_dim
from edgefr.teachers.preprocessing import resolve_preprocessing

log = logging.getLogger(__name__)

# Where an exported model declares its input convention (JSON with the preprocessing keys).
PREPROCESSING_METADATA_KEY = "edgefr.preprocessing"


def _repair_graph(model, source: Path) -> bool:
    """Drop graph inputs that are initializers or that no node reads (SFace lists its weights as inputs,
    which onnxruntime refuses) and make the batch dimension symbolic. True if anything changed."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.input if t.name not in initializers and t.name in consumed]
    changed = len(kept) != len(graph.input)
    if changed:
        del graph.input[:]
        graph.input.extend(kept)
    if len(graph.input) != 1:
        raise EdgefrError(f"{source}: expected a face model with one image input, found inputs "
                          f"{[t.name for t in graph.input]}")
    for tensor in (*graph.input, *graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
            changed = True
    if changed:
        # Intermediate shapes recorded for the old fixed batch would contradict the new symbolic one.
        del graph.value_info[:]
    return changed


# Ops a weight may pass through on its way to its layer (a dequantization, a reshape): deterministic, and cheap to
# evaluate once.
WEIGHT_OPS = frozenset({"DequantizeLinear", "Reshape", "Transpose", "Cast", "Squeeze", "Unsqueeze", "Identity"})


def _fold_weight_dequantization(model) -> bool:
    """Replace the nodes that compute from weights alone (SFace: each int8 weight's DequantizeLinear and Reshape) by
    the float weights they compute, once, at load. onnxruntime leaves DequantizeLinear unfolded for its int8
    kernels, so a weight-only quantized model dequantized every weight on every run, and the DequantizeLinear
    between a weight and its Conv kept the BatchNormalization after it from being fused: SFace took 21.5 ms a face
    where folded it takes 17.1 (batches of 64, two threads; one thread: 37.1 and 32.0), embeddings within 2.4e-6
    (the fused BatchNormalization's rounding).
    A graph that quantizes activations (QuantizeLinear: an int8 export) is left as is: its DequantizeLinear nodes
    are how onnxruntime finds the int8 kernels a device runs. True if anything was folded."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    if any(node.op_type == "QuantizeLinear" for node in graph.node):
        return False
    constant = {t.name for t in graph.initializer}
    folded_positions = set()
    for position, node in enumerate(graph.node):  # ONNX lists nodes in topological order
        if (node.op_type in WEIGHT_OPS and node.domain in ("", "ai.onnx") and node.input
                and all(name in constant for name in node.input if name)):
            folded_positions.add(position)
            constant.update(node.output)
    if not folded_positions:
        return False
    folded = [node for position, node in enumerate(graph.node) if position in folded_positions]
    outputs = [name for node in folded for name in node.output]
    weights_graph = helper.make_graph(folded, "weights", [], [helper.make_value_info(name, onnx.TypeProto())
                                                              for name in outputs], graph.initializer)
    weights_model = helper.make_model(weights_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        values = ReferenceEvaluator(weights_model).run(outputs, {})
    except Exception as exc:  # noqa: BLE001 - an op version onnx's evaluator lacks: onnxruntime runs it as shipped
        log.info("weights left to onnxruntime to compute at every run (%s: %s)", type(exc).__name__, str(exc)[:160])
        return False
    kept_nodes = [node for position, node in enumerate(graph.node) if position not in folded_positions]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    read = {name for node in graph.node for name in node.input} | {t.name for t in graph.output}
    kept_weights = [t for t in graph.initializer if t.name in read]
    kept_weights += [numpy_helper.from_array(value, name) for name, value in zip(outputs, values) if name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    return True


def _flush_denormal_weights(model) -> bool:
    """Set float32 weights below the smallest normal number to zero. x86 cores take a slow microcode assist on every
    product with a denormal operand: faceplugin's 8,938 such weights (of dead channels after long training) made it
    run 3.5x slower (62 -> 18 ms a face on one thread), and its embeddings are bit-identical without them (each such
    product, ~1e-38, is far below the rounding of any sum it joins). True if any weight was flushed."""
    import onnx
    from onnx import numpy_helper

    smallest_normal = np.finfo(np.float32).tiny
    flushed = False
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(tensor)
        denormal = (weights != 0) & (np.abs(weights) < smallest_normal)
        if denormal.any():
            tensor.CopyFrom(numpy_helper.from_array(np.where(denormal, np.float32(0), weights), tensor.name))
            flushed = True
    return flushed


def load_onnx_teacher(path: str | Path, name: str | None = None, preprocessing: dict | None = None,
                      default_preprocessing: dict | None = None) -> Teacher:
    """An ONNX model as a Teacher. Preprocessing: `preprocessing` if given, else the model's
    `edgefr.preprocessing` metadata, else `default_preprocessing`."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise EdgefrError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends for non-ONNX files
        raise EdgefrError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise EdgefrError(f"{path}: not an ONNX model (empty graph)")
    metadata = {p.key: p.value for p in model.metadata_props}
    spec = resolve_preprocessing(str(path), preprocessing, metadata.get(PREPROCESSING_METADATA_KEY),
                                 default_preprocessing)
    fingerprint = file_sha256(path)
    repaired = _repair_graph(model, path)
    folded = _fold_weight_dequantization(model)
    flushed = _flush_denormal_weights(model)  # after the fold: a dequantized weight may be denormal
    runnable = model.SerializeToString() if repaired or folded or flushed else str(path)
    options = ort_session_options()  # exact int8 products on x86 without VNNI (an exported int8 student)
    # Fatal only: onnxruntime warns about every unused initializer of such graphs, and logs an error when the batch
    # probe meets a graph that fixes batch size 1 (a whole-int8 export), which `probe_embedding_dim` handles.
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(runnable, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgefrError(f"{path}: onnxruntime cannot load the model ({str(exc).splitlines()[0][:200]})") from None
    input_name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    dim, batched = probe_embedding_dim(forward, spec, path)
    if not batched:
        log.info("%s: the graph fixes batch size 1; running one image at a time", path)
    return Teacher(name or path.stem, spec, forward, dim, fingerprint, max_batch=64 if batched else 1)
