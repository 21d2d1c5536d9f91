"""Parameter and FLOP counts. FLOPs are torch's own count (FlopCounterMode): 2 x MACs of convs and matmuls."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int = 112) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops()
