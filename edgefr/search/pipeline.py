"""The whole `edgefr search` job: search -> fit the budget -> measure on the device(s) -> distill -> evaluate ->
report. Each phase leaves a file in the run folder, and a rerun with `--resume` skips the phases already done."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefr.errors import EdgefrError
from edgefr.latency.profile import measure_network
from edgefr.search.budget import WINDOW, fit_to_budget
from edgefr.search.engine import SearchConfig, run_search
from edgefr.space import MFN_SPACE, count_flops, count_params, create_model, load_arch_file

MEASURE_ROUNDS = 8


@dataclass
class Measured:
    arch: object
    predicted_ms: dict[str, float]
    measured_ms: dict[str, float]
    rounds: list[dict]


def fit_and_measure(supernet, budgets, devices, log=print) -> Measured:
    """Fit the most probable architecture to the budget and measure it; refit from the measured architecture
    with its own measured/predicted ratio (prediction errors differ between architectures, so a correction is
    only valid near the architecture it was measured on), until a measurement lands in the window. Every
    measured candidate is kept; the result is the one closest to the budget from below."""
    alpha = {k: v.detach().clone() for k, v in supernet.alpha.items()}
    log_prob = supernet.frozen_log_prob()

    def preferred(stage: int, layer: int):
        return MFN_SPACE.stages[stage].candidates[int(alpha[f"layers{stage}"][layer].argmax())]

    corrections: dict[str, float] = {}
    rounds, candidates = [], []
    arch = supernet.derive("searched")
    for round_index in range(MEASURE_ROUNDS):
        arch, moves = fit_to_budget(MFN_SPACE, arch, budgets, log_prob, preferred, corrections)
        predicted = {b.device: b.predict(arch) for b in budgets}
        measured = {b.device: measure_network(devices[b.device], arch) for b in budgets}
        ratios = {b.device: measured[b.device] / b.budget_ms for b in budgets}
        rounds.append({"round": round_index + 1, "moves": moves, "predicted_ms": predicted, "measured_ms": measured,
                       "corrections": dict(corrections)})
        candidates.append((arch, predicted, measured, max(ratios.values())))
        log("round {}: {}".format(round_index + 1, ", ".join(
            f"{d}: predicted {predicted[d]:.2f} ms, measured {measured[d]:.2f} ms ({ratios[d]:.2f} x budget)"
            for d in predicted)))
        if WINDOW[0] <= max(ratios.values()) <= WINDOW[1]:
            break
        corrections = {d: measured[d] / predicted[d] for d in predicted}
    within = [c for c in candidates if c[3] <= WINDOW[1]]
    arch, predicted, measured, _ = max(within, key=lambda c: c[3]) if within else min(candidates, key=lambda c: c[3])
    return Measured(arch, predicted, measured, rounds)


def run_pipeline(config: SearchConfig, teacher, data, out: Path, *, train: bool = True, distill_epochs: int = 3,
                 resume: bool = False, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    arch_path, measured_path = out / "arch.json", out / "measured.json"
    supernet, state, budgets, _, devices = run_search(config, teacher, data, out, resume=resume, log=log)
    if resume and arch_path.is_file() and measured_path.is_file():
        arch = load_arch_file(arch_path)
        measured = json.loads(measured_path.read_text())
        log(f"resuming: {arch_path} already fitted and measured")
    else:
        result = fit_and_measure(supernet, budgets, devices, log)
        arch = result.arch
        arch.save(arch_path)
        measured = {"predicted_ms": result.predicted_ms, "measured_ms": result.measured_ms, "rounds": result.rounds}
        measured_path.write_text(json.dumps(measured, indent=1) + "\n")
    model = create_model(arch)
    summary = {
        "schema": "edgefr.search-report/1", "arch": arch.to_dict(), "arch_file": str(arch_path),
        # What the search learned, before fitting: deterministic given the seed (the fit depends on measurements).
        "most_probable_arch": supernet.derive("most-probable").to_dict(),
        "budgets": [{"device": b.device, "budget_ms": b.budget_ms,
                     "predicted_ms": measured["predicted_ms"][b.device],
                     "measured_ms": measured["measured_ms"][b.device],
                     "measured_over_budget": measured["measured_ms"][b.device] / b.budget_ms,
                     "within_window": WINDOW[0] <= measured["measured_ms"][b.device] / b.budget_ms <= WINDOW[1]}
                    for b in budgets],
        "params": count_params(model), "mflops": count_flops(model) / 1e6, "search": {
            "steps": state.step, "config": {k: v for k, v in config.__dict__.items()}, "trajectory": state.trajectory},
        "measurement_rounds": measured["rounds"],
    }
    if train:
        from edgefr.distill import distill

        student_dir = out / "distill"
        outcome = distill(arch, teacher, data, ",".join(config.methods), distill_epochs, student_dir,
                          resume=resume and (student_dir / "last.pt").is_file(), optimizer="adamw", lr=config.lr,
                          batch_size=config.batch_size, seed=config.seed, max_images=config.max_images)
        from edgefr.space import save_student

        save_student(out / "student.pt", outcome.student, metrics=outcome.best, arch_file=str(arch_path))
        summary["student"] = str(out / "student.pt")
        summary["training"] = {"epochs": distill_epochs, "history": outcome.history}
        summary["accuracy"] = evaluate_student(outcome.student)
    from edgefr.search.report import write_report

    write_report(out, summary)
    return summary


def evaluate_student(model) -> dict:
    """LFW 10-fold and CelebA-pairs accuracy where the shared faces exist."""
    from edgefr.data.pairs import read_lfw_pairs, sample_imagefolder_pairs
    from edgefr.distill.embedder import ModuleEmbedder
    from edgefr.paths import shared_dir
    from edgefr.verify import verify_pairs

    embedder = ModuleEmbedder(model, "student")
    results = {}
    lfw = shared_dir() / "faces" / "lfw"
    if (lfw / "pairs.txt").is_file():
        results["lfw"] = verify_pairs(embedder, read_lfw_pairs(lfw / "pairs.txt", lfw)).to_dict()
    celeba = shared_dir() / "faces" / "celeba"
    if celeba.is_dir():
        results["celeba_pairs"] = verify_pairs(embedder, sample_imagefolder_pairs(celeba, 3000, seed=0)).to_dict()
    if not results:
        raise EdgefrError(f"no evaluation faces under {shared_dir()}/faces (lfw, celeba); set EDGEFR_SHARED")
    return results
