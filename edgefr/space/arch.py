"""An architecture is a small, versioned JSON document; `Arch` is its in-memory form.

```json
{"schema": "edgefr.arch/1", "name": "mobilefacenet", "input_size": 112, "embedding": 128,
 "stem": {"act": "prelu"},
 "stages": [{"width": 64, "layers": [{"block": "dw", "kernel": 3, "act": "prelu"}]},
            {"width": 64, "layers": [{"block": "ir", "expansion": 2, "kernel": 3, "act": "prelu"}, ...]}, ...],
 "head": {"width": 512, "act": "prelu"}}
```
The stem (3x3 stride-2 conv) outputs `stages[0].width` channels; stage 0 runs at the stem's resolution and
every later stage starts with a stride-2 layer. Whether an architecture belongs to a search space is checked
by `SearchSpace.validate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefr.errors import EdgefrError, read_json_file
from edgefr.space.blocks import BlockSpec

ARCH_SCHEMA = "edgefr.arch/1"


@dataclass(frozen=True)
class LayerChoice:
    """What is searched per layer: block type, expansion (IR only), kernel, activation."""

    block: str
    kernel: int = 3
    act: str = "prelu"
    expansion: int = 1

    def as_dict(self) -> dict:
        d = {"block": self.block, "kernel": self.kernel, "act": self.act}
        if self.block == "ir":
            d["expansion"] = self.expansion
        return d

    @property
    def label(self) -> str:
        e = f"e{self.expansion}" if self.block == "ir" else ""
        return f"{self.block}{e}k{self.kernel}-{self.act}"


@dataclass(frozen=True)
class Stage:
    width: int
    layers: tuple[LayerChoice, ...]


@dataclass(frozen=True)
class Arch:
    name: str
    stem_act: str
    stages: tuple[Stage, ...]
    head_width: int
    head_act: str
    embedding: int
    input_size: int = 112

    def block_specs(self) -> list[BlockSpec]:
        """The chain of blocks, each at the shape where it occurs: what the latency table is queried with."""
        res = self.input_size
        specs = [BlockSpec("stem", res, 3, self.stages[0].width, stride=2, kernel=3, act=self.stem_act)]
        res //= 2
        cin = self.stages[0].width
        for index, stage in enumerate(self.stages):
            for position, layer in enumerate(stage.layers):
                stride = 2 if index > 0 and position == 0 else 1
                specs.append(BlockSpec(layer.block, res, cin, stage.width, stride=stride,
                                       expansion=layer.expansion if layer.block == "ir" else 1,
                                       kernel=layer.kernel, act=layer.act))
                res = specs[-1].out_res
                cin = stage.width
            if index > 0 and not stage.layers:
                raise EdgefrError(f"arch {self.name!r}: stage {index} has no layers; "
                                  "stages after the first need at least one")
        specs.append(BlockSpec("head", res, cin, self.embedding, kernel=res, act=self.head_act, hidden=self.head_width))
        return specs

    def to_dict(self) -> dict:
        return {
            "schema": ARCH_SCHEMA,
            "name": self.name,
            "input_size": self.input_size,
            "embedding": self.embedding,
            "stem": {"act": self.stem_act},
            "stages": [{"width": s.width, "layers": [layer.as_dict() for layer in s.layers]} for s in self.stages],
            "head": {"width": self.head_width, "act": self.head_act},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def depths(self) -> tuple[int, ...]:
        return tuple(len(s.layers) for s in self.stages)

    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)


def _get(d: dict, key: str, kind: type, where: str, source: str, default=None):
    if key not in d:
        if default is not None:
            return default
        raise EdgefrError(f"{source}: {where} is missing the field {key!r}")
    value = d[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EdgefrError(f"{source}: {where}.{key} must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise EdgefrError(f"{source}: {where}.{key} must be a string, got {value!r}")
    if kind in (list, dict) and not isinstance(value, kind):
        raise EdgefrError(f"{source}: {where}.{key} must be a JSON {'array' if kind is list else 'object'}")
    return value


def arch_from_dict(d: dict, source: str = "arch") -> Arch:
    """Parse an arch document; `source` (a file name) is named in every error."""
    if not isinstance(d, dict):
        raise EdgefrError(f"{source}: an architecture must be a JSON object")
    schema = d.get("schema", ARCH_SCHEMA)
    if schema != ARCH_SCHEMA:
        raise EdgefrError(f"{source}: schema {schema!r} is not supported; expected {ARCH_SCHEMA!r}")
    stem = _get(d, "stem", dict, "arch", source)
    head = _get(d, "head", dict, "arch", source)
    stages = []
    for i, s in enumerate(_get(d, "stages", list, "arch", source)):
        if not isinstance(s, dict):
            raise EdgefrError(f"{source}: stages[{i}] must be a JSON object")
        layers = []
        for j, layer in enumerate(_get(s, "layers", list, f"stages[{i}]", source)):
            where = f"stages[{i}].layers[{j}]"
            if not isinstance(layer, dict):
                raise EdgefrError(f"{source}: {where} must be a JSON object")
            block = _get(layer, "block", str, where, source)
            layers.append(LayerChoice(block=block, kernel=_get(layer, "kernel", int, where, source),
                                      act=_get(layer, "act", str, where, source),
                                      expansion=_get(layer, "expansion", int, where, source) if block == "ir" else 1))
        stages.append(Stage(width=_get(s, "width", int, f"stages[{i}]", source), layers=tuple(layers)))
    return Arch(
        name=_get(d, "name", str, "arch", source, default=Path(source).stem),
        stem_act=_get(stem, "act", str, "stem", source),
        stages=tuple(stages),
        head_width=_get(head, "width", int, "head", source),
        head_act=_get(head, "act", str, "head", source),
        embedding=_get(d, "embedding", int, "arch", source),
        input_size=_get(d, "input_size", int, "arch", source, default=112),
    )


def load_arch_file(path: str | Path) -> Arch:
    data = read_json_file(path, "architecture file", f"expected an {ARCH_SCHEMA} document")
    return arch_from_dict(data, str(path))
