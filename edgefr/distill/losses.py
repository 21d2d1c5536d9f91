"""Training objectives: margin-softmax heads and the knowledge-distillation (KD) terms, selectable by name.

Every method adds one term to the student's loss; `build_objective` combines the names a user passes
(`--kd proxyless,mimic`) into one `Objective` module (so DistributedDataParallel synchronises the heads'
weights together with the student's):

- `arcface` / `cosface`: a learned margin-softmax classifier over the training identities (the baseline;
  `none` is an alias of `arcface`). ArcFace: Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for
  Deep Face Recognition"; CosFace: Wang et al. 2018, "CosFace: Large Margin Cosine Loss".
- `mimic`: PocketNet-style embedding mimic (Boutros et al. 2022, "PocketNet: Extreme Lightweight Face
  Recognition Network using Neural Architecture Search and Multi-Step Knowledge Distillation"): the margin
  loss plus lambda * MSE between the L2-normalised student embedding (linearly projected when dimensions
  differ) and the L2-normalised teacher embedding.
- `proxyless`: ProxylessKD (Shi et al. 2020, "ProxylessKD: Direct Knowledge Distillation with Inherited
  Classifier for Face Recognition"): the margin softmax runs against the teacher's classifier, frozen, so the
  student is trained directly in the teacher's embedding space. It replaces the learned classifier.
- `neuron`: Luo et al. 2016, "Face Model Compression by Distilling Knowledge from Neurons": regress the
  student onto the teacher neurons that are discriminative for identity and decorrelated (`select_neurons`).
- `multistep`: PocketNet multi-step KD. It changes *which teacher* produces the targets (a teacher checkpoint
  of matching training maturity per student epoch, see `edgefr.distill.multistep`); its loss is the mimic term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgefr.errors import EdgefrError

MARGIN_HEADS = ("arcface", "cosface")
KD_METHODS = ("mimic", "proxyless", "neuron", "multistep")
METHOD_NAMES = ("none", *MARGIN_HEADS, *KD_METHODS)


class MarginSoftmax(nn.Module):
    """Cross-entropy over `scale * cos(theta)` with a margin on the target class.

    `kind="arcface"`: target logit cos(theta + m), with the easy-margin-safe fallback of insightface: when
    theta + m would pass pi (cos(theta) < cos(pi - m)) the logit becomes cos(theta) - m*sin(m), which keeps it
    monotonic in theta. `kind="cosface"`: target logit cos(theta) - m.
    With `weight` given the class centres are that tensor, frozen (ProxylessKD); otherwise they are learned.
    """

    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "arcface", scale: float = 64.0,
                 margin: float | None = None, weight: torch.Tensor | None = None):
        super().__init__()
        if kind not in MARGIN_HEADS:
            raise EdgefrError(f"unknown margin head {kind!r}; expected one of {', '.join(MARGIN_HEADS)}")
        self.kind = kind
        self.scale = scale
        self.margin = margin if margin is not None else (0.5 if kind == "arcface" else 0.35)
        if weight is None:
            self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
            nn.init.normal_(self.weight, std=0.01)
        else:
            self.register_buffer("weight", F.normalize(weight.detach().float(), dim=1))

    def logits(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled cosines; with `labels`, the target class carries the margin (training logits)."""
        cosine = F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight, dim=1))
        if labels is None:
            return self.scale * cosine
        target = cosine.gather(1, labels[:, None])
        if self.kind == "cosface":
            margined = target - self.margin
        else:
            sine = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
            with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
            margined = torch.where(target > math.cos(math.pi - self.margin), with_margin,
                                   target - self.margin * math.sin(self.margin))
        return self.scale * cosine.scatter(1, labels[:, None], margined)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embedding, labels), labels)


def projection(student_dim: int, teacher_dim: int) -> nn.Module:
    """A learned linear map into the teacher's space when the dimensions differ, else the identity."""
    return nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)


class EmbeddingMimic(nn.Module):
    """PocketNet mimic term: mean squared error between L2-normalised (projected) student and teacher embeddings.

    On unit vectors the MSE equals 2 (1 - cos) / D, so minimising it maximises the student-teacher cosine."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.project = projection(student_dim, teacher_dim)

    def forward(self, embedding: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(F.normalize(self.project(embedding.float()), dim=1), F.normalize(teacher.float(), dim=1))


def fisher_scores(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-way ANOVA F statistic of every embedding dimension across identities (between / within variance)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.zeros((len(classes), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings)
    means = sums / counts[:, None]
    grand = embeddings.mean(axis=0)
    between = (counts[:, None] * (means - grand) ** 2).sum(axis=0) / max(len(classes) - 1, 1)
    within = ((embeddings - means[inverse]) ** 2).sum(axis=0) / max(len(embeddings) - len(classes), 1)
    return between / np.maximum(within, 1e-12)


@dataclass(frozen=True)
class NeuronSelection:
    """The teacher neurons the `neuron` method regresses onto, with the statistics that chose them."""

    indices: np.ndarray  # selected embedding dimensions, most discriminative first
    scores: np.ndarray  # F score of every teacher dimension
    mean: np.ndarray  # per-dimension mean and std of the teacher embeddings, to standardise the targets
    std: np.ndarray
    max_correlation: float


def select_neurons(embeddings: np.ndarray, labels: np.ndarray, count: int | None = None,
                   max_correlation: float = 0.5) -> NeuronSelection:
    """Luo et al. 2016's selection of teacher neurons to distil: discriminative and weakly correlated.

    Rule: rank dimensions by their ANOVA F score across identities (discriminative = large between-identity
    variance relative to within-identity variance); walk down that ranking and keep a dimension only if its
    absolute Pearson correlation with every dimension kept so far is below `max_correlation` (a correlated
    neuron carries little new information and would double the weight of what it duplicates). Stop after
    `count` dimensions (default: half of the teacher's).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    count = count or max(1, embeddings.shape[1] // 2)
    scores = fisher_scores(embeddings, labels)
    correlation = np.abs(np.nan_to_num(np.corrcoef(embeddings, rowvar=False)))
    chosen: list[int] = []
    for dim in np.argsort(-scores, kind="stable"):
        if all(correlation[dim, kept] < max_correlation for kept in chosen):
            chosen.append(int(dim))
            if len(chosen) == count:
                break
    return NeuronSelection(np.array(chosen, dtype=np.int64), scores, embeddings.mean(axis=0),
                           np.maximum(embeddings.std(axis=0), 1e-6), max_correlation)


class NeuronRegression(nn.Module):
    """Luo et al. 2016: MSE between a linear read-out of the student embedding and the selected teacher neurons,
    standardised per neuron so that each selected neuron weighs the same whatever its scale in the teacher."""

    def __init__(self, student_dim: int, selection: NeuronSelection):
        super().__init__()
        self.register_buffer("indices", torch.as_tensor(selection.indices))
        self.register_buffer("mean", torch.as_tensor(selection.mean[selection.indices], dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(selection.std[selection.indices], dtype=torch.float32))
        self.readout = nn.Linear(student_dim, len(selection.indices))

    def forward(self, embedding: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        target = (teacher.float()[:, self.indices] - self.mean) / self.std
        return F.mse_loss(self.readout(embedding.float()), target)


def parse_methods(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`"proxyless,mimic"` -> ("proxyless", "mimic"); "none"/"" -> (); unknown names are an EdgefrError."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise EdgefrError(f"unknown --kd method {unknown[0]!r}; expected a comma-separated list of "
                          f"{', '.join(METHOD_NAMES)}")
    heads = [n for n in names if n in MARGIN_HEADS]
    if len(heads) > 1:
        raise EdgefrError(f"--kd names two margin heads ({', '.join(heads)}); choose one")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def needs_teacher(methods: tuple[str, ...]) -> bool:
    return any(m in KD_METHODS for m in methods)


class Objective(nn.Module):
    """The student plus every loss module: one forward gives the total loss and its named parts.

    Wrapping the student and the heads in one module lets DistributedDataParallel average all their gradients.
    """

    def __init__(self, student: nn.Module, methods: tuple[str, ...], num_classes: int,
                 teacher_dim: int | None = None, class_centres: torch.Tensor | None = None,
                 neurons: NeuronSelection | None = None, mimic_weight: float = 100.0,
                 neuron_weight: float = 1.0, margin: float | None = None, scale: float = 64.0,
                 margin_weight: float = 1.0):
        super().__init__()
        self.student = student
        self.methods = methods
        dim = student.embedding_dim
        kind = next((m for m in methods if m in MARGIN_HEADS), "arcface")
        if "proxyless" in methods:
            if class_centres is None:
                raise EdgefrError("proxyless KD needs the teacher's class centres (a classifier or cached embeddings)")
            self.to_teacher = projection(dim, class_centres.shape[1])
            self.classifier = MarginSoftmax(class_centres.shape[1], num_classes, kind, scale, margin,
                                            weight=class_centres)
        else:
            self.to_teacher = nn.Identity()
            self.classifier = MarginSoftmax(dim, num_classes, kind, scale, margin)
        if needs_teacher(methods) and teacher_dim is None:
            raise EdgefrError(f"--kd {','.join(methods)} needs a teacher")
        if "neuron" in methods and neurons is None:
            raise EdgefrError("neuron KD needs the selected teacher neurons (select_neurons)")
        self.mimic = EmbeddingMimic(dim, teacher_dim) if {"mimic", "multistep"} & set(methods) else None
        self.neuron = NeuronRegression(dim, neurons) if "neuron" in methods else None
        self.mimic_weight = mimic_weight
        self.margin_weight = margin_weight
        self.neuron_weight = neuron_weight

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        embedding = self.student(images).float()
        # The student may run under autocast; cosines times scale 64 need float32 precision.
        with torch.autocast(embedding.device.type, enabled=False):
            parts = {"margin": self.margin_weight * self.classifier(self.to_teacher(embedding), labels)}
            if self.mimic is not None:
                parts["mimic"] = self.mimic_weight * self.mimic(embedding, teacher)
            if self.neuron is not None:
                parts["neuron"] = self.neuron_weight * self.neuron(embedding, teacher)
        return sum(parts.values()), parts
