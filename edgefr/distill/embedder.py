"""`ModuleEmbedder`: an in-memory PyTorch face model seen through the `Embedder` interface of `edgefr.verify`
and `edgefr.teachers` (`.embed(uint8 NHWC RGB) -> float32 [N, D]`, `.preprocessing`, `.name`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_model_input(images: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """uint8 NCHW RGB -> float NCHW scaled as the model's preprocessing declares ((x - mean) / std)."""
    return (images.float() - preprocessing["mean"]) / preprocessing["std"]


class ModuleEmbedder:
    """Embeds with `model` in eval mode, in batches, on the model's device (training mode is restored after)."""

    def __init__(self, model: nn.Module, name: str, batch_size: int = 64):
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.preprocessing = dict(model.preprocessing)
        self.embedding_dim = model.embedding_dim

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        batches = []
        for start in range(0, len(images), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size])).permute(0, 3, 1, 2)
            batches.append(self.model(to_model_input(chunk.to(device), self.preprocessing)).float().cpu())
        self.model.train(was_training)
        return torch.cat(batches).numpy() if batches else np.zeros((0, self.embedding_dim), np.float32)
