"""`Teacher`: a face model behind one call, `embed(uint8 NHWC RGB) -> float32 [N, D]`, that knows its own
input convention (see edgefr.teachers.preprocessing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefr.errors import EdgefrError
from edgefr.teachers.preprocessing import check_images, preprocess

Forward = Callable[[np.ndarray], np.ndarray]


class Teacher:
    """A model wrapped with its preprocessing. `forward` maps a preprocessed float32 batch of at most
    `max_batch` images to raw embeddings (any trailing 1x1 dims are flattened away)."""

    def __init__(self, name: str, preprocessing: dict, forward: Forward, embedding_dim: int, fingerprint: str,
                 max_batch: int = 64, classifier=None):
        self.name = name
        self.preprocessing = preprocessing
        self.embedding_dim = embedding_dim
        self.fingerprint = fingerprint  # identifies the weights, for embedding caches
        self.max_batch = max_batch
        self.classifier = classifier
        self._forward = forward

    def __repr__(self) -> str:
        return f"Teacher({self.name!r}, dim={self.embedding_dim}, preprocessing={self.preprocessing})"

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Raw (not normalized) float32 embeddings [N, D] of uint8 [N, H, W, 3] RGB faces."""
        images = check_images(images)
        out = np.empty((len(images), self.embedding_dim), np.float32)
        for start in range(0, len(images), self.max_batch):
            batch = preprocess(images[start:start + self.max_batch], self.preprocessing)
            out[start:start + len(batch)] = self._forward(batch).reshape(len(batch), -1)
        return out


def probe_embedding_dim(forward: Forward, preprocessing: dict, source: str | Path) -> tuple[int, bool]:
    """(embedding size, whether a batch of 2 works): some graphs fix batch 1 in their input (exports made for
    on-device latency) or in a Reshape (which silently merges a batch into one row); they run one image at a
    time."""
    size = preprocessing["size"]
    grey = np.full((2, size, size, 3), 128, np.uint8)
    grey[1] = 64
    try:
        out = forward(preprocess(grey, preprocessing))
        if out.shape[0] == 2:
            return int(np.prod(out.shape[1:])), True
    except Exception:  # noqa: BLE001 - a graph with a fixed batch of 1 refuses two images: try one below
        pass
    try:
        return int(np.prod(forward(preprocess(grey[:1], preprocessing)).shape[1:])), False
    except Exception as exc:  # each runtime reports a wrong input shape or layout with its own error type
        raise EdgefrError(f"{source}: the model does not accept {preprocessing['layout']} {size}x{size} input "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class EnsembleTeacher(Teacher):
    """Several teachers as one: the concatenation of each member's L2-normalized embedding."""

    def __init__(self, members: list[Teacher]):
        self.members = members
        super().__init__(name="+".join(m.name for m in members),
                         preprocessing={"members": [m.preprocessing for m in members]},
                         forward=self._refuse_float_input, embedding_dim=sum(m.embedding_dim for m in members),
                         fingerprint="+".join(m.fingerprint for m in members))

    @staticmethod
    def _refuse_float_input(batch: np.ndarray) -> np.ndarray:
        raise TypeError("an ensemble has no single preprocessed input; call embed() with uint8 images")

    def embed(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([l2_normalize(m.embed(images)) for m in self.members], axis=1)
