"""`edgefr distill` (train a student from a teacher) and `edgefr train` (train a model from scratch, keeping a
checkpoint per epoch so that it can serve as a multi-step KD teacher)."""

from __future__ import annotations

import math
import os

import click

from edgefr.errors import EdgefrError


def default_data() -> str:
    """$EDGEFR_DATA, else the shared CelebA training faces where they exist."""
    from edgefr.paths import shared_dir

    if os.environ.get("EDGEFR_DATA"):
        return os.environ["EDGEFR_DATA"]
    celeba = shared_dir() / "faces" / "celeba"
    if celeba.is_dir():
        return str(celeba)
    raise EdgefrError("no training faces found; pass --data FOLDER (an ImageFolder of aligned 112x112 faces) "
                      "or set EDGEFR_DATA")


def training_options(command):
    """The options `distill` and `train` share."""
    options = [
        click.option("--data", type=click.Path(file_okay=False), default=None,
                     help="ImageFolder of aligned faces [default: $EDGEFR_DATA, else ../shared/faces/celeba]."),
        click.option("--epochs", type=int, default=20, show_default=True),
        click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder to write."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--batch-size", type=int, default=64, show_default=True, help="Per process."),
        click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
                     help="adamw converges faster in short runs (use --lr 2e-3)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--max-images", type=int, default=None, help="Train on whole identities up to N images."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True,
                     help="Share of each identity's images held out to pick best.pt."),
        click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_and_report(arch: str, teacher, methods: str, data: str | None, epochs: int, out: str, resume: bool,
                   keep_epochs: bool, **options) -> None:
    from edgefr.distill.engine import distill

    result = distill(arch, teacher, data or default_data(), methods, epochs, out, resume=resume,
                     keep_epochs=keep_epochs, **options)
    if result.student is None:  # a DDP rank other than 0: rank 0 reports
        return
    best = result.best
    click.echo(f"best epoch {best.get('epoch')}: validation accuracy {best.get('val_accuracy', float('nan')):.4f}"
               + ("" if math.isnan(result.teacher_agreement)
                  else f", held-out cosine to the teacher {result.teacher_agreement:.4f}"))
    from edgefr.distill.embedder import ModuleEmbedder
    from edgefr.verify.shared_sets import evaluate_shared

    lfw = evaluate_shared(ModuleEmbedder(result.student, f"{out}/best.pt"), ("lfw",)).get("lfw")
    if lfw is not None:
        click.echo(f"LFW 10-fold accuracy of best.pt: {100 * lfw.accuracy:.2f} +- {100 * lfw.accuracy_std:.2f}")
    click.echo(f"outputs: {result.best_path}, {result.last_path}, {result.metrics_csv}")


@click.command("distill")
@click.option("--arch", default="mobilefacenet", show_default=True,
              help="Student: a registered name (edgefr models) or an arch JSON file.")
@click.option("--teacher", default="sface", show_default=True,
              help="Teacher name, a student checkpoint .pt, or a run folder (multistep: an `edgefr train` run).")
@click.option("--kd", default="proxyless,mimic", show_default=True,
              help="Comma-separated: mimic, proxyless, neuron, multistep, arcface/cosface; 'none' = ArcFace only.")
@click.option("--online-teacher", is_flag=True, help="Embed each augmented batch with the teacher (slower, exact).")
@click.option("--mimic-weight", type=float, default=100.0, show_default=True,
              help="Weight of the embedding mimic (MSE of normalized embeddings).")
@click.option("--margin-weight", type=float, default=1.0, show_default=True,
              help="Weight of the margin softmax; 0 = pure embedding regression (best for short runs on few faces).")
@training_options
def distill_command(arch: str, teacher: str, kd: str, online_teacher: bool, **options) -> None:
    """Train a student from a teacher with the chosen KD methods; prints LFW accuracy of best.pt."""
    from edgefr.distill.losses import needs_teacher, parse_methods

    methods = parse_methods(kd)
    run_and_report(arch, teacher if needs_teacher(methods) else None, kd, keep_epochs=False,
                   online_teacher=online_teacher, **options)


@click.command("train")
@click.option("--arch", default="mobilefacenet_w125", show_default=True,
              help="Model to train from scratch (teacher-sized by default).")
@click.option("--loss", type=click.Choice(["arcface", "cosface"]), default="arcface", show_default=True)
@training_options
def train_command(arch: str, loss: str, **options) -> None:
    """Train a model from scratch with a margin loss, keeping epochs/epoch_NNN.pt (a multi-step KD teacher)."""
    run_and_report(arch, None, loss, keep_epochs=True, **options)

