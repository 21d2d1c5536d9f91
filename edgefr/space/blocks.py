"""The building blocks of the face-recognition search space, and `BlockSpec`, the identity of one block.

A `BlockSpec` is what the latency table is keyed by: everything that changes the block's runtime graph
(type, input resolution, channels, stride, expansion, kernel, activation and residual) and nothing else.
Activation and residual belong to the identity because runtimes fuse them differently (ORT's PRelu is not
NCHWc-aware, TFLite int8 does not delegate PRELU to XNNPACK, a residual Add may stay float in int8 flows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ACTIVATIONS = ("relu", "prelu")
BLOCK_KINDS = ("stem", "dw", "ir", "head")


def make_activation(act: str | None, channels: int) -> nn.Module:
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU()
    if act == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + optional activation; `act=None` is a linear (projection) conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            make_activation(act, cout),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 / MobileFaceNet bottleneck: 1x1 expand, kxk depthwise, linear 1x1 project, skip if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel: int, act: str):
        super().__init__()
        hidden = cin * expansion
        self.body = nn.Sequential(
            ConvBNAct(cin, hidden, 1, act=act),
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act),
            ConvBNAct(hidden, cout, 1, act=None),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class EmbeddingHead(nn.Module):
    """MobileFaceNet head: 1x1 conv to `hidden`, global depthwise conv (GDConv), linear to the embedding, BN."""

    def __init__(self, cin: int, hidden: int, embedding: int, resolution: int, act: str):
        super().__init__()
        self.expand = ConvBNAct(cin, hidden, 1, act=act)
        self.gdconv = ConvBNAct(hidden, hidden, resolution, groups=hidden, act=None)
        self.linear = nn.Linear(hidden, embedding, bias=False)
        self.bn = nn.BatchNorm1d(embedding)
        # GDConv with padding k//2 on a kxk map would not reduce to 1x1: it must be an unpadded full-map conv.
        self.gdconv[0].padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdconv(self.expand(x))
        return self.bn(self.linear(torch.flatten(x, 1)))


@dataclass(frozen=True)
class BlockSpec:
    """One block at the shape where it occurs. `res` is the input height (= width)."""

    kind: str
    res: int
    cin: int
    cout: int
    stride: int = 1
    expansion: int = 1
    kernel: int = 3
    act: str = "prelu"
    hidden: int = 0  # head only: channels of the 1x1 conv before the GDConv

    @property
    def residual(self) -> bool:
        return self.kind == "ir" and self.stride == 1 and self.cin == self.cout

    @property
    def out_res(self) -> int:
        return 1 if self.kind == "head" else (self.res + self.stride - 1) // self.stride

    @property
    def key(self) -> str:
        """Stable, human-readable table key, e.g. `ir:r28:c64-128:s2:e4:k3:prelu:nores`."""
        parts = [self.kind, f"r{self.res}", f"c{self.cin}-{self.cout}", f"s{self.stride}", f"e{self.expansion}",
                 f"k{self.kernel}", self.act, "res" if self.residual else "nores"]
        if self.kind == "head":
            parts.append(f"h{self.hidden}")
        return ":".join(parts)

    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.cin, self.res, self.res)

    def as_dict(self) -> dict:
        return {**asdict(self), "residual": self.residual}

    @classmethod
    def from_dict(cls, d: dict) -> BlockSpec:
        """The inverse of `as_dict` (a latency table's `block` record)."""
        return cls(**{k: v for k, v in d.items() if k != "residual"})

    def build(self) -> nn.Module:
        if self.kind == "stem":
            return ConvBNAct(self.cin, self.cout, self.kernel, self.stride, act=self.act)
        if self.kind == "dw":
            return ConvBNAct(self.cin, self.cout, self.kernel, self.stride, groups=self.cin, act=self.act)
        if self.kind == "ir":
            return InvertedResidual(self.cin, self.cout, self.stride, self.expansion, self.kernel, self.act)
        if self.kind == "head":
            return EmbeddingHead(self.cin, self.hidden, self.cout, self.res, self.act)
        raise ValueError(f"unknown block kind {self.kind!r}; expected one of {BLOCK_KINDS}")
