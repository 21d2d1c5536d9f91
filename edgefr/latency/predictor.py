"""Latency prediction from a table: per-block sum + calibration, for a discrete arch or (differentiably) for
a distribution over architectures (the search's penalty term, FBNet/ProxylessNAS style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgefr.errors import EdgefrError
from edgefr.latency.lut import LatencyTable
from edgefr.space.arch import Arch
from edgefr.space.blocks import BlockSpec
from edgefr.space.searchspace import SearchSpace


@dataclass(frozen=True)
class BlockLatency:
    spec: BlockSpec
    raw_ms: float  # as measured standalone
    ms: float  # calibrated share of the whole-net prediction


@dataclass(frozen=True)
class LatencyPrediction:
    total_ms: float
    raw_sum_ms: float
    offset_ms: float
    calibrated: bool
    blocks: tuple[BlockLatency, ...]


class LatencyPredictor:
    def __init__(self, table: LatencyTable):
        self.table = table
        calibration = table.calibration or {}
        self.calibrated = bool(calibration)
        self.scale = dict(calibration.get("scale", {}))
        self.offset_ms = float(calibration.get("offset_ms", 0.0))

    def block_ms(self, spec: BlockSpec) -> float:
        """Calibrated contribution of one block (without the whole-net offset)."""
        return self.scale.get(spec.act, 1.0) * self.table.ms(spec)

    def require(self, specs: list[BlockSpec], what: str) -> None:
        missing = self.table.missing(specs)
        if missing:
            raise EdgefrError(f"{self.table.where} lacks {len(missing)} block(s) that {what} needs (first: "
                              f"{missing[0]}); run `edgefr profile --device {self.table.device.get('name')}`")

    def predict(self, arch: Arch) -> LatencyPrediction:
        specs = arch.block_specs()
        self.require(specs, f"arch {arch.name!r}")
        blocks = tuple(BlockLatency(s, self.table.ms(s), self.block_ms(s)) for s in specs)
        return LatencyPrediction(total_ms=sum(b.ms for b in blocks) + self.offset_ms,
                                 raw_sum_ms=sum(b.raw_ms for b in blocks), offset_ms=self.offset_ms,
                                 calibrated=self.calibrated, blocks=blocks)


@dataclass
class ArchProbabilities:
    """A factorized distribution over a space's architectures; every tensor sums to 1 along its last axis.

    `layers[s][j]` is the candidate distribution of layer j of stage s (used when the stage is deeper than j).
    """

    stem_act: torch.Tensor  # [len(space.stem_acts)]
    widths: list[torch.Tensor]  # per stage [len(stage.widths)]
    depths: list[torch.Tensor]  # per stage [len(stage.depths)]
    layers: list[torch.Tensor]  # per stage [max(stage.depths), len(stage.candidates)]
    head_act: torch.Tensor  # [len(space.head_acts)]

    @classmethod
    def one_hot(cls, space: SearchSpace, arch: Arch) -> "ArchProbabilities":
        def hot(n: int, i: int) -> torch.Tensor:
            t = torch.zeros(n)
            t[i] = 1.0
            return t

        layers = []
        for stage, stage_space in zip(arch.stages, space.stages):
            rows = [hot(len(stage_space.candidates), stage_space.candidates.index(c)) for c in stage.layers]
            rows += [torch.full((len(stage_space.candidates),), 1 / len(stage_space.candidates))] * (
                max(stage_space.depths) - len(stage.layers))
            layers.append(torch.stack(rows))
        return cls(stem_act=hot(len(space.stem_acts), space.stem_acts.index(arch.stem_act)),
                   widths=[hot(len(s.widths), s.widths.index(a.width)) for a, s in zip(arch.stages, space.stages)],
                   depths=[hot(len(s.depths), s.depths.index(len(a.layers)))
                           for a, s in zip(arch.stages, space.stages)],
                   layers=layers,
                   head_act=hot(len(space.head_acts), space.head_acts.index(arch.head_act)))


class ExpectedLatency(torch.nn.Module):
    """E[latency] under an `ArchProbabilities`, exact for the factorized distribution, differentiable.

    Latency is a sum of block terms and each term depends on at most two independent choices (the widths entering
    and leaving a layer) besides the layer's own candidate, so the expectation is a sum of small tensor
    contractions: sum_{cin,cout,c} P(cin) P(cout) P(c) LUT[cin,cout,c], weighted by P(depth > j).
    """

    def __init__(self, predictor: LatencyPredictor, space: SearchSpace, embedding: int, head_width: int | None = None):
        super().__init__()
        self.space = space
        head_width = head_width or space.head_widths[0]
        specs: list[BlockSpec] = []

        def table(shape, make_spec) -> torch.Tensor:
            out = torch.empty(shape)
            for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape)).tolist():
                spec = make_spec(*index)
                specs.append(spec)
                out[tuple(index)] = self.predictor_ms(predictor, spec)
            return out

        first = space.stages[0]
        self.register_buffer("stem", table((len(first.widths), len(space.stem_acts)),
                                           lambda w, a: space.stem_spec(first.widths[w], space.stem_acts[a])))
        for s, stage in enumerate(space.stages):
            n_in, n_out, n_cand = len(space.stage_input_widths(s)), len(stage.widths), len(stage.candidates)
            if s == 0:  # stage 0 keeps the stem's width: its first layer is a regular (diagonal) layer
                first_t = None
            else:
                first_t = table((n_in, n_out, n_cand), lambda i, o, c, s=s, stage=stage: space.layer_spec(
                    s, 0, space.stage_input_widths(s)[i], stage.widths[o], stage.candidates[c]))
            rest_t = table((n_out, n_cand), lambda o, c, s=s, stage=stage: space.layer_spec(
                s, 1 if s else 0, stage.widths[o], stage.widths[o], stage.candidates[c]))
            self.register_buffer(f"first{s}", first_t if first_t is not None else torch.empty(0))
            self.register_buffer(f"rest{s}", rest_t)
        last = space.stages[-1]
        self.register_buffer("head", table((len(last.widths), len(space.head_acts)), lambda w, a: space.head_spec(
            last.widths[w], head_width, space.head_acts[a], embedding)))
        self.offset_ms = predictor.offset_ms
        self.block_specs = specs

    @staticmethod
    def predictor_ms(predictor: LatencyPredictor, spec: BlockSpec) -> float:
        if spec.key not in predictor.table.entries:
            raise EdgefrError(f"{predictor.table.where} lacks block {spec.key} of the search space; "
                              f"run the full `edgefr profile --device {predictor.table.device.get('name')}`")
        return predictor.block_ms(spec)

    def forward(self, p: ArchProbabilities) -> torch.Tensor:
        total = p.widths[0] @ self.stem @ p.stem_act + self.offset_ms
        for s, stage in enumerate(self.space.stages):
            depth_values = torch.tensor(stage.depths, dtype=p.depths[s].dtype)
            rest = getattr(self, f"rest{s}")
            for j in range(max(stage.depths)):
                active = p.depths[s][depth_values > j].sum()
                if s > 0 and j == 0:
                    layer = torch.einsum("i,o,c,ioc->", p.widths[s - 1], p.widths[s], p.layers[s][0],
                                         getattr(self, f"first{s}"))
                else:
                    layer = p.widths[s] @ rest @ p.layers[s][j]
                total = total + active * layer
        return total + p.widths[-1] @ self.head @ p.head_act
