"""Searched students against MobileFaceNet scaled to the same measured latency, trained alike.

  python benchmarks/search_vs_baselines.py                      # search, train and evaluate on this host
  python benchmarks/search_vs_baselines.py --train-elsewhere    # search here, write train/train.sh, stop
  python benchmarks/search_vs_baselines.py --students DIR       # evaluate the students train.sh wrote to DIR
  python benchmarks/search_vs_baselines.py --students S0 --students S1 ...   # one DIR per training seed

For every device:budget run: `edgefr search --no-train` (search + fit + measure), then the width/depth-scaled
MobileFaceNet whose measured latency is closest to the searched student's (`matched_baseline`). Both
students are then distilled from the same teacher on the same data with the same recipe (`SHORT_RUN_RECIPE`),
epochs and time box, and evaluated the same way (LFW 10-fold, CelebA pairs). Prints one table: budget,
measured ms, params, MFLOPs, LFW and CelebA-pairs accuracy, search minutes.

Latency belongs to the device, so searching and measuring happen here; distillation does not, so the bigger
version (more epochs, no time box) can train on a GPU machine: `--train-elsewhere` writes a self-contained
folder (the arch JSONs and `train.sh`, one `python -m edgefr distill` per student) to copy there. Run it once
per seed (`train.sh DATA S1 --seed 1`); given several `--students` folders, the table shows the mean and std over
seeds and a second table the searched-minus-baseline difference of each seed (same seed, same data order).
Each evaluation is kept beside its checkpoint (`best.eval.json`), so an interrupted evaluation resumes.
Each run's search is kept too (OUT/RUN/plan.json) and reused only by a rerun with the same search options.

With `--finalists N` each search fits N architectures in the window (as `edgefr search --finalists N`), all of
them are trained (here or by train.sh) and, per training seed, the one whose held-out embeddings agree best with
the teacher's is the "searched" row, as `edgefr search` would have chosen it with that seed; every finalist keeps
its own row. The baseline is matched to the first (most probable) finalist's latency, as the choice is not known
before training.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import statistics
import time
from pathlib import Path

import click
import numpy as np

from edgefr.cli import EdgefrCommand
from edgefr.devices import resolve_device
from edgefr.digests import file_sha256
from edgefr.distill import SHORT_RUN_RECIPE, distill
from edgefr.distill.cli import default_data
from edgefr.distill.engine import held_out_cosines, mean_cosine
from edgefr.errors import EdgefrError
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.latency.profile import measure_networks
from edgefr.search import SearchConfig, run_pipeline
from edgefr.search.cli import ensure_table, layer_choices
from edgefr.search.pipeline import (FINALISTS_FILE, SEPARATING_STANDARD_ERRORS, choose_finalist, cosine_margins,
                                    evaluate_student)
from edgefr.space import arch_from_dict, count_flops, count_params, read_checkpoint, scaled_mobilefacenet
from edgefr.space.checkpoint import load_student

WIDTHS = (0.5, 0.75, 1.0, 1.25)
DEPTHS = (0.5, 0.75, 1.0, 1.25)
# Scaled MobileFaceNets measured to match a searched student: its neighbours by prediction, enough to cover the
# prediction's error (the grid's 32 nets span ~0.5-8 ms on host-ort).
MATCH_CANDIDATES = 6
# Three budgets per device inside what the scaled baselines can reach (host-ort about 0.5..8 ms predicted,
# host-tflite-int8 about 0.35..3.6 ms): a comparison needs a baseline at the same latency.
DEFAULT_RUNS = ("host-ort:2", "host-ort:4", "host-ort:7", "host-tflite-int8:1", "host-tflite-int8:2",
                "host-tflite-int8:3.5")
# The `edgefr distill` flag of each SHORT_RUN_RECIPE key, for train.sh.
RECIPE_FLAGS = {"methods": "--kd", "margin_weight": "--margin-weight", "optimizer": "--optimizer", "lr": "--lr"}


def baseline_grid() -> list:
    """The scaled MobileFaceNets a searched student is matched against: every width x depth, PReLU and ReLU."""
    return [scaled_mobilefacenet(w, d, act) for w, d, act in itertools.product(WIDTHS, DEPTHS, ("prelu", "relu"))]


def matched_baseline(device, searched) -> tuple:
    """The scaled MobileFaceNet (PReLU and ReLU variants) whose measured latency is closest to the searched
    student's, with its latency and the searched one's: the MATCH_CANDIDATES predicted closest to the searched
    one's prediction are measured with it in two calls (each net's fastest). A table time cannot be set against a
    measurement: this host drifts by up to ~20% from its table (at 0.80x, matching the table's prediction to the
    searched 3.78 ms picked a baseline measuring 2.80), and whole-net prediction errors differ between
    architectures."""
    predictor = LatencyPredictor(load_device_table(device))
    target = predictor.predict(searched).total_ms
    by_prediction = sorted(baseline_grid(), key=lambda arch: abs(predictor.predict(arch).total_ms - target))
    nearest = by_prediction[:MATCH_CANDIDATES]
    times = measure_networks(device, {"searched": searched, **{arch.name: arch for arch in nearest}},
                             "matching a baseline", calls=2)
    baseline = min(nearest, key=lambda arch: abs(times[arch.name] - times["searched"]))
    return baseline, times[baseline.name], times["searched"]


def parse_run(text: str) -> tuple[str, float]:
    device, _, budget = text.rpartition(":")
    try:
        return device, float(budget)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected DEVICE:MILLISECONDS, e.g. host-ort:4") from None


def check_searched_alike(run: Path, config: SearchConfig, finalists: int) -> None:
    """A kept plan is reused only if its search ran with `config` (a field an older report lacks had its default)
    and fitted as many finalists: rerunning with, say, other --activations into the same --out must not silently
    reuse the old searches."""
    differing = config.differing(json.loads((run / "report.json").read_text())["search"]["config"])
    if differing:
        raise EdgefrError(f"{run}: searched with other settings ({', '.join(differing)}); "
                          "use another --out or the same options")
    kept = len(json.loads((run / "plan.json").read_text()).get("finalists", [])) or 1
    if kept != finalists:
        raise EdgefrError(f"{run}: searched with --finalists {kept}; use another --out or the same options")


def search_and_match(device_name: str, budget: float, config: SearchConfig, teacher, data, run: Path,
                     finalists: int = 1) -> dict:
    """Search (or resume) one run and pick its baseline; returns the run's plan entry (kept in run/plan.json):
    the students to train, and with several finalists their labels under "finalists"."""
    plan_path = run / "plan.json"
    if plan_path.is_file():
        check_searched_alike(run, config, finalists)
        return json.loads(plan_path.read_text())
    started = time.perf_counter()
    ensure_table(device_name, click.echo)  # as `edgefr search`: this host's table, profiled first if another's
    summary = run_pipeline(config, teacher, data, run, train=False, finalists=finalists,
                           resume=(run / "search_state.pt").is_file())
    searched_ms = summary["budgets"][0]["measured_ms"]  # the most probable finalist's
    search_minutes = (time.perf_counter() - started) / 60
    device = resolve_device(device_name)
    baseline, baseline_ms, searched_now_ms = matched_baseline(device, arch_from_dict(summary["arch"]))
    if finalists == 1:
        students = {"searched": {"arch": summary["arch"], "measured_ms": searched_ms}}
    else:
        fitted = json.loads((run / FINALISTS_FILE).read_text())["finalists"]
        students = {f"finalist-{i + 1}": {"arch": record["arch"], "measured_ms": record["measured_ms"][device_name]}
                    for i, record in enumerate(fitted)}
    entry = {"device": device_name, "budget_ms": budget, "search_minutes": search_minutes, "students": {
        # The searched student measured again beside the baseline: the host drifts between the fit and the match.
        **students, baseline.name: {"arch": baseline.to_dict(), "measured_ms": baseline_ms,
                                    "searched_measured_beside_ms": searched_now_ms}}}
    if finalists > 1:
        entry["finalists"] = list(students)
    plan_path.write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def write_training_folder(folder: Path, plan: list[dict], epochs: int, teacher: str) -> Path:
    """archs/<run>__<student>.json and train.sh: `train.sh DATA STUDENTS` distills every student into
    STUDENTS/<run>__<student>/ with the recipe and epochs used here."""
    (folder / "archs").mkdir(parents=True, exist_ok=True)
    recipe = " ".join(f"{RECIPE_FLAGS[key]} {shlex.quote(str(value))}" for key, value in SHORT_RUN_RECIPE.items())
    lines = ["#!/usr/bin/env bash", "# Written by benchmarks/search_vs_baselines.py --train-elsewhere.",
             "# Usage: [JOBS=N] train.sh DATA STUDENTS [edgefr distill options, e.g. --workers 4]",
             "# Run from an edgefr checkout (or with edgefr installed); N students train at once (default 1).",
             "set -uo pipefail", 'here="$(cd "$(dirname "$0")" && pwd)"', 'data="$1" students="$2"; shift 2',
             'mkdir -p "$students"', "names=()", 'jobs="${JOBS:-1}"',
             "# The N students training at once share the cores (each with all of them would oversubscribe",
             "# the machine): each gets nproc / N threads, unless OMP_NUM_THREADS is set.",
             'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / jobs > 1 ? $(nproc) / jobs : 1 ))}"']
    for entry in plan:
        for label, student in entry["students"].items():
            name = f"{run_name(entry['device'], entry['budget_ms'])}__{label}"
            (folder / "archs" / f"{name}.json").write_text(json.dumps(student["arch"], indent=1) + "\n")
            lines += [f"names+=({name})",
                      (f'python3 -m edgefr distill --arch "$here/archs/{name}.json" --teacher {teacher} {recipe} '
                       f'--epochs {epochs} --data "$data" --out "$students/{name}" "$@" '
                       f'> "$students/{name}.log" 2>&1 &'),
                      'while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done']
    lines += ["wait", 'missing=0; for name in "${names[@]}"; do',
              '  [ -f "$students/$name/best.pt" ] || { echo "$name failed: see $students/$name.log"; missing=1; }',
              "done", "exit $missing"]
    script = folder / "train.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def run_name(device_name: str, budget_ms: float) -> str:
    """A run's folder under --out, and its students' prefix in train.sh's output."""
    return f"{device_name}-{budget_ms:g}ms"


def evaluated(checkpoint: Path) -> dict:
    """evaluate_student of a checkpoint, kept beside it (keyed by the checkpoint's digest) so reruns are free."""
    if not checkpoint.is_file():
        raise click.ClickException(f"{checkpoint}: no such student checkpoint (did train.sh finish it?)")
    digest = file_sha256(checkpoint)
    kept = checkpoint.with_suffix(".eval.json")
    if kept.is_file():
        record = json.loads(kept.read_text())
        if record.get("sha256") == digest:
            return record["accuracy"]
    model, _ = load_student(checkpoint)
    accuracy = evaluate_student(model)
    kept.write_text(json.dumps({"sha256": digest, "accuracy": accuracy}, indent=1) + "\n")
    return accuracy


def teacher_cosines(folder: Path, teacher, data) -> tuple[int, np.ndarray]:
    """(training seed, per-image held-out cosines to the teacher) of the run folder's best.pt, on the images its
    training held out (the split is rebuilt from the settings last.pt keeps, so a student trained elsewhere is
    ranked as `edgefr search --finalists` would have ranked it; `data` must be the faces it trained on)."""
    config = read_checkpoint(folder / "last.pt")["train_state"]["config"]
    model, _ = load_student(folder / "best.pt")
    return config["seed"], held_out_cosines(model, teacher, data, seed=config["seed"],
                                            val_fraction=config["val_fraction"], max_images=config["max_images"])


def spread(values: list[float], fold_std: float) -> float:
    """The +- of a mean: the std over seeds when there are several, else the 10-fold std of the one seed."""
    return statistics.stdev(values) if len(values) > 1 else fold_std


def table_row(entry: dict, label: str, model, accuracies: list[dict]) -> dict:
    """One student's row; `accuracies` holds one evaluate_student result per training seed."""
    lfw = [100 * a["lfw"]["accuracy"] for a in accuracies]
    celeba = [100 * a["celeba_pairs"]["accuracy"] for a in accuracies]
    return {"device": entry["device"], "budget_ms": entry["budget_ms"], "model": label,
            "measured_ms": entry["students"][label]["measured_ms"], "params_m": count_params(model) / 1e6,
            "mflops": count_flops(model) / 1e6, "seeds": len(accuracies), "lfw_seeds": lfw, "celeba_seeds": celeba,
            "lfw": statistics.fmean(lfw), "lfw_std": spread(lfw, 100 * accuracies[0]["lfw"]["accuracy_std"]),
            "celeba": statistics.fmean(celeba),
            "celeba_std": spread(celeba, 100 * accuracies[0]["celeba_pairs"]["accuracy_std"]),
            "search_minutes": entry["search_minutes"] if label == "searched" else None}


def chosen_row(entry: dict, finalist_rows: list[dict], seeds: list[int], cosines: list[list[np.ndarray]]) -> dict:
    """The "searched" row of a run with finalists: per training seed s (seeds[s]), the finalist whose held-out
    cosines cosines[finalist][s] agree best with the teacher (`choose_finalist`), and by how many paired standard
    errors each other finalist trails it (`cosine_margins`, as `edgefr search` tells a tie); latency and size are
    means over the seeds' picks."""
    agreements = [[mean_cosine(at_seed) for at_seed in per_finalist] for per_finalist in cosines]
    picks = [choose_finalist([per_finalist[s] for per_finalist in agreements]) for s in range(len(seeds))]
    margins = [cosine_margins([[per_finalist[s]] for per_finalist in cosines], pick) for s, pick in enumerate(picks)]
    first = finalist_rows[picks[0]]
    lfw = [finalist_rows[p]["lfw_seeds"][s] for s, p in enumerate(picks)]
    celeba = [finalist_rows[p]["celeba_seeds"][s] for s, p in enumerate(picks)]
    means = {key: statistics.fmean(finalist_rows[p][key] for p in picks)
             for key in ("measured_ms", "params_m", "mflops")}
    return {**first, **means, "model": "searched", "finalist": False, "search_minutes": entry["search_minutes"],
            "finalists": [r["model"] for r in finalist_rows], "chosen": [finalist_rows[p]["model"] for p in picks],
            "training_seeds": seeds, "agreements": agreements,
            "standard_errors_behind_chosen": margins,
            "lfw_seeds": lfw, "lfw": statistics.fmean(lfw), "lfw_std": spread(lfw, first["lfw_std"]),
            "celeba_seeds": celeba, "celeba": statistics.fmean(celeba),
            "celeba_std": spread(celeba, first["celeba_std"])}


def format_table(rows: list[dict], title: str) -> str:
    lines = [title, "",
             "| device | budget ms | model | measured ms | params | MFLOPs | LFW % | CelebA % | search min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        minutes = "" if r["search_minutes"] is None else f"{r['search_minutes']:.1f}"
        lines.append(f"| {r['device']} | {r['budget_ms']:g} | {r['model']} | {r['measured_ms']:.2f} | "
                     f"{r['params_m']:.2f}M | {r['mflops']:.0f} | {r['lfw']:.2f} +- {r['lfw_std']:.2f} | "
                     f"{r['celeba']:.2f} +- {r['celeba_std']:.2f} | {minutes} |")
    for r in rows:
        if "chosen" in r:
            lines.append(f"\n{r['device']} {r['budget_ms']:g} ms: searched = per training seed, the finalist whose "
                         f"held-out embeddings agree best with the teacher's: {', '.join(r['chosen'])}")
            lines += [choice_line(r, s) for s in range(len(r["chosen"]))]
    return "\n".join(lines) + "\n"


def choice_line(row: dict, s: int) -> str:
    """How clearly the held-out images chose at the searched row's s-th training seed: each other finalist's paired
    standard errors behind the chosen one, and those under SEPARATING_STANDARD_ERRORS named as the tie that
    `edgefr search` would break by distilling them again at the next seed (a benchmark row keeps the one seed)."""
    behind = dict(zip(row["finalists"], row["standard_errors_behind_chosen"][s]))
    others = [name for name in row["finalists"] if name != row["chosen"][s]]
    line = (f"- seed {row['training_seeds'][s]}: {row['chosen'][s]}, ahead of "
            + ", ".join(f"{name} (not measured)" if math.isnan(behind[name]) else f"{name} by {behind[name]:.2f}"
                        for name in others) + " paired standard errors")
    if tied := [name for name in others if behind[name] < SEPARATING_STANDARD_ERRORS]:
        line += (f"; a tie with {', '.join(tied)} (under {SEPARATING_STANDARD_ERRORS:g}), which `edgefr search` "
                 f"breaks by distilling them again at the next seed")
    return line


def format_differences(rows: list[dict]) -> str:
    """Searched minus baseline per run, paired by seed: mean +- std over seeds and how many seeds it won (one seed
    has no spread over seeds, so none is printed rather than a +- 0.00 that would read as certainty)."""
    lines = ["Searched minus baseline, paired by training seed (pp; mean +- std over seeds if several; seeds won)",
             "", "| device | budget ms | baseline | LFW | CelebA |", "|---|---|---|---|---|"]
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["device"], r["budget_ms"]), []).append(r)
    for (device, budget), group in runs.items():
        searched = next(r for r in group if r["model"] == "searched")
        for baseline in (r for r in group if r is not searched and not r.get("finalist")):
            cells = []
            for key in ("lfw_seeds", "celeba_seeds"):
                diffs = [a - b for a, b in zip(searched[key], baseline[key])]
                spread_text = f" +- {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
                cells.append(f"{statistics.fmean(diffs):+.2f}{spread_text} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
            lines.append(f"| {device} | {budget:g} | {baseline['model']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


@click.command(cls=EdgefrCommand)
@click.option("--run", "runs", multiple=True, default=DEFAULT_RUNS, show_default=True,
              help="DEVICE:BUDGET_MS, repeatable.")
@click.option("--teacher", default="sface")
@click.option("--data", help="Training faces [$EDGEFR_DATA or ../shared/faces/celeba].")
@click.option("--kd", default="proxyless,mimic", help="KD objective guiding the search.")
@click.option("--margin-weight", default=1.0, help="Its margin-softmax weight (as edgefr search).")
@click.option("--steps", default=300, help="Search steps.")
@click.option("--activations", help="Activations the searched students may use (as edgefr search).")
@click.option("--kernels", help="Kernel sizes they may use (as edgefr search).")
@click.option("--expansions", help="Expansions they may use (as edgefr search).")
@click.option("--finalists", default=1, show_default=True, type=click.IntRange(min=1),
              help="Architectures fitted per search, all trained; per seed the one agreeing best with the teacher "
                   "on held-out faces is the searched row (as edgefr search --finalists).")
@click.option("--epochs", default=2, help="Distillation epochs, the same for searched and baseline students.")
@click.option("--distill-minutes", default=8.0, help="Distillation time box per student on this host (0: none).")
@click.option("--train-elsewhere", is_flag=True, help="Stop after the searches; write OUT/train/ for a GPU machine.")
@click.option("--students", type=click.Path(file_okay=False, exists=True, path_type=Path), multiple=True,
              help="Evaluate the students train.sh wrote here instead of training them; repeat once per seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/search-vs-baselines"))
def main(runs, teacher, data, kd, margin_weight, steps, activations, kernels, expansions, finalists, epochs,
         distill_minutes, train_elsewhere, students, out) -> None:
    data = data or default_data()
    choices = layer_choices(activations, kernels, expansions)
    plan = []
    for device_name, budget in map(parse_run, runs):
        config = SearchConfig(devices=(device_name,), budgets_ms=(budget,), methods=tuple(kd.split(",")),
                              margin_weight=margin_weight, steps=steps, checkpoint_every=max(1, min(20, steps // 4)),
                              **choices)
        plan.append(search_and_match(device_name, budget, config, teacher, data,
                                     out / run_name(device_name, budget), finalists))
    if train_elsewhere:
        script = write_training_folder(out / "train", plan, epochs, teacher)
        click.echo(f"wrote {script}; on the training machine: {script} DATA STUDENTS, then rerun this with "
                   f"--students STUDENTS")
        return
    rows = []
    for entry in plan:
        run = run_name(entry["device"], entry["budget_ms"])
        group, cosines = [], []
        for label, student in entry["students"].items():
            if students:
                folders = [folder / f"{run}__{label}" for folder in students]
            else:
                folders = [out / run / label]
                distill(student["arch"], teacher, data, epochs=epochs, out=folders[0],
                        resume=(folders[0] / "last.pt").is_file(), time_budget_s=distill_minutes * 60 or None,
                        **SHORT_RUN_RECIPE)
            accuracies = [evaluated(folder / "best.pt") for folder in folders]
            group.append(table_row(entry, label, load_student(folders[0] / "best.pt")[0], accuracies))
            if label in entry.get("finalists", ()):
                group[-1]["finalist"] = True
                # Every finalist was trained in the same folders, so at the same seeds.
                seeds, per_seed = zip(*(teacher_cosines(folder, teacher, data) for folder in folders))
                cosines.append(list(per_seed))
        if cosines:
            group.insert(0, chosen_row(entry, group[:len(cosines)], list(seeds), cosines))
        rows += group
    if students:
        spread_note = "+- std over seeds" if len(students) > 1 else "+- 10-fold std"
        where = f"trained elsewhere, {len(students)} seed(s) ({', '.join(map(str, students))}); {spread_note}"
    else:
        where = f"trained here, {epochs} epochs, time box {distill_minutes:g} min; +- 10-fold std"
    table = format_table(rows, f"Searched vs scaled MobileFaceNet; students {where}; recipe {SHORT_RUN_RECIPE}")
    table += "\n" + format_differences(rows)
    (out / "table.md").write_text(table)
    (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    click.echo("\n" + table)


if __name__ == "__main__":
    main()
