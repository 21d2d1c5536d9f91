"""`FaceNet`: the PyTorch module an `Arch` describes. Input: NCHW float RGB, scaled as (x - 127.5) / 128."""

from __future__ import annotations

import torch
from torch import nn

from edgefr.space.arch import Arch

# The input convention of every student edgefr builds; teachers declare their own (see edgefr.teachers).
STUDENT_PREPROCESSING = {"channel_order": "RGB", "mean": 127.5, "std": 128.0, "layout": "NCHW", "size": 112}


class FaceNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        specs = arch.block_specs()
        self.stem = specs[0].build()
        stages, position = [], 1
        for stage in arch.stages:
            stages.append(nn.Sequential(*(spec.build() for spec in specs[position:position + len(stage.layers)])))
            position += len(stage.layers)
        self.stages = nn.ModuleList(stages)
        self.head = specs[-1].build()
        self.embedding_dim = arch.embedding
        self.preprocessing = dict(STUDENT_PREPROCESSING)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before the head (N, C, 7, 7)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
