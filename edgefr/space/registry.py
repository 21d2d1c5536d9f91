"""A timm-style registry of named architectures and the single entry point `create_model(spec)`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from edgefr.errors import EdgefrError
from edgefr.space.arch import Arch, LayerChoice, Stage, arch_from_dict, load_arch_file
from edgefr.space.model import FaceNet
from edgefr.space.searchspace import MFN_SPACE, SearchSpace

_REGISTRY: dict[str, Callable[[], Arch]] = {}


def register_model(fn: Callable[[], Arch]) -> Callable[[], Arch]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _nearest(value: float, allowed: tuple[int, ...]) -> int:
    return min(allowed, key=lambda a: (abs(a - value), a))


def scaled_mobilefacenet(width: float = 1.0, depth: float = 1.0, act: str = "prelu", embedding: int = 128,
                         space: SearchSpace = MFN_SPACE, name: str | None = None) -> Arch:
    """MobileFaceNet (Chen et al. 2018) with widths and depths scaled, snapped to the nearest point of `space`.

    At width=depth=1 and act="prelu" this is the published network: 0.99M parameters, ~221M MACs.
    """
    base = [(64, [(3, 1, "dw")]),
            (64, [(3, 2, "ir")] * 5),
            (128, [(3, 4, "ir")] + [(3, 2, "ir")] * 6),
            (128, [(3, 4, "ir")] + [(3, 2, "ir")] * 2)]
    stages = []
    for (base_width, layers), stage_space in zip(base, space.stages):
        n = _nearest(max(1, math.ceil(len(layers) * depth)), stage_space.depths)
        # Depth scaling keeps the stage's first (downsampling) layer and repeats the stage's regular layer.
        chosen = [layers[0]] + [layers[-1]] * (n - 1)
        stages.append(Stage(_nearest(base_width * width, stage_space.widths),
                            tuple(LayerChoice(b, kernel=k, act=act, expansion=e if b == "ir" else 1)
                                  for k, e, b in chosen)))
    label = name or f"mobilefacenet_w{width:g}_d{depth:g}_{act}"
    return space.validate(Arch(name=label, stem_act=act, stages=tuple(stages), head_width=512, head_act=act,
                               embedding=embedding, input_size=space.input_size))


@register_model
def mobilefacenet() -> Arch:
    return scaled_mobilefacenet(name="mobilefacenet")


@register_model
def mobilefacenet_512() -> Arch:
    return scaled_mobilefacenet(embedding=512, name="mobilefacenet_512")


@register_model
def mobilefacenet_relu() -> Arch:
    return scaled_mobilefacenet(act="relu", name="mobilefacenet_relu")


@register_model
def mobilefacenet_w050() -> Arch:
    return scaled_mobilefacenet(width=0.5, name="mobilefacenet_w050")


@register_model
def mobilefacenet_w075() -> Arch:
    return scaled_mobilefacenet(width=0.75, name="mobilefacenet_w075")


@register_model
def mobilefacenet_w125() -> Arch:
    return scaled_mobilefacenet(width=1.25, name="mobilefacenet_w125")


@register_model
def mobilefacenet_d050() -> Arch:
    return scaled_mobilefacenet(depth=0.5, name="mobilefacenet_d050")


@register_model
def mobilefacenet_w050_d050_relu() -> Arch:
    return scaled_mobilefacenet(width=0.5, depth=0.5, act="relu", name="mobilefacenet_w050_d050_relu")


def resolve_arch(spec: str | Path | dict | Arch, space: SearchSpace = MFN_SPACE) -> Arch:
    """An `Arch` from a registered name, an arch JSON file, a dict or an `Arch`, checked against `space`."""
    if isinstance(spec, Arch):
        return space.validate(spec)
    if isinstance(spec, dict):
        return space.validate(arch_from_dict(spec))
    text = str(spec)
    if text in _REGISTRY:
        return _REGISTRY[text]()
    if text.endswith(".json") or Path(text).exists():
        return space.validate(load_arch_file(text), source=text)
    raise EdgefrError(f"unknown architecture {text!r}: not a registered name ({', '.join(list_models())}) "
                      "nor an arch JSON file")


def create_model(spec: str | Path | dict | Arch, space: SearchSpace = MFN_SPACE) -> FaceNet:
    """Build the PyTorch module for a registered name, an arch JSON file/dict or an `Arch`."""
    return FaceNet(resolve_arch(spec, space))
