"""The weight-sharing supernet over a search space, with learned distributions over every decision.

Why path sampling (ProxylessNAS) with sliced weights, not FBNet's relaxed mixture or channel masks: measured here,
one forward+backward of a masked max-size supernet cost 57 s of CPU for 8 faces against 0.75 s for MobileFaceNet;
a sampled sub-network costs what that architecture costs. Weight sharing is by slicing (as in Once-for-All):
a width w uses the first w channels of the stage's widest conv, an expansion e the first e*w_in hidden channels,
kernel 3 the centre of the 5x5 depthwise kernel. BatchNorm statistics are per batch during the search (shared
running statistics would be wrong for every sub-network); the searched student is trained afresh afterwards.

The distributions are the architecture parameters: per stage a width and a depth distribution (sample the size
from a learned distribution, train it on the search objective, take the most probable size: Teacher-guided NAS for
face recognition), per layer a distribution over the stage's candidates, and stem/head activations.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from edgefr.latency.predictor import ArchProbabilities
from edgefr.space.arch import Arch, LayerChoice, Stage
from edgefr.space.searchspace import SearchSpace

MAX_KERNEL = 5


def _conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, cout: int, cin: int, kernel: int, stride: int,
             groups: int = 1) -> torch.Tensor:
    """Run the [:cout, :cin] slice of `conv` (centre `kernel` x `kernel`) and the matching slice of `bn`."""
    weight = conv.weight[:cout, : cin // groups if groups == 1 else 1]
    if kernel < conv.kernel_size[0]:
        trim = (conv.kernel_size[0] - kernel) // 2
        weight = weight[:, :, trim:-trim, trim:-trim]
    y = F.conv2d(x, weight, None, stride, kernel // 2 if conv.padding[0] else 0, groups=groups)
    return F.batch_norm(y, None, None, bn.weight[:cout], bn.bias[:cout], training=True, eps=bn.eps)


def _activation(x: torch.Tensor, act: str, prelu: nn.PReLU) -> torch.Tensor:
    return F.prelu(x, prelu.weight[: x.shape[1]]) if act == "prelu" else F.relu(x)


class SuperLayer(nn.Module):
    """One searchable layer at its widest: inverted residual (expansion <= max, kernel <= 5) and, where the
    stage offers it, a depthwise-only block."""

    def __init__(self, cin: int, cout: int, stride: int, candidates: tuple[LayerChoice, ...]):
        super().__init__()
        self.stride = stride
        hidden = cin * max(c.expansion for c in candidates if c.block == "ir")
        self.expand, self.expand_bn = nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, MAX_KERNEL, stride, MAX_KERNEL // 2, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project, self.project_bn = nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.act1, self.act2 = nn.PReLU(hidden), nn.PReLU(hidden)
        if any(c.block == "dw" for c in candidates):  # stage 0: cin == cout, stride 1
            self.dw = nn.Conv2d(cin, cin, MAX_KERNEL, 1, MAX_KERNEL // 2, groups=cin, bias=False)
            self.dw_bn, self.dw_act = nn.BatchNorm2d(cin), nn.PReLU(cin)

    def forward(self, x: torch.Tensor, choice: LayerChoice, cout: int) -> torch.Tensor:
        cin = x.shape[1]
        if choice.block == "dw":
            y = _conv_bn(x, self.dw, self.dw_bn, cin, cin, choice.kernel, 1, groups=cin)
            return _activation(y, choice.act, self.dw_act)
        hidden = choice.expansion * cin
        h = _activation(_conv_bn(x, self.expand, self.expand_bn, hidden, cin, 1, 1), choice.act, self.act1)
        h = _activation(_conv_bn(h, self.depthwise, self.depthwise_bn, hidden, hidden, choice.kernel, self.stride,
                                 groups=hidden), choice.act, self.act2)
        y = _conv_bn(h, self.project, self.project_bn, cout, hidden, 1, 1)
        return x + y if self.stride == 1 and cin == cout else y


class SuperNet(nn.Module):
    def __init__(self, space: SearchSpace, embedding: int, head_width: int | None = None):
        super().__init__()
        self.space, self.embedding_dim = space, embedding
        self.head_width = head_width or space.head_widths[0]
        widest = [max(s.widths) for s in space.stages]
        self.stem, self.stem_bn, self.stem_act = (nn.Conv2d(3, widest[0], 3, 2, 1, bias=False),
                                                  nn.BatchNorm2d(widest[0]), nn.PReLU(widest[0]))
        self.stages = nn.ModuleList(
            nn.ModuleList(SuperLayer(widest[s - 1] if (s and j == 0) else widest[s], widest[s],
                                     2 if (s and j == 0) else 1, stage.candidates) for j in range(max(stage.depths)))
            for s, stage in enumerate(space.stages))
        self.head_expand, self.head_bn = nn.Conv2d(widest[-1], self.head_width, 1, bias=False), nn.BatchNorm2d(
            self.head_width)
        self.head_act = nn.PReLU(self.head_width)
        res = space.stages[-1].res
        self.gdconv = nn.Conv2d(self.head_width, self.head_width, res, groups=self.head_width, bias=False)
        self.gdconv_bn = nn.BatchNorm2d(self.head_width)
        self.linear, self.bn = nn.Linear(self.head_width, embedding, bias=False), nn.BatchNorm1d(embedding)
        # Architecture logits: kept apart from the weights (another optimizer, another data split).
        self.alpha = nn.ParameterDict({
            "stem_act": nn.Parameter(torch.zeros(len(space.stem_acts))),
            "head_act": nn.Parameter(torch.zeros(len(space.head_acts))),
            **{f"width{s}": nn.Parameter(torch.zeros(len(st.widths))) for s, st in enumerate(space.stages)},
            **{f"depth{s}": nn.Parameter(torch.zeros(len(st.depths))) for s, st in enumerate(space.stages)},
            **{f"layers{s}": nn.Parameter(torch.zeros(max(st.depths), len(st.candidates)))
               for s, st in enumerate(space.stages)},
        })

    def weights(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.alpha.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def probabilities(self) -> ArchProbabilities:
        a, n = self.alpha, len(self.space.stages)
        return ArchProbabilities(stem_act=a["stem_act"].softmax(-1), head_act=a["head_act"].softmax(-1),
                                 widths=[a[f"width{s}"].softmax(-1) for s in range(n)],
                                 depths=[a[f"depth{s}"].softmax(-1) for s in range(n)],
                                 layers=[a[f"layers{s}"].softmax(-1) for s in range(n)])

    def _choose(self, pick) -> tuple[Arch, torch.Tensor]:
        """An architecture from `pick(logits) -> index` per decision, and its log-probability (differentiable)."""
        a, space = self.alpha, self.space
        log_prob = torch.zeros(())

        def take(logits: torch.Tensor) -> int:
            nonlocal log_prob
            index = pick(logits)
            log_prob = log_prob + logits.log_softmax(-1)[index]
            return index

        stages = []
        for s, stage in enumerate(space.stages):
            width = stage.widths[take(a[f"width{s}"])]
            depth = stage.depths[take(a[f"depth{s}"])]
            stages.append(Stage(width, tuple(stage.candidates[take(a[f"layers{s}"][j])] for j in range(depth))))
        arch = Arch(name="sampled", stem_act=space.stem_acts[take(a["stem_act"])], stages=tuple(stages),
                    head_width=self.head_width, head_act=space.head_acts[take(a["head_act"])],
                    embedding=self.embedding_dim, input_size=space.input_size)
        return arch, log_prob

    def sample(self, generator: torch.Generator | None = None) -> tuple[Arch, torch.Tensor]:
        return self._choose(lambda logits: int(torch.multinomial(logits.detach().softmax(-1), 1, generator=generator)))

    def derive(self, name: str = "searched") -> Arch:
        """The most probable architecture (argmax of every distribution)."""
        arch, _ = self._choose(lambda logits: int(logits.argmax()))
        return Arch(**{**arch.__dict__, "name": name})

    def decisions(self, arch: Arch) -> list[tuple[str, tuple[int, ...]]]:
        """Where `arch` sits in every distribution: (logits name, index into those logits)."""
        space = self.space
        out = [("stem_act", (space.stem_acts.index(arch.stem_act),)),
               ("head_act", (space.head_acts.index(arch.head_act),))]
        for s, (stage, st) in enumerate(zip(space.stages, arch.stages)):
            out += [(f"width{s}", (stage.widths.index(st.width),)),
                    (f"depth{s}", (stage.depths.index(len(st.layers)),))]
            out += [(f"layers{s}", (j, stage.candidates.index(c))) for j, c in enumerate(st.layers)]
        return out

    def choice_probabilities(self, arch: Arch) -> dict:
        """How decided the search was about each choice `arch` makes: the learned probability of that choice and
        the uniform one (1 / its options), per stem and head activation, stage width and depth, and layer block."""
        with torch.no_grad():
            probs = {name: logits.softmax(-1) for name, logits in self.alpha.items()}

        def choice(name: str, index: tuple[int, ...]) -> dict:
            return {"p": round(float(probs[name][index]), 4), "uniform": round(1 / probs[name].shape[-1], 4)}

        decided: dict = {"stages": [{"layers": []} for _ in arch.stages]}
        for name, index in self.decisions(arch):
            per_stage = re.fullmatch(r"(width|depth|layers)(\d+)", name)
            if per_stage is None:
                decided[name] = choice(name, index)
            elif per_stage[1] == "layers":
                decided["stages"][int(per_stage[2])]["layers"].append(choice(name, index))
            else:
                decided["stages"][int(per_stage[2])][per_stage[1]] = choice(name, index)
        return decided

    def log_prob(self, arch: Arch) -> torch.Tensor:
        """log p(arch) under the current distributions (the gradient the score-function estimator needs)."""
        return sum(self.alpha[name].log_softmax(-1)[index] for name, index in self.decisions(arch))

    def frozen_log_prob(self):
        """A fast float version of `log_prob` for the current distributions (for budget fitting)."""
        with torch.no_grad():
            tables = {name: logits.log_softmax(-1).numpy().copy() for name, logits in self.alpha.items()}
        return lambda arch: float(sum(tables[name][index] for name, index in self.decisions(arch)))

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = _conv_bn(x, self.stem, self.stem_bn, arch.stages[0].width, 3, 3, 2)
        x = _activation(x, arch.stem_act, self.stem_act)
        for layers, stage in zip(self.stages, arch.stages):
            for layer, choice in zip(layers, stage.layers):
                x = layer(x, choice, stage.width)
        x = _activation(_conv_bn(x, self.head_expand, self.head_bn, self.head_width, x.shape[1], 1, 1),
                        arch.head_act, self.head_act)
        x = _conv_bn(x, self.gdconv, self.gdconv_bn, self.head_width, self.head_width, self.gdconv.kernel_size[0], 1,
                     groups=self.head_width)
        return self.bn(self.linear(torch.flatten(x, 1)))
