"""Evaluation: load any face model as an `Embedder` and measure verification accuracy on pairs."""

from __future__ import annotations

from pathlib import Path

from edgefr.teachers import Teacher, load_teacher
from edgefr.verify.protocol import (
    FARS,
    Embedder,
    VerificationResult,
    best_threshold,
    embed_paths,
    kfold_accuracy,
    paired_accuracy_drop,
    tar_at_far,
    verify_pairs,
)
from edgefr.verify.tflite import load_tflite_embedder, read_tflite_metadata, set_tflite_metadata


def load_embedder(spec: str | Path, preprocessing: dict | None = None) -> Teacher:
    """Anything `load_teacher` takes, plus `.tflite` files; preprocessing comes from the model's metadata
    when present (ONNX metadata_props / TFLite metadata `edgefr.preprocessing`) unless overridden."""
    if str(spec).lower().endswith(".tflite"):
        return load_tflite_embedder(spec, preprocessing)
    return load_teacher(spec, preprocessing)


__all__ = [
    "FARS",
    "Embedder",
    "VerificationResult",
    "best_threshold",
    "embed_paths",
    "kfold_accuracy",
    "load_embedder",
    "load_tflite_embedder",
    "paired_accuracy_drop",
    "read_tflite_metadata",
    "set_tflite_metadata",
    "tar_at_far",
    "verify_pairs",
]
