"""Writing one exported model file (format x quantization) with the `edgefr.convert` flows, its metadata, and
loading it back as an `Embedder` in its own runtime.

fp32 and int8 go through `convert_for_runtime`, the very flow `edgefr profile` measured for the latency tables,
so the exported graph is the graph the table predicts. fp16 and int8-weights compress the fp32 file's weights
(export only; no table measures them). Core ML has no latency table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgefr.errors import EdgefrError

PREPROCESSING_KEY = "edgefr.preprocessing"  # read by edgefr.verify.load_embedder
MODEL_KEY = "edgefr.model"
EXPORTED_MODEL_SCHEMA = "edgefr.exported-model/1"

FORMATS = ("onnx", "tflite", "coreml")
QUANTIZATIONS = {"onnx": ("fp32", "int8-weights", "int8"),
                 "tflite": ("fp32", "fp16", "int8-weights", "int8"),
                 "coreml": ("fp32", "fp16", "int8-weights", "palette6")}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}
RUNTIME = {"onnx": "onnxruntime", "tflite": "tflite"}  # Core ML runs on Apple devices only
LAYOUT = {"onnx": "NCHW", "tflite": "NHWC", "coreml": "NCHW"}


@dataclass(frozen=True)
class ExportTarget:
    format: str
    quantize: str
    float_head: bool = False  # int8 with the embedding head after the global depthwise conv kept float32

    @property
    def variant(self) -> str:
        return self.quantize + ("-float-head" if self.float_head else "")

    @property
    def label(self) -> str:
        return f"{self.format}-{self.variant}"

    @property
    def profiled_dtype(self) -> str | None:
        """The dtype of the profile flow that wrote the same graph (None: an export-only graph)."""
        return self.quantize if self.quantize in ("fp32", "int8") and self.format in RUNTIME else None


def check_target(fmt: str, quantize: str, float_head: bool | None = None) -> ExportTarget:
    """float_head None: the default, a float32 head wherever it applies (int8 ONNX and TFLite). Post-training int8
    of the head cost a 30-epoch MobileFaceNet (ReLU) 4-5 pp on LFW (mean cosine to PyTorch 0.85); a float head
    brought the cosine back to 0.99 at the same latency (see the README, Export)."""
    applies = quantize == "int8" and fmt in RUNTIME
    if float_head and not applies:
        raise EdgefrError(f"--float-head applies to --quantize int8 of onnx and tflite, not {fmt} {quantize}")
    if fmt not in FORMATS:
        raise EdgefrError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)} or all")
    if quantize not in QUANTIZATIONS[fmt]:
        raise EdgefrError(f"--format {fmt} does not support --quantize {quantize}; expected one of "
                          f"{', '.join(QUANTIZATIONS[fmt])}")
    return ExportTarget(fmt, quantize, applies if float_head is None else float_head)


def exported_metadata(model, target: ExportTarget) -> dict[str, str]:
    """The metadata entries written into the file: the input convention (exactly the keys load_embedder
    validates) and what the model is (embedding size, input shape, arch)."""
    size = model.preprocessing["size"]
    preprocessing = {**model.preprocessing, "layout": LAYOUT[target.format]}
    shape = [1, size, size, 3] if LAYOUT[target.format] == "NHWC" else [1, 3, size, size]
    # Kept short: ai-edge-quantizer moves buffers of 1 KiB and more out of line (offset/size), which
    # edgefr.verify.read_tflite_metadata does not read yet. The arch JSON is in the export report.
    description = {"schema": EXPORTED_MODEL_SCHEMA, "format": target.format, "quantize": target.quantize,
                   "float_head": target.float_head, "input_shape": shape, "embedding_dim": model.embedding_dim,
                   "arch": model.arch.name}
    return {PREPROCESSING_KEY: json.dumps(preprocessing), MODEL_KEY: json.dumps(description)}


def _set_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def write_artifact(model, target: ExportTarget, path: Path, calibration: list[np.ndarray] | None) -> Path:
    """Write `model` as `target` to `path`, atomically: the file appears under its name only when complete."""
    from edgefr.convert import (
        compress_onnx_weights,
        compress_tflite_weights,
        convert_for_runtime,
        export_coreml,
    )
    from edgefr.verify import set_tflite_metadata

    size = model.preprocessing["size"]
    example = torch.zeros(1, 3, size, size)
    metadata = exported_metadata(model, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        if target.format == "coreml":
            export_coreml(model, example, staged, precision=target.quantize, metadata=metadata)
        else:
            runtime = RUNTIME[target.format]
            flow_dtype = "int8" if target.quantize == "int8" else "fp32"
            flow_file = convert_for_runtime(model, example, runtime, flow_dtype,
                                            Path(tmp) / f"flow{SUFFIX[target.format]}",
                                            calibration if flow_dtype == "int8" else None,
                                            float_head=target.float_head)
            # Metadata before weight compression: ai-edge-quantizer keeps it, while re-packing its output
            # (set_tflite_metadata) breaks the offset-addressed buffers it writes.
            if target.format == "onnx":
                _set_onnx_metadata(flow_file, metadata)
            else:
                for key, value in metadata.items():
                    set_tflite_metadata(flow_file, key, value.encode())
            if target.quantize in ("fp16", "int8-weights"):
                compress = compress_onnx_weights if target.format == "onnx" else compress_tflite_weights
                flow_file = compress(flow_file, Path(tmp) / f"compressed{SUFFIX[target.format]}", target.quantize)
            flow_file.replace(staged)
        if path.is_dir():
            shutil.rmtree(path)
        staged.replace(path)
    return path


def artifact_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def load_artifact_embedder(path: Path):
    """The exported file as an Embedder in its runtime, preprocessing read from its own metadata (no flags)."""
    if path.suffix == ".mlpackage":
        return load_coreml_embedder(path)
    if path.suffix == ".onnx":
        return load_batch1_onnx_embedder(path)
    from edgefr.verify import load_embedder

    return load_embedder(path)


def load_batch1_onnx_embedder(path: Path):
    """Adapter: the exported ONNX graph has batch 1 fixed (as profiled), and edgefr.teachers' loader gives up when a
    batch of 2 raises (it falls back to batch 1 only when the batch merges silently). Same preprocessing source:
    the file's `edgefr.preprocessing` metadata."""
    import onnx
    import onnxruntime as ort

    from edgefr.devices.agent import ort_session_options
    from edgefr.digests import file_sha256
    from edgefr.teachers import Teacher
    from edgefr.teachers.preprocessing import resolve_preprocessing

    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    spec = resolve_preprocessing(str(path), None, metadata.get(PREPROCESSING_KEY))
    session = ort.InferenceSession(str(path), ort_session_options(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    dim = int(np.prod(session.get_outputs()[0].shape[1:]))
    return Teacher(path.stem, spec, lambda batch: session.run(None, {input_name: batch})[0], dim, file_sha256(path),
                   max_batch=1)


def load_coreml_embedder(path: Path):
    """Adapter (edgefr.verify loads no Core ML): the emulated mlprogram behind the Teacher interface."""
    from edgefr.digests import file_sha256
    from edgefr.export.coreml_mil import MilExecutor, load_mil_program
    from edgefr.teachers import Teacher
    from edgefr.teachers.base import probe_embedding_dim
    from edgefr.teachers.preprocessing import resolve_preprocessing

    program, metadata = load_mil_program(path)
    spec = resolve_preprocessing(str(path), None, metadata.get(PREPROCESSING_KEY))
    executor = MilExecutor(program, str(path))

    def forward(batch: np.ndarray) -> np.ndarray:
        # The program's shapes are fixed at batch 1 (as on device): one image at a time.
        return np.concatenate([executor(batch[i:i + 1]) for i in range(len(batch))])

    dim, _ = probe_embedding_dim(forward, spec, path)
    weights = next(path.rglob("weight.bin"), None) or path / "Manifest.json"
    return Teacher(path.stem, spec, forward, dim, file_sha256(weights), max_batch=16)
