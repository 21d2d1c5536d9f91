"""TFLite models under ai_edge_litert, with the input convention read from the flatbuffer's metadata.

The export stage stores the preprocessing JSON as a model metadata entry named `edgefr.preprocessing`
(`set_tflite_metadata`); `load_tflite_embedder` reads it back, so exported models are evaluated with the
right convention without flags. A model without it needs an explicit preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefr.digests import file_sha256
from edgefr.errors import EdgefrError
from edgefr.teachers.base import Teacher, probe_embedding_dim
from edgefr.teachers.onnx_model import PREPROCESSING_METADATA_KEY
from edgefr.teachers.preprocessing import resolve_preprocessing


def read_tflite_metadata(path: str | Path) -> dict[str, bytes]:
    """The model's metadata entries (name -> buffer bytes)."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if data[4:8] != b"TFL3":
        raise EdgefrError(f"{path}: not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        entries = {}
        for i in range(model.MetadataLength()):
            buffer = model.Buffers(model.Metadata(i).Buffer())
            # Large buffers (ai-edge-quantizer writes them so) live after the flatbuffer, found by offset.
            inline = buffer.Offset() <= 1
            entries[model.Metadata(i).Name().decode()] = (
                buffer.DataAsNumpy().tobytes() if inline else data[buffer.Offset():buffer.Offset() + buffer.Size()])
        return entries
    except Exception as exc:  # a damaged flatbuffer fails in many ways
        raise EdgefrError(f"{path}: damaged TFLite model ({type(exc).__name__})") from None


def set_tflite_metadata(path: str | Path, name: str, value: bytes) -> None:
    """Add or replace metadata entry `name` of a TFLite model file (rewrites the file)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value, np.uint8)
    model.buffers = (model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def load_tflite_embedder(path: str | Path, preprocessing: dict | None = None, threads: int | None = None) -> Teacher:
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    if not path.is_file():
        raise EdgefrError(f"{path}: no such model file")
    metadata = read_tflite_metadata(path)
    declared = metadata.get(PREPROCESSING_METADATA_KEY)
    spec = resolve_preprocessing(str(path), preprocessing, declared.decode(errors="replace") if declared else None)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad files
        raise EdgefrError(f"{path}: the TFLite interpreter cannot load the model ({type(exc).__name__})") from None
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def forward(batch: np.ndarray) -> np.ndarray:
        # TFLite tensors have static shapes; resize to the batch at hand (a no-op when unchanged).
        if tuple(input_detail["shape"]) != batch.shape:
            interpreter.resize_tensor_input(input_detail["index"], batch.shape)
            interpreter.allocate_tensors()
            input_detail["shape"] = np.array(batch.shape)
        scale, zero_point = input_detail["quantization"]
        if input_detail["dtype"] != np.float32:  # an int8-input model: quantize as the converter specified
            batch = np.clip(np.round(batch / scale + zero_point), *_dtype_range(input_detail["dtype"]))
        interpreter.set_tensor(input_detail["index"], batch.astype(input_detail["dtype"]))
        interpreter.invoke()
        output = interpreter.get_tensor(output_detail["index"]).astype(np.float32)
        scale, zero_point = output_detail["quantization"]
        return (output - zero_point) * scale if output_detail["dtype"] != np.float32 else output

    interpreter.allocate_tensors()
    dim, batched = probe_embedding_dim(forward, spec, path)
    return Teacher(path.stem, spec, forward, dim, file_sha256(path), max_batch=64 if batched else 1)


def _dtype_range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max
