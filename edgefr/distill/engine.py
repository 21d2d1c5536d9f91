"""The training engine: `distill(...)` trains a student (with or without a teacher) and writes a run folder.

Run folder (`out`):
- `last.pt`: the student after the latest epoch plus everything needed to resume exactly (`train_state`:
  loss heads, optimizer, LR schedule, RNG states, epoch, step, metrics history, configuration);
- `best.pt`: the student of the epoch with the best validation accuracy (pairs from held-out images of the
  *training* identities, never a test set);
- `epochs/epoch_NNN.pt` with `keep_epochs=True` (what `edgefr train` writes for multi-step KD);
- `metrics.csv`: one row per epoch.
All `.pt` files load with `edgefr.space.load_student`; all writes are atomic and only rank 0 writes.

Reproducibility: the sampler order is seeded per epoch and every augmentation by (seed, epoch, image), so a
run resumed from `last.pt` produces the same weights as an uninterrupted one (CPU; GPU kernels may differ in
the last bits). Launched by `torchrun` (WORLD_SIZE > 1) it trains with DistributedDataParallel (gloo on CPU,
NCCL on GPU); `batch_size` is per process. On a GPU it uses bfloat16 autocast (float16 + loss scaling where
bfloat16 is not supported).
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from edgefr.distill.allocator import retain_freed_memory
from edgefr.distill.data import AugmentedView, Split, dataset_labels, sample_seed, split_dataset, validation_pairs
from edgefr.distill.embedder import FAST_LAYOUT, ModuleEmbedder, to_model_input
from edgefr.distill.losses import Objective, needs_teacher, parse_methods, select_neurons
from edgefr.distill.multistep import EPOCH_DIR, checkpoint_for_epoch, epoch_checkpoint_name, teacher_checkpoints
from edgefr.errors import EdgefrError
from edgefr.space import FaceNet, create_model, read_checkpoint, save_student
from edgefr.space.arch import Arch

TRAIN_STATE_FORMAT = "edgefr.train_state/1"
# The recipe for short runs on a few thousand faces, measured by benchmarks/kd_methods.py (MobileFaceNet, 2 epochs
# on CelebA, one optimizer setting for all): regressing the teacher's embedding alone reached 74.2% on LFW against
# 70.6% for margin loss + mimic and 63.0% without a teacher. `edgefr search` distils its student with it.
SHORT_RUN_RECIPE = {"methods": "mimic", "margin_weight": 0.0, "optimizer": "adamw", "lr": 1e-2}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the result; a resumed run must match the one that wrote `last.pt`."""

    methods: tuple[str, ...]
    epochs: int
    batch_size: int = 64
    lr: float = 0.1
    # SGD is the face-recognition standard for long runs; AdamW converges faster in short ones (search trials).
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    max_images: int | None = None
    online_teacher: bool = False
    mimic_weight: float = 100.0
    # The margin loss (scale 64) dwarfs the mimic term; in short runs on few faces it memorises the identities
    # (see SHORT_RUN_RECIPE), so it can be weighted down or off.
    margin_weight: float = 1.0
    neuron_weight: float = 1.0
    neuron_count: int | None = None
    neuron_max_correlation: float = 0.5
    augment: bool = True
    workers: int = 0  # DataLoader processes; 0 decodes in the training process (enough for a CPU student)
    # A time box for the training steps (validation and teacher embeddings excluded): a few probe steps time the
    # student on this machine and the run trains for at most as many steps as fit, with the LR schedule spanning
    # them. The step count is decided once and kept in `last.pt`, so a resumed run follows the same schedule.
    time_budget_s: float | None = None


@dataclass
class DistillResult:
    out: Path
    best_path: Path
    last_path: Path
    metrics_csv: Path
    history: list[dict] = field(default_factory=list)
    student: FaceNet | None = None  # best weights, eval mode
    # `teacher_cosines` of the best student on the held-out images (empty without a teacher or held-out images).
    held_out_cosines: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def teacher_agreement(self) -> float:
        return mean_cosine(self.held_out_cosines)

    @property
    def best(self) -> dict:
        return max(self.history, key=lambda row: row["val_accuracy"]) if self.history else {}


# --- teachers and their targets -------------------------------------------------------------------------------

def resolve_teacher(spec):
    """A teacher from a name or model file (`edgefr.teachers.load_teacher`) or a run folder of `edgefr
    distill/train` (its `best.pt`); objects with `.embed` pass through."""
    if hasattr(spec, "embed"):
        return spec
    from edgefr.teachers import load_teacher

    run = Path(str(spec))
    return load_teacher(run / "best.pt" if (run / "best.pt").is_file() else spec)


def teacher_targets(teacher, dataset) -> torch.Tensor:
    """Cached teacher embeddings of every image, [2, N, D]: view 0 the image as is, view 1 its mirror."""
    from edgefr.teachers import cached_embeddings

    return torch.stack([torch.from_numpy(np.asarray(cached_embeddings(teacher, dataset, view=view), np.float32))
                        for view in ("center", "flip")])


def class_centres(teacher, targets: torch.Tensor, labels: np.ndarray, split: Split) -> torch.Tensor:
    """ProxylessKD's inherited classifier: the teacher's own weights for these identities when it has them,
    else the L2-normalised mean teacher embedding of each training identity (over both views)."""
    classifier = getattr(teacher, "classifier", None)
    if classifier is not None and len(classifier) == split.num_classes:
        return torch.as_tensor(np.asarray(classifier), dtype=torch.float32)
    embeddings = nn.functional.normalize(targets[:, split.train].float(), dim=2)
    classes = torch.as_tensor([split.class_of_label[int(lbl)] for lbl in labels[split.train]])
    centres = torch.zeros(split.num_classes, embeddings.shape[2]).index_add_(0, classes, embeddings.sum(0))
    return nn.functional.normalize(centres, dim=1)


# --- process group ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start_runtime() -> Runtime:
    """Single process, or one DDP rank when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Runtime(torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return Runtime(torch.device(f"cuda:{local}" if cuda else "cpu"), dist.get_rank(), dist.get_world_size())


# --- checkpoints ----------------------------------------------------------------------------------------------

def rng_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def head_state(objective: Objective) -> dict:
    """The loss modules' weights (the student's travel as the checkpoint's `state_dict`)."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith("student.")}


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


# --- the loop -----------------------------------------------------------------------------------------------

def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    # At most half the run warms up: a one-epoch (or time-boxed) run still anneals.
    warmup_steps = min(warmup_steps, total_steps // 2)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# Steps that size a time-boxed run: the first ones build oneDNN kernels and caches (measured 4.3 s/step against
# 2.6 for the epoch's mean), so some run untimed; interference only adds time, so the fastest timed step counts.
PROBE_WARMUP_STEPS, PROBE_STEPS = 2, 3


def planned_steps(config: TrainConfig, steps_per_epoch: int, seconds_per_step: float | None) -> int:
    """Optimizer steps of the run: all epochs, or as many as fit `time_budget_s` at the probed step time."""
    steps = config.epochs * steps_per_epoch
    if config.time_budget_s is None or seconds_per_step is None:
        return steps
    return max(1, min(steps, int(config.time_budget_s / seconds_per_step)))


def validate(student: FaceNet, pairs) -> float:
    """10-fold verification accuracy of `student` on the held-out pairs (NaN without pairs)."""
    if pairs is None:
        return float("nan")
    from edgefr.verify import verify_pairs

    return verify_pairs(ModuleEmbedder(student, "validation"), pairs, progress=False).accuracy


def held_out_agreement(student: FaceNet, teacher, data, seed: int = 0, val_fraction: float = 0.1,
                       max_images: int | None = None) -> float:
    """The mean `teacher_cosines` of `student` on the images `distill` held out with these settings (the training
    identities' validation images; NaN if none), for a checkpoint trained earlier: `distill` computes them for the
    student it returns (`DistillResult.held_out_cosines`)."""
    return mean_cosine(held_out_cosines(student, teacher, data, seed, val_fraction, max_images))


def mean_cosine(cosines: np.ndarray) -> float:
    """The mean of per-image `teacher_cosines`; NaN when none were measured (no teacher or no held-out images)."""
    return float(cosines.mean()) if len(cosines) else math.nan


def held_out_cosines(student: FaceNet, teacher, data, seed: int = 0, val_fraction: float = 0.1,
                     max_images: int | None = None) -> np.ndarray:
    """`teacher_cosines` of `student` on the images `distill` held out with these settings (empty if none)."""
    dataset = load_faces(data)
    split = split_dataset(dataset_labels(dataset), val_fraction, seed, max_images)
    if not len(split.val):
        return np.zeros(0)
    targets = teacher_targets(resolve_teacher(teacher), dataset)[0, split.val]
    return teacher_cosines(student, held_out_images(dataset, split), targets)


def teacher_cosines(student: FaceNet, images: np.ndarray, targets: torch.Tensor) -> np.ndarray:
    """Per image, the cosine between `student`'s embedding and the teacher's (`targets`, one row per image): on
    images the student did not train on, how well it learned the teacher's embedding. Their mean ranks distilled
    students like LFW does where the validation accuracy, decided by ~1700 pairs, does not (README, *Finalists*)."""
    embeddings = torch.from_numpy(ModuleEmbedder(student, "held-out images").embed(images))
    return nn.functional.cosine_similarity(embeddings, targets.float(), dim=1).numpy()


def held_out_images(dataset, split: Split) -> np.ndarray:
    """uint8 [N, H, W, 3]: the validation images of the training identities, in split order."""
    return np.stack([dataset.load(int(i))[0] for i in split.val])


def load_faces(data):
    """An ImageFolderFaces from a folder path, or a dataset object as given."""
    if hasattr(data, "samples"):
        return data
    from edgefr.data.faces import ImageFolderFaces

    return ImageFolderFaces(data)


def augmentation_factory(enabled: bool):
    """Per-image crop/colour augmentation (`edgefr.data.augment`), mirror excluded: the engine flips itself."""
    if not enabled:
        return None
    from edgefr.data.augment import train_transform

    return lambda seed: train_transform(seed=seed, flip_p=0.0)


def distill(student: str | Path | dict | Arch | FaceNet, teacher=None, data=None,
            methods: str | tuple[str, ...] = "proxyless,mimic", epochs: int = 20, out: str | Path = "runs/distill",
            *, resume: bool = False, keep_epochs: bool = False, progress: bool = True,
            on_epoch_end: Callable[[dict], None] | None = None, **options) -> DistillResult:
    """Train `student` on the faces in `data` with the KD `methods`, writing the run folder `out`.

    student: a registered name, arch JSON file/dict, `Arch`, or a `FaceNet` (the search stage passes its model).
    teacher: a teacher name (`"sface"`), a teacher object, a student checkpoint/run folder, or None (`methods`
      without KD terms); for `multistep`, the run folder of `edgefr train` (per-epoch checkpoints).
    data: an ImageFolder path or an `ImageFolderFaces`.
    methods: `"none"`, `"arcface"`, `"cosface"`, or KD names combined with commas (see `edgefr.distill.losses`).
    options: the fields of `TrainConfig` (batch_size, lr, seed, val_fraction, max_images, online_teacher, ...).
    on_epoch_end: called on rank 0 with each epoch's metrics row (the search stage's hook for reporting or
      pruning; raising from it stops training after `last.pt` is written).
    Returns the run folder's paths, the metrics history and the best student (eval mode).
    """
    retain_freed_memory()
    config = TrainConfig(methods=parse_methods(methods), epochs=int(epochs), **options)
    if config.epochs < 1:
        raise EdgefrError(f"--epochs must be at least 1, got {epochs}")
    if data is None:
        raise EdgefrError("no training faces given; pass --data FOLDER (an ImageFolder of aligned faces)")
    out = Path(out)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.csv"
    if last_path.exists() and not resume:
        raise EdgefrError(f"{out}: already holds a run (last.pt); pass --resume to continue it or another --out")
    if resume and not last_path.exists():
        raise EdgefrError(f"{out}: nothing to resume (no last.pt)")
    if needs_teacher(config.methods) and teacher is None:
        raise EdgefrError(f"--kd {','.join(config.methods)} needs a teacher; pass --teacher")
    payload = resume_state = None
    if resume:  # checked before the teachers' embeddings (minutes)
        payload = read_checkpoint(last_path)
        resume_state = payload.get("train_state") or {}
        if resume_state.get("format") != TRAIN_STATE_FORMAT:
            raise EdgefrError(f"{last_path}: carries no training state to resume from")
        if resume_state["config"] != asdict(config) | {"methods": list(config.methods)}:
            raise EdgefrError(f"{last_path}: was written with other settings ({resume_state['config']}); resume "
                              "with the same options or start a new --out")

    runtime = start_runtime()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = student if isinstance(student, FaceNet) else create_model(student)
    dataset = load_faces(data)
    labels = dataset_labels(dataset)
    split = split_dataset(labels, config.val_fraction, config.seed, config.max_images)

    # Teachers: multistep keeps one target table per teacher checkpoint; the final (most mature) teacher also
    # provides the proxyless centres and the neuron selection, which must stay fixed during training.
    teachers = []
    if needs_teacher(config.methods):
        if "multistep" in config.methods:
            teachers = [resolve_teacher(p) for p in teacher_checkpoints(teacher)]
        else:
            teachers = [resolve_teacher(teacher)]
    tables = [None if config.online_teacher else teacher_targets(t, dataset) for t in teachers]
    final_targets = tables[-1] if tables else None
    if teachers and config.online_teacher and {"proxyless", "neuron"} & set(config.methods):
        final_targets = teacher_targets(teachers[-1], dataset)
    teacher_dim = teachers[-1].embedding_dim if teachers else None
    centres = (class_centres(teachers[-1], final_targets, labels, split)
               if "proxyless" in config.methods else None)
    neurons = None
    if "neuron" in config.methods:
        neurons = select_neurons(final_targets[0, split.train].numpy(), labels[split.train],
                                 config.neuron_count, config.neuron_max_correlation)
    objective = Objective(model, config.methods, split.num_classes, teacher_dim, centres, neurons,
                          config.mimic_weight, config.neuron_weight,
                          margin_weight=config.margin_weight).to(runtime.device)
    objective.student.train()
    model.to(memory_format=FAST_LAYOUT)  # restored before returning

    view = AugmentedView(dataset, split.train, split.class_of_label, config.seed,
                         augmentation_factory(config.augment))
    sampler = DistributedSampler(view, num_replicas=runtime.world, rank=runtime.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    # Seeded per epoch below, so that worker processes (which reseed the augmentation) stay reproducible.
    loader_seed = torch.Generator()
    loader = DataLoader(view, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.workers, generator=loader_seed, persistent_workers=False)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise EdgefrError(f"{len(split.train)} training images are fewer than one batch per process "
                          f"({config.batch_size} x {runtime.world}); lower --batch-size or raise --max-images")

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        trainable = [p for p in module.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            return torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        if config.optimizer == "adamw":
            return torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        raise EdgefrError(f"--optimizer {config.optimizer!r}: expected sgd or adamw")

    optimizer = make_optimizer(objective)
    use_cuda = runtime.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and amp_dtype == torch.float16)
    val_pairs = validation_pairs(dataset, labels, split.val, config.seed)

    def train_step(trainer: nn.Module, optimizer: torch.optim.Optimizer, scaler, batch, table_index, step: int):
        images, targets_class, indices, flipped = batch
        targets = None
        if teachers and config.online_teacher:
            targets = torch.from_numpy(teachers[table_index].embed(images.permute(0, 2, 3, 1).numpy()))
        elif teachers:
            targets = tables[table_index][flipped.long(), indices]
        images = to_model_input(images.to(runtime.device, non_blocking=True), model.preprocessing)
        with torch.autocast(runtime.device.type, dtype=amp_dtype, enabled=use_cuda):
            loss, parts = trainer(images, targets_class.to(runtime.device),
                                  None if targets is None else targets.to(runtime.device))
        if not torch.isfinite(loss):
            raise EdgefrError(f"loss became {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return len(images), {"loss": loss, **parts}

    def probe_seconds_per_step() -> float:
        """Wall time of a training step (data loading included) on a throw-away copy of the objective."""
        saved_rng = rng_state()
        probe = copy.deepcopy(objective)
        probe_optimizer = make_optimizer(probe)
        probe_scaler = torch.amp.GradScaler("cuda", enabled=scaler.is_enabled())
        batches = iter(loader)
        times = []
        for _ in range(min(PROBE_WARMUP_STEPS + PROBE_STEPS, steps_per_epoch)):
            started = time.perf_counter()
            train_step(probe, probe_optimizer, probe_scaler, next(batches), 0 if teachers else None, 0)
            times.append(time.perf_counter() - started)
        set_rng_state(saved_rng)
        seconds = torch.tensor(min(times[PROBE_WARMUP_STEPS:] or times))
        if runtime.world > 1:  # every rank must plan the same number of steps
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        return float(seconds)

    start_epoch, step, history = 0, 0, []
    if resume_state is not None:
        total_steps = resume_state.get("total_steps", config.epochs * steps_per_epoch)
        seconds_per_step = resume_state.get("probed_seconds_per_step")
    else:
        seconds_per_step = probe_seconds_per_step() if config.time_budget_s is not None else None
        total_steps = planned_steps(config, steps_per_epoch, seconds_per_step)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        round(config.warmup_epochs * steps_per_epoch), total_steps))
    if resume_state is not None:
        model.load_state_dict(payload["state_dict"])
        objective.load_state_dict(resume_state["heads"], strict=False)  # the student's keys came from state_dict
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        set_rng_state(resume_state["rng"])
        start_epoch, step, history = resume_state["epoch"] + 1, resume_state["step"], list(resume_state["history"])
    elif seconds_per_step is not None and progress and runtime.writes:
        print(f"time box {config.time_budget_s:.0f} s at {seconds_per_step:.2f} s/step: {total_steps} of "
              f"{config.epochs * steps_per_epoch} steps")

    trainer = nn.parallel.DistributedDataParallel(objective) if runtime.world > 1 else objective
    best_accuracy = max((row["val_accuracy"] for row in history if not math.isnan(row["val_accuracy"])),
                        default=-math.inf)
    for epoch in range(start_epoch, epochs):
        table_index = checkpoint_for_epoch(epoch, epochs, len(teachers)) if teachers else None
        sampler.set_epoch(epoch)
        view.set_epoch(epoch)
        loader_seed.manual_seed(sample_seed(config.seed, epoch))
        objective.student.train()
        epoch_steps = min(steps_per_epoch, total_steps - step)
        started, seen, totals = time.perf_counter(), 0, {}
        bar = None
        if progress and runtime.writes:
            from tqdm import tqdm

            bar = tqdm(total=epoch_steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                       dynamic_ncols=True, leave=False)
        for batch in itertools.islice(loader, epoch_steps):
            count, parts = train_step(trainer, optimizer, scaler, batch, table_index, step)
            scheduler.step()
            step += 1
            seen += count * runtime.world
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            if bar is not None:
                bar.set_postfix(loss=f"{parts['loss'].item():.3f}",
                                img_s=f"{seen / (time.perf_counter() - started):.0f}")
                bar.update()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        runtime.barrier()
        if not runtime.writes:
            continue
        accuracy = validate(model, val_pairs)
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               **{name: total / epoch_steps for name, total in totals.items()},
               "val_accuracy": accuracy, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)}
        if teachers and "multistep" in config.methods:
            row["teacher_checkpoint"] = table_index + 1
        history.append(row)
        extras = {"metrics": row, "epoch": epoch, "methods": list(config.methods)}
        # Without validation pairs (NaN) the latest epoch is the best one.
        if math.isnan(accuracy) or accuracy > best_accuracy:
            best_accuracy = accuracy
            save_student(best_path, model, **extras)
        if keep_epochs:
            save_student(out / EPOCH_DIR / epoch_checkpoint_name(epoch), model, **extras)
        save_student(last_path, model, **extras, train_state={
            "format": TRAIN_STATE_FORMAT, "config": asdict(config) | {"methods": list(config.methods)},
            "heads": head_state(objective), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
            "epoch": epoch, "step": step, "history": history, "total_steps": total_steps,
            "probed_seconds_per_step": seconds_per_step})
        write_metrics_csv(metrics_path, history)
        if on_epoch_end is not None:
            on_epoch_end(row)
    runtime.barrier()
    model.to(memory_format=torch.contiguous_format)
    best_model, cosines = None, np.zeros(0)
    if runtime.writes:
        from edgefr.space import load_student

        best_model, _ = load_student(best_path)
        if teachers and len(split.val):
            images = held_out_images(dataset, split)
            # The final (most mature) teacher's embedding is the one the student ends up regressing.
            targets = (final_targets[0, split.val] if final_targets is not None
                       else torch.from_numpy(teachers[-1].embed(images)))
            cosines = teacher_cosines(best_model, images, targets)
    return DistillResult(out, best_path, last_path, metrics_path, history, best_model, cosines)
