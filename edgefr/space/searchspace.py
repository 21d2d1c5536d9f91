"""The declarative face-recognition search space (MobileFaceNet macro-architecture, 112x112 input).

Searchable: per stage the width and the number of layers (fewer layers = the rest skipped); per layer the
block type, expansion, kernel and activation; the stem's and head's activation. The embedding size is the
user's choice (128 or 512), not searched. The published MobileFaceNet is a point of this space.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

from edgefr.errors import EdgefrError
from edgefr.space.arch import Arch, LayerChoice, Stage
from edgefr.space.blocks import ACTIVATIONS, BlockSpec


@dataclass(frozen=True)
class StageSpace:
    res: int  # output resolution of the stage
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    candidates: tuple[LayerChoice, ...]


def _ir_candidates(expansions=(2, 4), kernels=(3, 5)) -> tuple[LayerChoice, ...]:
    return tuple(LayerChoice("ir", kernel=k, act=a, expansion=e)
                 for e, k, a in itertools.product(expansions, kernels, ACTIVATIONS))


def _dw_candidates(kernels=(3, 5)) -> tuple[LayerChoice, ...]:
    return tuple(LayerChoice("dw", kernel=k, act=a) for k, a in itertools.product(kernels, ACTIVATIONS))


@dataclass(frozen=True)
class SearchSpace:
    name: str
    input_size: int
    stem_acts: tuple[str, ...]
    stages: tuple[StageSpace, ...]
    head_widths: tuple[int, ...]
    head_acts: tuple[str, ...]
    embeddings: tuple[int, ...]

    def validate(self, arch: Arch, source: str | None = None) -> Arch:
        """Raise a one-line `EdgefrError` naming the first field of `arch` outside this space."""
        where = source or f"arch {arch.name!r}"

        def fail(field: str, value, allowed) -> None:
            raise EdgefrError(f"{where}: {field}={value!r} is outside the search space {self.name!r} "
                              f"(allowed: {', '.join(map(str, allowed))})")

        if arch.input_size != self.input_size:
            fail("input_size", arch.input_size, [self.input_size])
        if arch.stem_act not in self.stem_acts:
            fail("stem.act", arch.stem_act, self.stem_acts)
        if len(arch.stages) != len(self.stages):
            fail("number of stages", len(arch.stages), [len(self.stages)])
        for i, (stage, space) in enumerate(zip(arch.stages, self.stages)):
            if stage.width not in space.widths:
                fail(f"stages[{i}].width", stage.width, space.widths)
            if len(stage.layers) not in space.depths:
                fail(f"stages[{i}] depth", len(stage.layers), space.depths)
            for j, layer in enumerate(stage.layers):
                if layer not in space.candidates:
                    fail(f"stages[{i}].layers[{j}]", layer.as_dict(), [c.label for c in space.candidates])
        if arch.head_width not in self.head_widths:
            fail("head.width", arch.head_width, self.head_widths)
        if arch.head_act not in self.head_acts:
            fail("head.act", arch.head_act, self.head_acts)
        if arch.embedding not in self.embeddings:
            fail("embedding", arch.embedding, self.embeddings)
        return arch

    def restricted(self, activations: tuple[str, ...] | None = None, kernels: tuple[int, ...] | None = None,
                   expansions: tuple[int, ...] | None = None) -> SearchSpace:
        """The sub-space whose blocks use only these activations, kernel sizes and expansions (None: all); the
        activations apply to the stem and head too. Same name: its blocks are a subset of the space's, so the
        space's latency tables cover it."""
        def check(flag: str, given, allowed):
            if given is None:
                return tuple(allowed)
            unknown = [str(v) for v in given if v not in allowed]
            if unknown or not given:
                raise EdgefrError(f"{flag}: {', '.join(unknown) or 'none given'}; expected a comma-separated subset "
                                  f"of {', '.join(map(str, allowed))}")
            return tuple(v for v in allowed if v in given)

        candidates = [c for stage in self.stages for c in stage.candidates]
        acts = check("--activations", activations, self.stem_acts)
        kernels = check("--kernels", kernels, sorted({c.kernel for c in candidates}))
        expansions = check("--expansions", expansions, sorted({c.expansion for c in candidates if c.block == "ir"}))
        def keep(c: LayerChoice) -> bool:
            return c.act in acts and c.kernel in kernels and (c.block != "ir" or c.expansion in expansions)

        return replace(self, stem_acts=acts, head_acts=tuple(a for a in self.head_acts if a in acts),
                       stages=tuple(replace(stage, candidates=tuple(filter(keep, stage.candidates)))
                                    for stage in self.stages))

    def stage_input_widths(self, index: int) -> tuple[int, ...]:
        """Widths that can enter stage `index` (stage 0 is fed by the stem at its own width)."""
        return self.stages[max(index - 1, 0)].widths if index > 0 else self.stages[0].widths

    def stage_input_res(self, index: int) -> int:
        return self.stages[index - 1].res if index > 0 else self.stages[0].res

    def layer_spec(self, stage: int, position: int, cin: int, cout: int, choice: LayerChoice) -> BlockSpec:
        stride = 2 if stage > 0 and position == 0 else 1
        res = self.stage_input_res(stage) if position == 0 else self.stages[stage].res
        return BlockSpec(choice.block, res, cin, cout, stride=stride,
                         expansion=choice.expansion if choice.block == "ir" else 1,
                         kernel=choice.kernel, act=choice.act)

    def stem_spec(self, width: int, act: str) -> BlockSpec:
        return BlockSpec("stem", self.input_size, 3, width, stride=2, kernel=3, act=act)

    def head_spec(self, cin: int, hidden: int, act: str, embedding: int) -> BlockSpec:
        res = self.stages[-1].res
        return BlockSpec("head", res, cin, embedding, kernel=res, act=act, hidden=hidden)

    def all_block_specs(self, embeddings: tuple[int, ...] | None = None) -> list[BlockSpec]:
        """Every distinct block of the space at every shape where it can occur (the rows of a full LUT)."""
        specs: dict[str, BlockSpec] = {}

        def add(spec: BlockSpec) -> None:
            specs.setdefault(spec.key, spec)

        for width, act in itertools.product(self.stages[0].widths, self.stem_acts):
            add(self.stem_spec(width, act))
        for i, stage in enumerate(self.stages):
            for choice in stage.candidates:
                for cin in self.stage_input_widths(i):
                    for cout in stage.widths:
                        if i == 0 and cin != cout:
                            continue  # stage 0 runs at the stem's width
                        add(self.layer_spec(i, 0, cin, cout, choice))
                if max(stage.depths) > 1:
                    for width in stage.widths:
                        add(self.layer_spec(i, 1, width, width, choice))
        for cin, hidden, act, emb in itertools.product(self.stages[-1].widths, self.head_widths, self.head_acts,
                                                       embeddings or self.embeddings):
            add(self.head_spec(cin, hidden, act, emb))
        return list(specs.values())

    def sample(self, rng: random.Random, name: str = "random", embedding: int | None = None) -> Arch:
        """A uniformly random architecture of the space (per decision), for benchmarks and calibration."""
        stages = []
        for stage in self.stages:
            depth = rng.choice(stage.depths)
            stages.append(Stage(rng.choice(stage.widths), tuple(rng.choice(stage.candidates) for _ in range(depth))))
        return Arch(name=name, stem_act=rng.choice(self.stem_acts), stages=tuple(stages),
                    head_width=rng.choice(self.head_widths), head_act=rng.choice(self.head_acts),
                    embedding=embedding or self.embeddings[0], input_size=self.input_size)


MFN_SPACE = SearchSpace(
    name="mfn112-v1",
    input_size=112,
    stem_acts=ACTIVATIONS,
    stages=(
        StageSpace(res=56, widths=(32, 48, 64, 80), depths=(0, 1, 2), candidates=_dw_candidates() + _ir_candidates()),
        StageSpace(res=28, widths=(32, 48, 64, 80), depths=(1, 2, 3, 4, 5, 6), candidates=_ir_candidates()),
        StageSpace(res=14, widths=(64, 96, 128, 160), depths=(1, 2, 3, 4, 5, 6, 7, 8), candidates=_ir_candidates()),
        StageSpace(res=7, widths=(64, 96, 128, 160), depths=(1, 2, 3, 4), candidates=_ir_candidates()),
    ),
    head_widths=(512,),
    head_acts=ACTIVATIONS,
    embeddings=(128, 512),
)

SPACES = {MFN_SPACE.name: MFN_SPACE}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise EdgefrError(f"unknown search space {name!r}; known: {', '.join(SPACES)}") from None
