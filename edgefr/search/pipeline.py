"""The whole `edgefr search` job: search -> fit the budget -> measure on the device(s) -> distill -> evaluate ->
report. Each phase leaves a file in the run folder, and a rerun with `--resume` skips the phases already done."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from edgefr.errors import EdgefrError
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.latency.profile import CONFIRM_AFTER_S, measure_networks, speed_against_table
from edgefr.search.budget import WINDOW, fit_to_budget
from edgefr.search.engine import SearchConfig, run_search
from edgefr.space import arch_from_dict, count_flops, count_params, create_model, load_arch_file

MEASURE_ROUNDS = 6  # rounds that fit new candidates; a confirming round (below) does not count
# Each round fits one candidate per aim (corrected prediction / budget, +- AIM_HALF_WIDTH) and measures them together.
CANDIDATE_AIMS = (0.92, 0.95, 0.98)
AIM_HALF_WIDTH = 0.015
WINDOW_CENTRE = sum(WINDOW) / 2
EDGE_MARGIN = 0.02
# Starts sampled per finalist wanted: a sampled start whose fit misses the window, or repeats an earlier finalist,
# is dropped.
SAMPLES_PER_FINALIST = 4
FINALISTS_FILE = "finalists.json"
ARCH_FILE, MEASURED_FILE = "arch.json", "measured.json"  # the fitted architecture, and its measurement record
# A finalist whose held-out cosines trail the chosen one's by fewer paired standard errors (`cosine_margins`) is not
# told apart from it by the held-out images: the tie-break distills both again at another seed.
SEPARATING_STANDARD_ERRORS = 2.0


@dataclass
class Measured:
    arch: object
    predicted_ms: dict[str, float]
    measured_ms: dict[str, float]
    rounds: list[dict]

    def ratio(self, budgets) -> float:  # the binding device's measured latency / budget
        return max(self.measured_ms[b.device] / b.budget_ms for b in budgets)

    def record(self) -> dict:
        """measured.json (and a finalists.json entry, with the arch)."""
        return {"predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "rounds": self.rounds}


@dataclass
class _Candidate:
    arch: object
    moves: list[str]
    log_prob: float
    budgets: dict[str, float]
    predicted_ms: dict[str, float]
    calls: list[dict[str, float]] = field(default_factory=list)  # per agent call that measured it: device -> ms

    @property
    def measured_ms(self) -> dict[str, float]:
        return {d: min(call[d] for call in self.calls) for d in self.budgets}

    @property
    def ratio(self) -> float:  # the binding device's measured latency / budget
        return max(self.measured_ms[d] / budget for d, budget in self.budgets.items())

    @property
    def inside(self) -> bool:
        return WINDOW[0] <= self.ratio <= WINDOW[1]

    def record(self) -> dict:
        """This candidate as its latest call measured it; `again`: measured in an earlier call too."""
        call = self.calls[-1]
        return {"moves": self.moves, "log_prob": self.log_prob, "predicted_ms": self.predicted_ms,
                "measured_ms": dict(call), "measured_over_budget": max(call[d] / b for d, b in self.budgets.items()),
                "again": len(self.calls) > 1}


def _measure_together(candidates: list[_Candidate], budgets, devices, label: str) -> None:
    """One agent call per device for all `candidates`; appends each one's times to its `calls`."""
    times = {b.device: measure_networks(devices[b.device], {f"candidate-{i}": c.arch for i, c in enumerate(candidates)},
                                        label) for b in budgets}
    for i, c in enumerate(candidates):
        c.calls.append({device: ms[f"candidate-{i}"] for device, ms in times.items()})


def fit_and_measure(supernet, budgets, devices, log=print, start=None, states=None) -> Measured:
    """Fit the most probable architecture (or `start`) to the budget, measure, and refit until a measurement lands
    in the window and a second call confirms it.

    Whole-net prediction errors differ between architectures (by up to ~20% at small budgets on ORT: layout
    reorders and fusion at stage boundaries), and not monotonically, so a single candidate per round can oscillate
    around a 10%-wide window. Each round therefore fits a few candidates aimed across the window, starting from the
    best measured architecture so far and corrected by its own measured/predicted ratio (a correction is only valid
    near the architecture it was measured on), and measures them together in one agent call; the first round starts
    from `start`, corrected by the machine state (`states`, else read now by `machine_states`).

    Every call also measures again the earlier candidates at or above the window's lower edge (a value is the
    minimum over calls, so only those can still move into the window), and a round that leaves a candidate inside
    the window measured only once is followed by a confirming call (no new fits) at least CONFIRM_AFTER_S after it:
    a slow spell of the host mostly covers one call or a few seconds of them. The result is the most probable candidate
    inside the window (measured twice, away from its edges, where such exist); failing that, the one closest to the
    budget from below."""
    space = supernet.space
    alpha = {k: v.detach().clone() for k, v in supernet.alpha.items()}
    log_prob = supernet.frozen_log_prob()
    budget_ms = {b.device: b.budget_ms for b in budgets}

    def preferred(stage: int, layer: int):
        return space.stages[stage].candidates[int(alpha[f"layers{stage}"][layer].argmax())]

    measured: dict[str, _Candidate] = {}
    rounds, used_bases = [], set()
    base = start or supernet.derive("searched")
    corrections = dict(states or machine_states(budgets, devices, log))
    fit_rounds, last_call_ended = 0, 0.0
    while True:
        unconfirmed = [c for c in measured.values() if c.inside and len(c.calls) == 1]
        proposals: dict[str, _Candidate] = {}
        if not unconfirmed:
            if fit_rounds == MEASURE_ROUNDS:
                break
            fit_rounds += 1
            for aim in CANDIDATE_AIMS:
                arch, moves = fit_to_budget(space, base, budgets, log_prob, preferred, corrections,
                                            band=(aim - AIM_HALF_WIDTH, aim + AIM_HALF_WIDTH))
                key = arch.to_json()
                if key not in measured and key not in proposals:
                    proposals[key] = _Candidate(arch, moves, float(log_prob(arch)), budget_ms,
                                                {b.device: b.predict(arch) for b in budgets})
        else:  # they were measured in the last call: a round that leaves one is followed by this one
            time.sleep(max(0.0, CONFIRM_AFTER_S - (time.monotonic() - last_call_ended)))
        again = [c for c in measured.values() if c.ratio >= WINDOW[0]]
        if proposals or again:
            _measure_together([*proposals.values(), *again], budgets, devices, f"measure round {len(rounds) + 1}")
            last_call_ended = time.monotonic()
            measured.update(proposals)
            rounds.append({"round": len(rounds) + 1, "confirming": bool(unconfirmed), "corrections": dict(corrections),
                           "candidates": [c.record() for c in [*proposals.values(), *again]]})
            log(f"round {len(rounds)}{' (confirming)' if unconfirmed else ''}: " + "; ".join(", ".join(
                f"{d} predicted {c.predicted_ms[d]:.2f} ms measured {c.calls[-1][d]:.2f} ms" for d in budget_ms)
                + (f" ({c.ratio:.2f} x budget)" if len(c.calls) == 1 else
                   f" (again: {c.ratio:.2f} x budget, its minimum over {len(c.calls)} calls)")
                for c in [*proposals.values(), *again]))
        if any(c.inside and len(c.calls) > 1 for c in measured.values()):
            break
        if any(c.inside for c in measured.values()):
            continue  # confirm it before fitting anew
        unused = [key for key in measured if key not in used_bases]
        if not unused:
            break
        base_key = min(unused, key=lambda key: abs(measured[key].ratio - WINDOW_CENTRE))
        used_bases.add(base_key)
        base = measured[base_key].arch
        corrections = {d: measured[base_key].measured_ms[d] / measured[base_key].predicted_ms[d] for d in budget_ms}
    inside = [c for c in measured.values() if c.inside]
    inside = [c for c in inside if len(c.calls) > 1] or inside
    # A value can still drop with more calls: a candidate 2% inside the lower edge stays inside when re-measured.
    inside = [c for c in inside if WINDOW[0] + EDGE_MARGIN <= c.ratio <= WINDOW[1] - EDGE_MARGIN] or inside
    below = [c for c in measured.values() if c.ratio < WINDOW[0]]
    best = (max(inside, key=lambda c: c.log_prob) if inside else max(below, key=lambda c: c.ratio) if below
            else min(measured.values(), key=lambda c: c.ratio))
    return Measured(best.arch, best.predicted_ms, best.measured_ms, rounds)


def fit_finalists(supernet, budgets, devices, count: int, seed: int, log=print) -> list[Measured]:
    """Up to `count` distinct architectures measured inside the window, for full training to rank (the weight-shared
    score ranks trained accuracy poorly on this space). The first is `fit_and_measure`'s result; the others are fits
    of architectures sampled from the learned distributions (as Teacher-guided NAS samples sizes from them), so
    they differ where the search was least decided."""
    states = machine_states(budgets, devices, log)
    finalists = [fit_and_measure(supernet, budgets, devices, log, states=states)]
    seen = {_structure(finalists[0].arch)}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(SAMPLES_PER_FINALIST * (count - 1)):
        if len(finalists) == count:
            break
        start, _ = supernet.sample(generator)
        log(f"finalist {len(finalists) + 1}: fitting a sample of the learned distributions")
        result = fit_and_measure(supernet, budgets, devices, log, start=start, states=states)
        if WINDOW[0] <= result.ratio(budgets) <= WINDOW[1] and _structure(result.arch) not in seen:
            seen.add(_structure(result.arch))
            finalists.append(replace(result, arch=replace(result.arch, name=f"searched-{len(finalists) + 1}")))
    if len(finalists) < count:
        log(f"{len(finalists)} distinct finalists inside the window after {SAMPLES_PER_FINALIST * (count - 1)} "
            "samples; training those")
    return finalists


def _structure(arch) -> str:
    """`arch` without its name: finalists differ in structure."""
    return replace(arch, name="").to_json()


def machine_states(budgets, devices, log=print) -> dict[str, float]:
    """Per device, how fast its blocks run now against their table times (`speed_against_table`, seconds): a shared
    host drifts by up to ~20% between the profile and a search, and the first fit round aims with this instead of
    spending a round of measurements to learn it."""
    states = {b.device: speed_against_table(devices[b.device], b.predictor.table)["factor"] for b in budgets}
    log("machine state: " + ", ".join(f"{device} blocks run {factor:.2f}x their table times now"
                                      for device, factor in states.items()))
    return states


def run_pipeline(config: SearchConfig, teacher, data, out: Path, *, train: bool = True, distill_epochs: int = 2,
                 distill_minutes: float | None = None, finalists: int = 1, tie_break_seeds: int = 1,
                 resume: bool = False, log=print) -> dict:
    """The whole job. distill_minutes: a time box for the distillation's training steps on this machine (at most
    `distill_epochs` epochs); the searched student's training speed is not known before it is searched.
    finalists: how many fitted architectures to distill (`fit_finalists`); the one whose embeddings of the held-out
    images of the training identities agree best with the teacher's (`choose_finalist`) becomes the result.
    tie_break_seeds: while the held-out images do not separate some finalists from the chosen one (fewer than
    SEPARATING_STANDARD_ERRORS paired standard errors behind it), distill those again at the next seed, up to this
    many more seeds, and choose among them by their mean over seeds (the spread between training seeds is larger
    than the gaps such ties leave: README, *Finalists*). Without training they are only fitted (finalists.json;
    arch.json is the most probable one) for a caller that trains and chooses them itself
    (benchmarks/search_vs_baselines.py)."""
    kept = kept_candidates(out, finalists, log) if resume else None  # checked before the search resumes
    # The search makes `out` at its first checkpoint: a command failing on its input leaves no empty run folder.
    supernet, state, budgets, _, devices = run_search(config, teacher, data, out, resume=resume, log=log)
    candidates = kept or fitted_candidates(supernet, budgets, devices, finalists, config.seed, out, log)
    trained, chosen = [], 0  # per candidate, its students as (seed, DistillResult)
    if train:
        from edgefr.distill import SHORT_RUN_RECIPE, distill

        def distill_at(i: int, seed: int):
            arch = candidates[i][0]
            student_dir = out / "distill" if finalists == 1 else out / "finalists" / str(i + 1)
            if seed != config.seed:
                student_dir = student_dir / f"seed-{seed}"
            if finalists > 1:
                log(f"distilling finalist {i + 1} of {len(candidates)} at seed {seed} into {student_dir}")
                student_dir.mkdir(parents=True, exist_ok=True)
                arch.save(student_dir / ARCH_FILE)  # to distill it again alone (`edgefr distill --arch`)
            # The search ranked architectures with the KD objective (--kd); the searched students are distilled
            # with the recipe measured best for short runs.
            return distill(arch, teacher, data, epochs=distill_epochs, out=student_dir,
                           resume=resume and (student_dir / "last.pt").is_file(), seed=seed,
                           max_images=config.max_images,
                           time_budget_s=distill_minutes and 60 * distill_minutes, **SHORT_RUN_RECIPE)

        trained, chosen = distill_finalists(len(candidates), distill_at, config.seed, tie_break_seeds, log)
    arch, measured = candidates[chosen]
    arch_path = out / ARCH_FILE
    if finalists > 1:
        arch.save(arch_path)
        (out / MEASURED_FILE).write_text(json.dumps(measured, indent=1) + "\n")
    model = create_model(arch)
    # The device whose budget the student is closest to; with several devices the window applies to it, the
    # others only have to be under budget.
    binding = max(budgets, key=lambda b: measured["measured_ms"][b.device] / b.budget_ms).device
    summary = {
        "blocks": block_predictions(arch, devices),
        "schema": "edgefr.search-report/2", "arch": arch.to_dict(), "arch_file": str(arch_path),
        # What the search learned, before fitting: deterministic given the seed (the fit depends on measurements).
        "most_probable_arch": supernet.derive("most-probable").to_dict(),
        "budgets": [{"device": b.device, "budget_ms": b.budget_ms,
                     "predicted_ms": measured["predicted_ms"][b.device],
                     "measured_ms": measured["measured_ms"][b.device],
                     "measured_over_budget": measured["measured_ms"][b.device] / b.budget_ms,
                     "within_window": WINDOW[0] <= measured["measured_ms"][b.device] / b.budget_ms <= WINDOW[1],
                     "binding": b.device == binding}
                    for b in budgets],
        "params": count_params(model), "mflops": count_flops(model) / 1e6, "search": {
            "steps": state.step, "config": {k: v for k, v in config.__dict__.items()}, "trajectory": state.trajectory},
        "measurement_rounds": measured["rounds"],
        # How far the search's distributions had settled on what the result chose (the fit may move off them).
        "decisions": supernet.choice_probabilities(arch),
    }
    if finalists > 1 and train:
        margins = cosine_margins(seed_cosines(trained), chosen)
        summary["finalists"] = [finalist_record(*record, i == chosen)
                                for i, record in enumerate(zip(candidates, trained, margins))]
    from edgefr.search.report import decisions_line, finalists_line, undecided_line, write_report

    log(decisions_line(summary["decisions"]))
    if "finalists" in summary:
        log(finalists_line(summary["finalists"]))
        if undecided := undecided_line(summary["finalists"]):
            log(undecided)
    if train:
        from edgefr.space import save_student

        # The chosen architecture's student closest to the teacher on its held-out images, where it was distilled at
        # several seeds.
        seed, outcome = max(trained[chosen], key=lambda run: run[1].teacher_agreement)
        save_student(out / "student.pt", outcome.student, metrics=outcome.best, arch_file=str(arch_path))
        summary["student"] = str(out / "student.pt")
        summary["training"] = {"epochs": distill_epochs, "time_box_minutes": distill_minutes,
                               "recipe": SHORT_RUN_RECIPE, "history": outcome.history,
                               "seed": seed, "teacher_agreement": outcome.teacher_agreement}
        summary["accuracy"] = evaluate_student(outcome.student)
    write_report(out, summary)
    return summary


def distill_finalists(count: int, distill_at, seed: int, tie_break_seeds: int, log=print) -> tuple[list, int]:
    """Distill each of `count` finalists at `seed` (`distill_at(i, seed)` -> DistillResult), then, while the held-out
    images leave some `contenders` within SEPARATING_STANDARD_ERRORS of the chosen one, distill those again at the
    next seed, up to `tie_break_seeds` more. Returns (per finalist its students as (seed, DistillResult), the chosen
    index)."""
    trained = [[(seed, distill_at(i, seed))] for i in range(count)]
    chosen = choose_by_seeds(trained)
    for extra in range(1, tie_break_seeds + 1):
        margins = cosine_margins(seed_cosines(trained), chosen)
        # Only contenders: one left behind at an earlier seed is out, though on that seed alone it may come within
        # reach of a chosen one that has since changed.
        tied = [i for i in contenders(trained) if margins[i] < SEPARATING_STANDARD_ERRORS]
        if len(tied) < 2:
            break
        log(f"the held-out images do not separate finalists {', '.join(str(i + 1) for i in tied)} (within "
            f"{SEPARATING_STANDARD_ERRORS:g} paired standard errors): distilling them again at seed {seed + extra}")
        for i in tied:
            trained[i].append((seed + extra, distill_at(i, seed + extra)))
        chosen = choose_by_seeds(trained)
    return trained, chosen


def choose_finalist(agreements: list[float]) -> int:
    """Index of the distilled finalist whose held-out embeddings agree best with the teacher's
    (`DistillResult.teacher_agreement`: ranks trained students like LFW where validation accuracy does not); the
    most probable, the first, when nothing was measured (NaN: no held-out images)."""
    return max(range(len(agreements)), key=lambda i: -math.inf if math.isnan(agreements[i]) else agreements[i],
               default=0)


def contenders(trained: list[list[tuple]]) -> list[int]:
    """The finalists still in contention: those distilled at the most seeds (the last tie-break retrained them)."""
    most = max(len(runs) for runs in trained)
    return [i for i, runs in enumerate(trained) if len(runs) == most]


def choose_by_seeds(trained: list[list[tuple]]) -> int:
    """`choose_finalist` among the `contenders`, by their held-out agreement averaged over the seeds."""
    kept = contenders(trained)
    return choose_finalist([float(np.mean([result.teacher_agreement for _, result in runs])) if i in kept
                            else math.nan for i, runs in enumerate(trained)])


def seed_cosines(trained: list[list[tuple]]) -> list[list[np.ndarray]]:
    """Per finalist, the per-image held-out cosines of each of its students, in the order of their seeds."""
    return [[result.held_out_cosines for _, result in runs] for runs in trained]


def cosine_margins(cosines: list[list[np.ndarray]], chosen: int) -> list[float]:
    """Per finalist, by how many standard errors its held-out cosines to the teacher trail the chosen finalist's (0
    for the chosen one; NaN where not measured). `cosines[i]` holds finalist i's per-image cosines at each seed it
    was distilled at, the run's seed first: finalists distilled at one seed were measured on the same held-out
    images, and pairing them cancels what is easy or hard in each image (the paired standard error is about half
    of each mean's own). Over the seeds both were distilled at, the per-seed mean leads are averaged and their
    standard errors combined. It counts the images' sampling, not the spread between training seeds, which is
    larger (README, *Finalists*)."""
    reference = cosines[chosen]

    def margin(runs: list[np.ndarray]) -> float:
        leads, variances = [], []
        for ours, theirs in zip(reference, runs):  # the seeds both were distilled at
            if len(theirs) < 2 or len(theirs) != len(ours):
                return math.nan
            lead = ours.astype(np.float64) - theirs
            leads.append(lead.mean())
            variances.append(lead.var(ddof=1) / len(lead))
        if not leads:
            return math.nan
        mean_lead, error = float(np.mean(leads)), math.sqrt(sum(variances)) / len(leads)
        if not error:  # the same lead on every image
            return math.inf if mean_lead else 0.0
        return mean_lead / error

    return [0.0 if i == chosen else margin(runs) for i, runs in enumerate(cosines)]


def fitted_candidates(supernet, budgets, devices, count: int, seed: int, out: Path, log=print) -> list[tuple]:
    """(arch, measurement record) of each fitted architecture, written where `kept_candidates` reads them: one in
    arch.json + measured.json; several in finalists.json, and `run_pipeline` writes those two for the one chosen."""
    if count == 1:
        result = fit_and_measure(supernet, budgets, devices, log)
        result.arch.save(out / ARCH_FILE)
        (out / MEASURED_FILE).write_text(json.dumps(result.record(), indent=1) + "\n")
        return [(result.arch, result.record())]
    fitted = fit_finalists(supernet, budgets, devices, count, seed, log)
    candidates = [(r.arch, r.record()) for r in fitted]
    (out / FINALISTS_FILE).write_text(json.dumps({"schema": "edgefr.finalists/1", "requested": count, "finalists": [
        {"arch": arch.to_dict(), **record} for arch, record in candidates]}, indent=1) + "\n")
    return candidates


def kept_candidates(out: Path, count: int, log=print) -> list[tuple] | None:
    """What `fitted_candidates` wrote into `out` before (None if nothing): the fit depends on measurements, so a
    resumed run does not redo it. Finalists fitted for another --finalists are an error."""
    path = out / FINALISTS_FILE
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept["requested"] != count:
            raise EdgefrError(f"{path}: fitted for --finalists {kept['requested']}; resume with that")
        log(f"resuming: {path} already fitted and measured")
        return [(arch_from_dict(record.pop("arch"), str(path)), record) for record in kept["finalists"]]
    arch_path, measured_path = out / ARCH_FILE, out / MEASURED_FILE
    if count == 1 and arch_path.is_file() and measured_path.is_file():
        log(f"resuming: {arch_path} already fitted and measured")
        return [(load_arch_file(arch_path), json.loads(measured_path.read_text()))]
    return None


def finalist_record(candidate: tuple, runs: list[tuple], margin: float, chosen: bool) -> dict:
    """report.json's entry for one finalist: its fit, and per seed it was distilled at, how it trained and how close
    its held-out embeddings came to the teacher's (`teacher_agreement`: their mean over the seeds)."""
    arch, measured = candidate
    model = create_model(arch)
    return {"name": arch.name, "arch": arch.to_dict(), "arch_file": str(runs[0][1].out / ARCH_FILE),
            "widths": list(arch.widths()), "depths": list(arch.depths()),
            "measured_ms": measured["measured_ms"], "params": count_params(model), "mflops": count_flops(model) / 1e6,
            "teacher_agreement": float(np.mean([result.teacher_agreement for _, result in runs])),
            "standard_errors_behind_chosen": margin, "chosen": chosen,
            "seeds": [{"seed": seed, "teacher_agreement": result.teacher_agreement,
                       "val_accuracy": result.best.get("val_accuracy"), "best_epoch": result.best.get("epoch"),
                       "student": str(result.best_path)} for seed, result in runs]}


def block_predictions(arch, devices) -> list[dict]:
    """Per block of `arch` (stem, each stage's layers, head): its key and calibrated predicted ms per device."""
    predictors = {name: LatencyPredictor(load_device_table(device)) for name, device in devices.items()}
    positions = [("stem", None, None)] + [(str(s), stage.width, j) for s, stage in enumerate(arch.stages)
                                          for j in range(len(stage.layers))] + [("head", arch.head_width, None)]
    return [{"stage": stage, "width": width, "layer": layer, "block": spec.key,
             "predicted_ms": {name: p.block_ms(spec) for name, p in predictors.items()}}
            for (stage, width, layer), spec in zip(positions, arch.block_specs())]


def evaluate_student(model) -> dict:
    """LFW 10-fold and CelebA-pairs accuracy where the shared faces exist."""
    from edgefr.distill.embedder import ModuleEmbedder
    from edgefr.paths import shared_dir
    from edgefr.verify.shared_sets import evaluate_shared

    results = evaluate_shared(ModuleEmbedder(model, "student"))
    if not results:
        raise EdgefrError(f"no evaluation faces under {shared_dir()}/faces (lfw, celeba); set EDGEFR_SHARED")
    return {name: result.to_dict() for name, result in results.items()}
