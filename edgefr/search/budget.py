"""From learned distributions to an architecture whose *measured* latency meets the budget on every device.

1. Reachable range: the cheapest and the most expensive point of the space by the calibrated LUT; a budget outside
   it is an error that states the range.
2. Fit: starting from the most probable architecture, change one decision at a time (a width, a depth, a layer's
   block, an activation) choosing the change that costs the least log-probability per unit of latency gained,
   until the prediction lies in the target band (shrink while over, then grow while under).
3. Measure on each device; if a measurement falls outside [0.90, 1.00] x budget, correct the prediction by the
   measured/predicted ratio and fit again (a few rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from edgefr.errors import EdgefrError
from edgefr.latency import LatencyPredictor
from edgefr.space.arch import Arch, Stage
from edgefr.space.searchspace import SearchSpace

WINDOW = (0.90, 1.00)  # measured latency / budget must land here
TARGET_BAND = (0.91, 0.97)  # where the fit aims the prediction, inside the window, leaving room for noise


@dataclass(frozen=True)
class Budget:
    device: str
    budget_ms: float
    predictor: LatencyPredictor  # the device's calibrated LUT

    def predict(self, arch: Arch) -> float:
        """The calibrated whole-net prediction of `arch` on this budget's device, in ms."""
        return self.predictor.predict(arch).total_ms


def neighbours(space: SearchSpace, arch: Arch, preferred: Callable[[int, int], object]) -> list[tuple[str, Arch]]:
    """Every architecture one decision away. `preferred(stage, layer)` picks the block of a layer added by a
    deeper choice (the most probable candidate of that position)."""
    out = []
    stages = list(arch.stages)
    for s, (stage, options) in enumerate(zip(stages, space.stages)):
        for width in options.widths:
            if width != stage.width:
                out.append((f"stage {s} width {stage.width}->{width}",
                            _with_stage(arch, s, replace(stage, width=width))))
        for depth in options.depths:
            if depth != len(stage.layers):
                layers = stage.layers[:depth] + tuple(preferred(s, j) for j in range(len(stage.layers), depth))
                out.append((f"stage {s} depth {len(stage.layers)}->{depth}",
                            _with_stage(arch, s, Stage(stage.width, layers))))
        for j, layer in enumerate(stage.layers):
            for candidate in options.candidates:
                if candidate != layer:
                    layers = stage.layers[:j] + (candidate,) + stage.layers[j + 1:]
                    out.append((f"stage {s} layer {j} {layer.label}->{candidate.label}",
                                _with_stage(arch, s, Stage(stage.width, layers))))
    for act in space.stem_acts:
        if act != arch.stem_act:
            out.append((f"stem {arch.stem_act}->{act}", replace(arch, stem_act=act)))
    for act in space.head_acts:
        if act != arch.head_act:
            out.append((f"head {arch.head_act}->{act}", replace(arch, head_act=act)))
    return out


def _with_stage(arch: Arch, index: int, stage: Stage) -> Arch:
    return replace(arch, stages=arch.stages[:index] + (stage,) + arch.stages[index + 1:])


def extreme_arch(space: SearchSpace, budgets: list[Budget], embedding: int, head_width: int, largest: bool) -> Arch:
    """The cheapest (or most expensive) architecture, by coordinate descent on the summed budget ratio."""
    pick = max if largest else min
    stages = tuple(Stage(pick(o.widths), tuple(o.candidates[0] for _ in range(pick(o.depths)))) for o in space.stages)
    arch = Arch("extreme", space.stem_acts[0], stages, head_width, space.head_acts[0], embedding, space.input_size)

    def cost(a: Arch) -> float:
        return sum(b.predict(a) / b.budget_ms for b in budgets)

    improved = True
    while improved:
        improved = False
        for _, candidate in neighbours(space, arch, lambda s, j: space.stages[s].candidates[0]):
            if (cost(candidate) > cost(arch)) if largest else (cost(candidate) < cost(arch)):
                arch, improved = candidate, True
    return arch


def check_reachable(space: SearchSpace, budgets: list[Budget], embedding: int, head_width: int) -> dict:
    low = extreme_arch(space, budgets, embedding, head_width, largest=False)
    high = extreme_arch(space, budgets, embedding, head_width, largest=True)
    ranges = {b.device: (b.predict(low), b.predict(high)) for b in budgets}

    def unreachable(b: Budget) -> str:
        lo_ms, hi_ms = ranges[b.device]
        return (f"--latency-ms {b.budget_ms:g} is not reachable on {b.device}: the search space spans "
                f"{lo_ms:.2f}..{hi_ms:.2f} ms there (predicted); choose a budget in that range")

    for b in budgets:  # below the cheapest network: nothing meets it
        if b.budget_ms * WINDOW[1] < ranges[b.device][0]:
            raise EdgefrError(unreachable(b))
    # Above the largest network a budget cannot bind; with several devices another one may (the student then only
    # has to stay under this one), but one budget at least must be reachable from below.
    binding = [b for b in budgets if b.budget_ms * WINDOW[0] <= ranges[b.device][1]]
    if not binding:
        raise EdgefrError(unreachable(budgets[0]))
    return ranges


def fit_to_budget(space: SearchSpace, start: Arch, budgets: list[Budget], log_prob: Callable[[Arch], float],
                  preferred: Callable[[int, int], object], corrections: dict[str, float] | None = None,
                  band: tuple[float, float] = TARGET_BAND, max_moves: int = 200) -> tuple[Arch, list[str]]:
    """Move from `start` to an architecture whose corrected prediction lies in `band` x budget on the binding
    device and below band[1] on all; returns it and the moves made."""
    corrections = corrections or {}

    def ratio(a: Arch) -> float:
        return max(b.predict(a) * corrections.get(b.device, 1.0) / b.budget_ms for b in budgets)

    arch, moves = start, []
    for _ in range(max_moves):
        current, logp = ratio(arch), log_prob(arch)
        if band[0] <= current <= band[1]:
            break
        shrinking = current > band[1]
        best, best_score = None, -math.inf
        for label, candidate in neighbours(space, arch, preferred):
            r = ratio(candidate)
            gain = (current - r) if shrinking else (r - current)
            if gain <= 0 or (not shrinking and r > band[1]):
                continue
            score = (log_prob(candidate) - logp) / gain
            if score > best_score:
                best, best_score = (label, candidate), score
        if best is None:
            break
        moves.append(f"{best[0]} (x budget {current:.3f} -> {ratio(best[1]):.3f})")
        arch = best[1]
    return arch, moves
