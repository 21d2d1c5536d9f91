"""The search report: report.json (the record), report.md (for people), report.png (trajectories)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefr.search.pipeline import SEPARATING_STANDARD_ERRORS
from edgefr.space import arch_from_dict


def write_report(out: Path, summary: dict) -> None:
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    _plot(out / "report.png", summary)
    (out / "report.md").write_text(_markdown(summary))


def _markdown(summary: dict) -> str:
    arch = arch_from_dict(summary["arch"])
    lines = [f"# edgefr search: {arch.name}", "",
             "| device | budget ms | predicted ms | measured ms | measured / budget |",
             "|---|---|---|---|---|"]
    for b in summary["budgets"]:
        lines.append(f"| {b['device']} | {b['budget_ms']:g} | {b['predicted_ms']:.2f} | {b['measured_ms']:.2f} | "
                     f"{b['measured_over_budget']:.2f}{_window_note(b)} |")
    devices = [b["device"] for b in summary["budgets"]]
    lines += ["", f"Params {summary['params'] / 1e6:.3f}M, {summary['mflops']:.1f} MFLOPs, "
              f"{summary['search']['steps']} search steps.", "", "## Architecture", "",
              "| stage | width | layer | block | " + " | ".join(f"{d} predicted ms" for d in devices) + " |",
              "|---" * (4 + len(devices)) + "|"]
    for b in summary["blocks"]:
        cells = [b["stage"], "" if b["width"] is None else b["width"], "" if b["layer"] is None else b["layer"],
                 f"`{b['block']}`"] + [f"{b['predicted_ms'][d]:.3f}" for d in devices]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"Stem {arch.stem_act}, head {arch.head_width} {arch.head_act}, embedding {arch.embedding}.", ""]
    lines += _decision_lines(summary["decisions"])
    if "finalists" in summary:
        lines += _finalist_lines(summary["finalists"])
    if "accuracy" in summary:
        lines += ["## Accuracy", "", "| set | accuracy % | std |", "|---|---|---|"]
        for name, result in summary["accuracy"].items():
            lines.append(f"| {name} | {100 * result['accuracy']:.2f} | {100 * result['accuracy_std']:.2f} |")
        lines.append("")
    if "training" in summary:
        lines += _training_lines(summary["training"])
    lines += ["## Fitting and measurement", ""]
    lines += ["| round | moves from the round's start | predicted ms | measured ms | measured / budget |",
              "|---|---|---|---|---|"]
    for r in summary["measurement_rounds"]:
        for c in r["candidates"]:
            # "again": a candidate of an earlier round measured in this round's call too (runs fitted before
            # that rule lack the key).
            again = " (again)" if c.get("again") else ""
            lines.append(f"| {r['round']}{again} | {len(c['moves'])} | {_per_device(c['predicted_ms'])} | "
                         f"{_per_device(c['measured_ms'])} | {c['measured_over_budget']:.3f} |")
    lines += ["", "Each row is one measurement call; (again) marks a candidate measured in an earlier round too. A "
              "candidate's value is its minimum over its calls (a slow spell of a shared host slows one call).",
              "", "![trajectories](report.png)", ""]
    return "\n".join(lines)


def _probability(choice: dict) -> str:
    return f"{choice['p']:.2f} ({choice['uniform']:.2f})"


def _median_block_probability(decisions: dict) -> tuple[float, float] | None:
    blocks = [c for stage in decisions["stages"] for c in stage["layers"]]
    if not blocks:
        return None
    return (float(np.median([c["p"] for c in blocks])), float(np.median([c["uniform"] for c in blocks])))


def decisions_line(decisions: dict) -> str:
    """One line: the learned probability of the result's stage widths, depths and (median) layer blocks."""
    stages = decisions["stages"]
    line = ("learned probability of its choices (uniform): widths "
            + ", ".join(_probability(s["width"]) for s in stages)
            + "; depths " + ", ".join(_probability(s["depth"]) for s in stages))
    blocks = _median_block_probability(decisions)
    return line + ("" if blocks is None else f"; layer blocks, median {blocks[0]:.2f} ({blocks[1]:.2f})")


def _decision_lines(decisions: dict) -> list[str]:
    """What the search learned about each choice of this architecture: a choice near its uniform probability was
    left undecided by the search (the argmax of near-equal probabilities), whatever the fit then made of it."""
    lines = ["## What the search decided", "",
             "Learned probability of each choice this architecture makes, and in brackets the uniform one (1 / its "
             "options); a probability near the uniform one is a choice the search left open.", "",
             "| stage | width | depth | layer blocks |", "|---|---|---|---|"]
    for s, stage in enumerate(decisions["stages"]):
        lines.append(f"| {s} | {_probability(stage['width'])} | {_probability(stage['depth'])} | "
                     + (", ".join(_probability(c) for c in stage["layers"]) or "-") + " |")
    lines += ["", f"Stem activation {_probability(decisions['stem_act'])}, head activation "
              f"{_probability(decisions['head_act'])}.", ""]
    return lines


def _shape(finalist: dict) -> str:
    return " / ".join(f"{w} x {d}" for w, d in zip(finalist["widths"], finalist["depths"]))


def finalists_line(finalists: list[dict]) -> str:
    """One printed line: each finalist's stage widths x depths, held-out agreement and the seeds it was distilled
    at, with how many paired standard errors it trails the chosen one by, the chosen one marked."""
    return "finalists by held-out cosine to the teacher: " + "; ".join(
        f"{f['name']} ({_shape(f)}) {f['teacher_agreement']:.4f} at {_seeds(f)}"
        + (" <- chosen" if f["chosen"] else f" ({f['standard_errors_behind_chosen']:.1f} s.e. behind)")
        for f in finalists)


def undecided_line(finalists: list[dict]) -> str:
    """A printed warning naming the finalists the held-out images still do not tell apart from the chosen one (fewer
    than SEPARATING_STANDARD_ERRORS behind it), or "" when there are none. One distilled at fewer seeds than the
    chosen one was left behind by a tie-break and is not named: more seeds would not distill it again."""
    (chosen,) = [f for f in finalists if f["chosen"]]
    close = [f for f in finalists if not f["chosen"] and len(f["seeds"]) == len(chosen["seeds"])
             and f["standard_errors_behind_chosen"] < SEPARATING_STANDARD_ERRORS]
    if not close:
        return ""
    names = ", ".join(f"{f['name']} ({f['standard_errors_behind_chosen']:.1f})" for f in close)
    files = " ".join(f["arch_file"] for f in [chosen, *close])
    return (f"warning: within {SEPARATING_STANDARD_ERRORS:g} paired standard errors of the chosen "
            f"{chosen['name']}: {names}; the held-out images do not tell them apart at {_seeds(chosen)}. To decide, "
            f"rerun with --resume and a larger --tie-break-seeds (distills them at further seeds), or distill each "
            f"again at another --seed (edgefr distill --arch FILE): {files}")


def _seeds(finalist: dict) -> str:
    seeds = [str(run["seed"]) for run in finalist["seeds"]]
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)


def _finalist_lines(finalists: list[dict]) -> list[str]:
    devices = list(finalists[0]["measured_ms"])
    lines = ["## Finalists", "", "Each fitted architecture was distilled with the same recipe; the one whose "
             "embeddings of the held-out images of the training identities agree best with the teacher's (mean "
             "cosine) is the result. The paired standard errors say how far those images set each finalist apart from "
             f"it: under {SEPARATING_STANDARD_ERRORS:g}, they do not tell the two apart, and the tie-break distills "
             "both again at the next seed (each seed holds out its own images), for up to --tie-break-seeds seeds; "
             "the finalists distilled at the most seeds are ranked by their mean. Validation accuracy (pairs of the "
             "held-out images) picked best.pt within each run.", "",
             "| finalist | stage widths x depths | " + " | ".join(f"{d} measured ms" for d in devices)
             + " | params | MFLOPs | held-out cosine to teacher (mean) | per seed | paired standard errors behind the "
             "chosen | validation % per seed | best epoch per seed |",
             "|---" * (9 + len(devices)) + "|"]
    for f in finalists:
        name = f"**{f['name']}** (chosen)" if f["chosen"] else f["name"]
        per_seed = ", ".join(f"{run['teacher_agreement']:.4f} (seed {run['seed']})" for run in f["seeds"])
        validation = ", ".join(f"{100 * run['val_accuracy']:.2f}" for run in f["seeds"])
        epochs = ", ".join(str(run["best_epoch"]) for run in f["seeds"])
        lines.append(f"| {name} | {_shape(f)} | " + " | ".join(f"{f['measured_ms'][d]:.2f}" for d in devices)
                     + f" | {f['params'] / 1e6:.3f}M | {f['mflops']:.1f} | {f['teacher_agreement']:.4f} | "
                     f"{per_seed} | {f['standard_errors_behind_chosen']:.1f} | {validation} | {epochs} |")
    return lines + [""]


def _training_lines(training: dict) -> list[str]:
    history = training["history"]
    steps, seconds = history[-1]["step"], sum(row["seconds"] for row in history)
    box = training.get("time_box_minutes")
    return ["## Distillation", "",
            f"{steps} steps in {len(history)} epoch(s), {seconds / 60:.1f} min, "
            f"{history[-1]['images_per_s']:.1f} images/s; at most {training['epochs']} epochs"
            + (f" within a {box:g}-minute time box" if box else "") + f"; recipe `{training['recipe']}`; seed "
            f"{training['seed']}.", ""]


def _window_note(budget: dict) -> str:
    if budget["within_window"]:
        return " (binding)" if budget.get("binding") else ""
    if not budget.get("binding") and budget["measured_over_budget"] <= 1.0:
        return " (under budget; another device binds)"
    return " (outside 0.90-1.00)"


def _per_device(values: dict[str, float]) -> str:
    return ", ".join(f"{device} {ms:.2f}" for device, ms in values.items())


def _plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trajectory = summary["search"]["trajectory"]
    if not trajectory:
        return
    steps = [t["step"] for t in trajectory]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for b in summary["budgets"]:
        axes[0].plot(steps, [t["expected_ms"][b["device"]] for t in trajectory], label=f"E[latency] {b['device']}")
        axes[0].axhline(b["budget_ms"], linestyle="--", color="gray")
    axes[0].set(title="expected latency vs budget", xlabel="step", ylabel="ms")
    axes[0].legend(fontsize=7)
    for s in range(len(trajectory[0]["widths"])):
        expected_width = [sum(p * i for i, p in enumerate(t["widths"][s])) for t in trajectory]
        expected_depth = [sum(p * i for i, p in enumerate(t["depths"][s])) for t in trajectory]
        axes[1].plot(steps, expected_width, label=f"stage {s}")
        axes[2].plot(steps, expected_depth, label=f"stage {s}")
    axes[1].set(title="width distribution (mean option index)", xlabel="step")
    axes[2].set(title="depth distribution (mean option index)", xlabel="step")
    axes[1].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
