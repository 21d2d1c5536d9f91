"""Compare the KD methods of `edgefr.distill` at equal epochs: distil a student (MobileFaceNet) from a teacher
(SFace) on CelebA with each method, and print LFW 10-fold accuracy, accuracy on verification pairs of held-out
CelebA images (the validation split: images the student never trained on) and training time, beside the
teacher's own numbers on the same pairs.

    python benchmarks/kd_methods.py                      # defaults: MobileFaceNet, 3 epochs per run
    python benchmarks/kd_methods.py --epochs 1 --max-images 600 --lfw-pairs 600   # a quick smoke run
    python benchmarks/kd_methods.py --multistep-teacher runs/teacher   # adds multistep (an `edgefr train` run)
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from edgefr.cli import EdgefrCommand

DEFAULT_METHODS = ("none", "mimic", "proxyless", "neuron", "proxyless,mimic")
# Runs beyond the --kd values: (label, --kd, distill options). Pure embedding regression is the short-run recipe
# the tests rely on; it earns a row.
EXTRA_RUNS = (("mimic, margin weight 0", "mimic", {"margin_weight": 0.0}),)


@click.command(cls=EdgefrCommand)
@click.option("--arch", default="mobilefacenet", show_default=True)
@click.option("--teacher", default="sface", show_default=True)
@click.option("--data", default=None, help="Training ImageFolder [default: ../shared/faces/celeba].")
@click.option("--epochs", type=int, default=3, show_default=True, help="Epochs per method.")
@click.option("--methods", "method_list", multiple=True, help=f"--kd values to compare [default: {DEFAULT_METHODS}].")
@click.option("--multistep-teacher", type=click.Path(exists=True, file_okay=False), default=None,
              help="An `edgefr train` run folder; adds the multistep method (with mimic).")
@click.option("--max-images", type=int, default=None)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-2, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="adamw", show_default=True,
              help="One recipe for every method; adamw converges in few epochs, SGD needs long schedules.")
@click.option("--lfw-pairs", type=int, default=6000, show_default=True, help="LFW pairs to score (10 folds).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/kd_methods", show_default=True)
def main(arch, teacher, data, epochs, method_list, multistep_teacher, max_images, batch_size, lr, optimizer, lfw_pairs,
         out):
    from edgefr.data.faces import ImageFolderFaces
    from edgefr.data.pairs import read_lfw_pairs
    from edgefr.distill import ModuleEmbedder, distill
    from edgefr.distill.cli import default_data
    from edgefr.distill.data import dataset_labels, split_dataset, validation_pairs
    from edgefr.distill.engine import TrainConfig
    from edgefr.paths import shared_dir
    from edgefr.teachers import load_teacher
    from edgefr.verify import verify_pairs

    dataset = ImageFolderFaces(data or default_data())
    config = TrainConfig(methods=(), epochs=epochs, max_images=max_images)
    labels = dataset_labels(dataset)
    split = split_dataset(labels, config.val_fraction, config.seed, config.max_images)
    held_out = validation_pairs(dataset, labels, split.val, config.seed)
    lfw_root = shared_dir() / "faces" / "lfw"
    lfw = read_lfw_pairs(lfw_root / "pairs.txt", lfw_root).per_fold_subset(lfw_pairs // 10)

    def score(embedder) -> tuple[str, str]:
        results = (verify_pairs(embedder, lfw, progress=False), verify_pairs(embedder, held_out, progress=False))
        return tuple(f"{100 * r.accuracy:.2f} +- {100 * r.accuracy_std:.2f}" for r in results)

    rows = [(f"teacher {teacher}", *score(load_teacher(teacher)), "-")]
    runs = [(m, m, teacher, {}) for m in (method_list or DEFAULT_METHODS)]
    if not method_list:
        runs += [(label, m, teacher, options) for label, m, options in EXTRA_RUNS]
    if multistep_teacher:
        runs.append(("multistep", "multistep", multistep_teacher, {}))
    for label, methods, source, options in runs:
        started = time.perf_counter()
        run = Path(out) / label.replace(",", "+").replace(" ", "-")  # an interrupted benchmark resumes its runs
        result = distill(arch, source, dataset, methods, epochs, run, batch_size=batch_size, lr=lr,
                         optimizer=optimizer, max_images=max_images, resume=(run / "last.pt").is_file(), **options)
        minutes = (time.perf_counter() - started) / 60
        rows.append((f"{arch}: {label}", *score(ModuleEmbedder(result.student, label)), f"{minutes:.1f}"))
        click.echo(f"{rows[-1]}", err=True)

    click.echo(f"\n{epochs} epoch(s) each on {len(split.train)} training images of {split.num_classes} identities; "
               f"LFW: {len(lfw)} pairs; held-out CelebA: {len(held_out)} pairs")
    click.echo(f"{'model':40s} {'LFW 10-fold %':>16s} {'CelebA held-out %':>18s} {'train min':>10s}")
    for name, lfw_accuracy, celeba_accuracy, minutes in rows:
        click.echo(f"{name:40s} {lfw_accuracy:>16s} {celeba_accuracy:>18s} {minutes:>10s}")


if __name__ == "__main__":
    main()
