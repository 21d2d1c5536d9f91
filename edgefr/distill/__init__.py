"""Distillation: margin-softmax training and knowledge-distillation methods (`losses`), and the training engine
(`distill`) that the CLI (`edgefr distill`, `edgefr train`) and the architecture search call."""

from edgefr.distill.embedder import ModuleEmbedder
from edgefr.distill.engine import SHORT_RUN_RECIPE, DistillResult, TrainConfig, distill
from edgefr.distill.losses import (KD_METHODS, MARGIN_HEADS, METHOD_NAMES, EmbeddingMimic, MarginSoftmax,
                                   NeuronRegression, NeuronSelection, Objective, fisher_scores, parse_methods,
                                   select_neurons)
from edgefr.distill.multistep import checkpoint_for_epoch, teacher_checkpoints

__all__ = [
    "DistillResult", "EmbeddingMimic", "KD_METHODS", "MARGIN_HEADS", "METHOD_NAMES", "MarginSoftmax", "ModuleEmbedder",
    "NeuronRegression", "NeuronSelection", "Objective", "SHORT_RUN_RECIPE", "TrainConfig", "checkpoint_for_epoch",
    "distill",
    "fisher_scores", "parse_methods", "select_neurons", "teacher_checkpoints",
]
