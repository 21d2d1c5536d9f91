"""`edgefr search`."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from edgefr.errors import EdgefrError


def ensure_table(device_name: str, log) -> None:
    """This host's table must exist, match its CPU and runtime, and run at its speed (a sample of its blocks
    measured again: the CPU name alone does not tell machines apart). If not, a table shipped for another machine
    like this one takes its place, else the host is profiled first (remote devices: error)."""
    from edgefr.devices import resolve_device
    from edgefr.latency import load_device_table, table_path
    from edgefr.latency.profile import (
        alternate_table_paths,
        profile_device,
        speed_against_table,
        table_of_this_machine,
    )
    from edgefr.space import MFN_SPACE

    device = resolve_device(device_name)
    try:
        table = load_device_table(device)
        if device.transport != "local":
            return
        speed = speed_against_table(device, table)
        if not speed["other_machine"]:
            return
        log(f"{table.where}: its blocks run {speed['factor']:.2f}x their table times on this host (median of "
            f"{speed['anchors']}): it was measured on another machine")
    except EdgefrError as problem:
        if device.transport != "local":
            raise
        log(str(problem))
    match = table_of_this_machine(device, alternate_table_paths(device.table_name))
    if match is not None:
        path, speed = match
        log(f"{path}: measured on a machine like this one (its blocks run {speed['factor']:.2f}x their table "
            f"times here); it becomes {table_path(device.table_name)}")
        staged = table_path(device.table_name).with_suffix(".installing")
        shutil.copyfile(path, staged)
        staged.replace(table_path(device.table_name))
        return
    log(f"profiling {device.name} first (checkpointed; interrupt and rerun to resume)")
    # The table at the path was just found unusable: resume a partial profile only, do not check it again.
    profile_device(device, MFN_SPACE, table_path(device.table_name), extend=False, log=log)


def _split(flag: str, text: str | None, kind: type) -> tuple | None:
    """A comma-separated option value as a tuple of `kind` (None when the option is not given)."""
    if text is None:
        return None
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgefrError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None


def layer_choices(activations: str | None, kernels: str | None, expansions: str | None) -> dict:
    """--activations/--kernels/--expansions as `SearchConfig` fields, checked against the space (one-line errors
    before any profiling or search)."""
    from edgefr.space import MFN_SPACE

    choices = {"activations": _split("--activations", activations, str),
               "kernels": _split("--kernels", kernels, int),
               "expansions": _split("--expansions", expansions, int)}
    MFN_SPACE.restricted(**choices)
    return choices


@click.command("search")
@click.option("--latency-ms", "budgets", type=float, multiple=True, required=True,
              help="Latency budget in ms (one, or one per --device).")
@click.option("--device", "devices", multiple=True, default=["host-ort"], show_default=True,
              help="Device(s) the student must meet the budget on; repeat for several.")
@click.option("--teacher", default="sface", show_default=True, help="Teacher name or model file.")
@click.option("--data", help="ImageFolder of aligned faces [$EDGEFR_DATA, else ../shared/faces/celeba].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder [runs/search-<ms>ms].")
@click.option("--kd", default="proxyless,mimic", show_default=True, help="Distillation methods guiding the search.")
@click.option("--margin-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the margin-softmax loss in that guidance (0: regress the teacher's embedding alone).")
@click.option("--steps", default=300, show_default=True, help="Search steps (one sampled architecture each).")
@click.option("--warmup-steps", default=60, show_default=True, help="Steps training weights before the arch.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--distill-epochs", default=2, show_default=True, help="Epochs distilling the searched student.")
@click.option("--distill-minutes", default=8.0, show_default=True, type=click.FloatRange(min=0),
              help="Time box for those epochs' training steps on this machine (0: none); the LR schedule spans the "
                   "steps that fit.")
@click.option("--finalists", default=1, show_default=True, type=click.IntRange(min=1),
              help="Distill this many fitted architectures (the most probable, then fits of samples of the learned "
                   "distributions) and keep the one whose embeddings of held-out training images agree best with the "
                   "teacher's: N x the distillation time.")
@click.option("--tie-break-seeds", default=1, show_default=True, type=click.IntRange(min=0),
              help="With --finalists: while finalists are within 2 paired standard errors of the chosen one on the "
                   "held-out images, distill them again at the next --seed, up to this many more seeds, and choose by "
                   "the mean over seeds (0: only warn).")
@click.option("--activations", help="Activations the student may use, comma-separated [all: relu,prelu].")
@click.option("--kernels", help="Depthwise kernel sizes its blocks may use [all: 3,5].")
@click.option("--expansions", help="Expansions its inverted residuals may use [all: 2,4].")
@click.option("--latency-penalty", default="lagrangian", show_default=True,
              type=click.Choice(["lagrangian", "fbnet"]),  # engine.LATENCY_PENALTIES, which would import torch
              help="lagrangian: + lambda * E[lat] / budget, lambda by dual ascent to 0.95 x budget; fbnet: loss x "
                   "0.2 log(E[lat] ms)^0.6 (no budget: the fit does all of it).")
@click.option("--embedding", default=128, show_default=True, type=click.Choice(["128", "512"]))
@click.option("--max-images", type=int, help="Use at most this many training images (whole identities).")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-train", is_flag=True, help="Architecture only: search, fit and measure; no distillation.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def search_command(budgets, devices, teacher, data, out, kd, margin_weight, steps, warmup_steps, batch_size,
                   distill_epochs, distill_minutes, finalists, tie_break_seeds, activations, kernels, expansions,
                   latency_penalty, embedding, max_images, seed, no_train, resume) -> None:
    """Search a student that meets --latency-ms on the device(s), measured; then distill and evaluate it.

    \b
    Writes OUT/arch.json (the searched architecture), OUT/student.pt (distilled, unless --no-train),
    OUT/report.{json,md,png}. Interrupt at any time; --resume continues where it stopped.
    """
    from edgefr.distill.cli import default_data
    from edgefr.distill.losses import parse_methods
    from edgefr.search import SearchConfig, run_pipeline

    choices = layer_choices(activations, kernels, expansions)
    if finalists > 1 and no_train:  # before any profiling
        raise EdgefrError(f"--finalists {finalists} ranks architectures by distilling them; drop --no-train")
    for device in devices:
        ensure_table(device, click.echo)
    data = data or default_data()
    out = out or Path("runs") / f"search-{'-'.join(f'{b:g}' for b in budgets)}ms"
    config = SearchConfig(devices=tuple(devices), budgets_ms=tuple(budgets), methods=parse_methods(kd),
                          margin_weight=margin_weight, steps=steps,
                          warmup_steps=min(warmup_steps, steps), batch_size=batch_size, embedding=int(embedding),
                          seed=seed, max_images=max_images, latency_penalty=latency_penalty, **choices,
                          checkpoint_every=max(1, min(20, steps // 4)))  # at least 4 checkpoints per search
    summary = run_pipeline(config, teacher, data, out, train=not no_train, distill_epochs=distill_epochs,
                           distill_minutes=distill_minutes or None, finalists=finalists,
                           tie_break_seeds=tie_break_seeds, resume=resume,
                           log=click.echo)
    for b in summary["budgets"]:
        click.echo(f"{b['device']}: budget {b['budget_ms']:g} ms, predicted {b['predicted_ms']:.2f} ms, measured "
                   f"{b['measured_ms']:.2f} ms ({b['measured_over_budget']:.2f} x budget)")
    for name, result in summary.get("accuracy", {}).items():
        click.echo(f"{name}: {100 * result['accuracy']:.2f} +- {100 * result['accuracy_std']:.2f} %")
    outputs = "arch.json" + ("" if no_train else ", student.pt") + ", report.md, report.json, report.png"
    click.echo(f"outputs in {out}: {outputs}")
