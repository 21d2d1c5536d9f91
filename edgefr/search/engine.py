"""`run_search`: teacher-guided, latency-constrained architecture search, then measurement on the device(s).

Objective, per step (ProxylessNAS path sampling over the `SuperNet`):
- weights: one sampled architecture trained on a training batch with the distillation objective
  (ProxylessKD margin softmax on the teacher's inherited classifier + embedding mimic by default; `margin_weight`
  scales the margin softmax, 0 leaves the mimic alone: `guiding_objective`);
- architecture: another sampled architecture scored on held-out images of the training identities with the
  same objective; its score-function (REINFORCE) gradient, (loss - baseline) * grad log p(arch), lets the KD
  loss choose the architecture (AKD: the best student depends on the teacher), and the expected latency from
  each device's LUT adds lambda_d * E[lat_d] / budget_d (exact, differentiable: `ExpectedLatency`);
- lambda_d follows a dual (Lagrangian) ascent, lambda += lr * (E[lat_d] / budget_d - target), on both sides of
  the target: over it, lambda > 0 penalises latency; under it, lambda < 0 rewards it, so E[lat] is driven to the
  target from either side instead of drifting wherever the KD signal takes it (weight sharing trains small
  sub-networks most, and with lambda >= 0 a 10 ms search drifted from 4.1 to 3.5 ms). The negative side is bounded
  (`lambda_min`) to limit wind-up; it still overshoots for a while (measured at 10 ms: E[lat] 4.1 -> 10.3 ms by
  step 215, back to 9.1 ms by step 300).
- `latency_penalty="fbnet"` replaces that term by FBNet's multiplicative one, loss * alpha * log(E[lat] in ms)^beta
  (alpha 0.2, beta 0.6, as published), which knows no budget: the fit then does all of the budget's work
  (`benchmarks/latency_penalties.py` measures both; README, *Search*).
Everything random in step t is seeded by (seed, t), and `search_state.pt` holds the rest every few steps: a
killed search resumed with `--resume` ends with the same architecture as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgefr.devices import resolve_device
from edgefr.distill.allocator import retain_freed_memory
from edgefr.distill.data import AugmentedView, dataset_labels, sample_seed, split_dataset
from edgefr.distill.embedder import FAST_LAYOUT, to_model_input
from edgefr.distill.engine import augmentation_factory, class_centres, load_faces, resolve_teacher, teacher_targets
from edgefr.distill.losses import Objective, parse_methods
from edgefr.errors import EdgefrError
from edgefr.latency import ExpectedLatency, LatencyPredictor, load_device_table
from edgefr.search.budget import Budget, check_reachable
from edgefr.search.supernet import SuperNet
from edgefr.space.model import STUDENT_PREPROCESSING
from edgefr.space.searchspace import MFN_SPACE, SearchSpace

STATE_FORMAT = "edgefr.search_state/1"


@dataclass(frozen=True)
class SearchConfig:
    devices: tuple[str, ...]
    budgets_ms: tuple[float, ...]
    methods: tuple[str, ...] = ("proxyless", "mimic")
    margin_weight: float = 1.0  # the margin-softmax part of the guiding loss (0: the teacher's embedding alone)
    steps: int = 300
    warmup_steps: int = 60  # weights only: a score needs somewhat trained shared weights to mean anything
    batch_size: int = 32
    lr: float = 2e-3
    arch_lr: float = 0.05
    lambda_lr: float = 0.5
    target_ratio: float = 0.95  # E[lat] / budget the dual ascent aims at
    lambda_min: float = -1.0  # bound on the multiplier's reward side (see the module docstring)
    latency_penalty: str = "lagrangian"  # or "fbnet" (see the module docstring)
    embedding: int = 128
    # The per-layer choices the search may make (None: all of the space's; see README, *Search*).
    activations: tuple[str, ...] | None = None
    kernels: tuple[int, ...] | None = None
    expansions: tuple[int, ...] | None = None
    seed: int = 0
    val_fraction: float = 0.1
    max_images: int | None = None
    checkpoint_every: int = 20
    log_every: int = 5

    def differing(self, recorded: dict) -> list[str]:
        """The settings in which a recorded config (a search_state or report's) differs from this one; a field an
        older record lacks had its default."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        # Through JSON, so tuples compare as a report's lists.
        recorded = json.loads(json.dumps({**defaults, **recorded}))
        wanted = json.loads(json.dumps(asdict(self)))
        return [name for name, value in wanted.items() if recorded.get(name) != value]


LATENCY_PENALTIES = ("lagrangian", "fbnet")
FBNET_ALPHA, FBNET_BETA = 0.2, 0.6
# FBNet's log(latency in ms) is <= 0 below 1 ms, where its power is undefined; below this the factor stays put.
FBNET_FLOOR_MS = 1.05


def architecture_loss(penalty: str, advantage: float, log_prob: torch.Tensor, expected_ms: dict[str, torch.Tensor],
                      budgets_ms: dict[str, float], lambdas: dict[str, float], baseline: float) -> torch.Tensor:
    """The surrogate whose gradient is the architecture's: `advantage` (held-out KD loss of the sampled path minus
    its running mean, `baseline`) times log p(path) is the score-function estimate of the KD loss's gradient.
    lagrangian: + sum_d lambda_d * E[lat_d] / budget_d. fbnet: the KD loss times F = prod_d alpha * log(E[lat_d])^beta,
    whose gradient F * grad E[loss] + E[loss] * grad F is estimated with the baseline for E[loss]."""
    if penalty == "lagrangian":
        return advantage * log_prob + sum(lambdas[d] * ms / budgets_ms[d] for d, ms in expected_ms.items())
    factor = math.prod(FBNET_ALPHA * torch.log(ms.clamp(min=FBNET_FLOOR_MS)) ** FBNET_BETA  # fbnet
                       for ms in expected_ms.values())
    return factor.detach() * advantage * log_prob + baseline * factor


def guiding_objective(config: SearchConfig, path: torch.nn.Module, num_classes: int, teacher_dim: int,
                      centres: torch.Tensor | None) -> Objective:
    """The distillation objective of `config` (--kd, --margin-weight) on the sampled path: it trains the shared
    weights and scores the architectures."""
    return Objective(path, parse_methods(",".join(config.methods)), num_classes, teacher_dim, centres,
                     margin_weight=config.margin_weight)


class SampledPath(torch.nn.Module):
    """The supernet restricted to one architecture, seen as a student by the distillation `Objective`."""

    def __init__(self, supernet: SuperNet):
        super().__init__()
        self.supernet = supernet
        self.embedding_dim = supernet.embedding_dim
        self.preprocessing = dict(STUDENT_PREPROCESSING)
        self.arch = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.supernet(images, self.arch)


@dataclass
class SearchState:
    step: int = 0
    lambdas: dict[str, float] = field(default_factory=dict)
    baseline: float | None = None
    trajectory: list[dict] = field(default_factory=list)


def device_budgets(config: SearchConfig, space: SearchSpace) -> tuple[list[Budget], dict, dict]:
    """Per device: the budget, a calibrated predictor, the differentiable expected latency."""
    if len(config.budgets_ms) not in (1, len(config.devices)):
        raise EdgefrError(f"--latency-ms: give one budget or one per --device ({len(config.devices)}), "
                          f"got {len(config.budgets_ms)}")
    budgets_ms = config.budgets_ms * len(config.devices) if len(config.budgets_ms) == 1 else config.budgets_ms
    budgets, expected, devices = [], {}, {}
    for name, budget_ms in zip(config.devices, budgets_ms):
        if budget_ms <= 0:
            raise EdgefrError(f"--latency-ms must be positive, got {budget_ms:g}")
        device = resolve_device(name)
        predictor = LatencyPredictor(load_device_table(device))
        budgets.append(Budget(device.name, float(budget_ms), predictor))
        expected[device.name] = ExpectedLatency(predictor, space, config.embedding)
        devices[device.name] = device
    return budgets, expected, devices


def _batch(view: AugmentedView, pool: np.ndarray, size: int, seed: int, step: int, targets):
    """A batch drawn by (seed, step) alone: no loader state to save for an exact resume."""
    rng = np.random.default_rng(sample_seed(seed, step))
    view.set_epoch(step)
    items = [view[int(i)] for i in rng.choice(pool, size=min(size, len(pool)), replace=False)]
    images = torch.stack([it[0] for it in items])
    classes = torch.as_tensor([it[1] for it in items])
    indices = torch.as_tensor([it[2] for it in items])
    flipped = torch.as_tensor([it[3] for it in items])
    teacher = None if targets is None else targets[flipped.long(), indices]
    return to_model_input(images, STUDENT_PREPROCESSING), classes, teacher


def _snapshot(step: int, supernet: SuperNet, expected: dict, budgets: list[Budget], state: SearchState,
              loss: float, reward: float | None) -> dict:
    with torch.no_grad():
        probs = supernet.probabilities()
        return {"step": step, "loss": loss, "arch_loss": reward,
                "expected_ms": {b.device: float(expected[b.device](probs)) for b in budgets},
                "lambda": dict(state.lambdas),
                "widths": [p.tolist() for p in probs.widths], "depths": [p.tolist() for p in probs.depths],
                "argmax": supernet.derive().to_dict()}


def run_search(config: SearchConfig, teacher, data, out: Path, resume: bool = False, space: SearchSpace = MFN_SPACE,
               progress: bool = True, log=print) -> tuple[SuperNet, SearchState, list[Budget], dict, dict]:
    """Search; returns the trained supernet, the final state, the budgets, the expected-latency modules and devices."""
    retain_freed_memory()
    space = space.restricted(config.activations, config.kernels, config.expansions)
    if config.latency_penalty not in LATENCY_PENALTIES:
        raise EdgefrError(f"--latency-penalty {config.latency_penalty!r}: expected one of "
                          f"{', '.join(LATENCY_PENALTIES)}")
    # A checkpoint to resume (or not to overwrite) is checked before minutes of teacher embeddings.
    state_path, saved = out / "search_state.pt", None
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        differing = config.differing(saved["config"]) if saved.get("format") == STATE_FORMAT else ["format"]
        if differing:
            raise EdgefrError(f"{state_path}: written by a search with other settings ({', '.join(differing)}); "
                              "resume with the same options or start a new --out")
    elif state_path.is_file():
        raise EdgefrError(f"{out}: already holds a search (search_state.pt); pass --resume or another --out")
    budgets, expected, devices = device_budgets(config, space)
    budget_ms = {b.device: b.budget_ms for b in budgets}
    ranges = check_reachable(space, budgets, config.embedding, space.head_widths[0])
    for b in budgets:
        lo, hi = ranges[b.device]
        log(f"{b.device}: budget {b.budget_ms:g} ms; the space spans {lo:.2f}..{hi:.2f} ms (predicted)")
    methods = parse_methods(",".join(config.methods))
    if teacher is None:
        raise EdgefrError("the search is teacher-guided: pass --teacher (e.g. sface)")
    torch.manual_seed(config.seed)
    dataset = load_faces(data)
    labels = dataset_labels(dataset)
    split = split_dataset(labels, config.val_fraction, config.seed, config.max_images)
    if len(split.val) == 0:
        raise EdgefrError("the search needs held-out images to score architectures; raise --val-fraction")
    teacher_model = resolve_teacher(teacher)
    targets = teacher_targets(teacher_model, dataset)
    centres = class_centres(teacher_model, targets, labels, split) if "proxyless" in methods else None
    supernet = SuperNet(space, config.embedding).to(memory_format=FAST_LAYOUT)
    path = SampledPath(supernet)
    objective = guiding_objective(config, path, split.num_classes, teacher_model.embedding_dim, centres)
    weights = [p for n, p in objective.named_parameters() if ".alpha." not in n and p.requires_grad]
    weight_opt = torch.optim.AdamW(weights, lr=config.lr, weight_decay=5e-4)
    arch_opt = torch.optim.Adam(supernet.alpha.parameters(), lr=config.arch_lr, betas=(0.5, 0.999))
    train_view = AugmentedView(dataset, split.train, split.class_of_label, config.seed, augmentation_factory(True))
    val_view = AugmentedView(dataset, split.val, split.class_of_label, config.seed + 1, None, flip=False)
    state = SearchState(lambdas={b.device: 0.0 for b in budgets})
    config_record = asdict(config)
    if saved is not None:
        objective.load_state_dict(saved["objective"])
        weight_opt.load_state_dict(saved["weight_opt"])
        arch_opt.load_state_dict(saved["arch_opt"])
        state = SearchState(**saved["state"])
        log(f"resuming the search at step {state.step} of {config.steps}")

    def save() -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"format": STATE_FORMAT, "config": config_record, "objective": objective.state_dict(),
                    "weight_opt": weight_opt.state_dict(), "arch_opt": arch_opt.state_dict(),
                    "state": asdict(state)}, tmp)
        tmp.replace(state_path)

    bar = tqdm(total=config.steps, initial=state.step, desc="search", unit="step", disable=not progress,
               dynamic_ncols=True)
    objective.train()
    while state.step < config.steps:
        step = state.step
        generator = torch.Generator().manual_seed(sample_seed(config.seed, step, 7))
        path.arch, _ = supernet.sample(generator)
        images, classes, teacher_batch = _batch(train_view, np.arange(len(split.train)), config.batch_size,
                                                config.seed, step, targets)
        loss, _ = objective(images, classes, teacher_batch)
        if not torch.isfinite(loss):
            raise EdgefrError(f"search loss became {loss.item()} at step {step}; lower --lr")
        weight_opt.zero_grad(set_to_none=True)
        loss.backward()
        weight_opt.step()
        reward = None
        if step >= config.warmup_steps:
            arch, _ = supernet.sample(generator)
            path.arch = arch
            images, classes, teacher_batch = _batch(val_view, np.arange(len(split.val)), config.batch_size,
                                                    config.seed + 1, step, targets)
            with torch.no_grad():
                val_loss, _ = objective(images, classes, teacher_batch)
            reward = float(val_loss)
            state.baseline = reward if state.baseline is None else 0.9 * state.baseline + 0.1 * reward
            probs = supernet.probabilities()
            expected_ms = {b.device: expected[b.device](probs) for b in budgets}
            arch_loss = architecture_loss(config.latency_penalty, reward - state.baseline, supernet.log_prob(arch),
                                          expected_ms, budget_ms, state.lambdas, state.baseline)
            arch_opt.zero_grad(set_to_none=True)
            arch_loss.backward()
            arch_opt.step()
            if config.latency_penalty == "lagrangian":
                for d, ms in expected_ms.items():
                    state.lambdas[d] = max(config.lambda_min, state.lambdas[d] + config.lambda_lr * (
                        ms.item() / budget_ms[d] - config.target_ratio))
        state.step += 1
        if state.step % config.log_every == 0 or state.step == config.steps:
            state.trajectory.append(_snapshot(state.step, supernet, expected, budgets, state, loss.item(), reward))
            shown = state.trajectory[-1]["expected_ms"]
            bar.set_postfix_str(" ".join(f"E[{d}]={v:.2f}ms" for d, v in shown.items()) + f" loss={loss.item():.2f}")
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            save()
        bar.update()
    bar.close()
    if not math.isfinite(sum(state.lambdas.values())):
        raise EdgefrError("the latency multiplier diverged; lower --arch-lr")
    return supernet, state, budgets, expected, devices
