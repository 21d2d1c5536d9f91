"""Which latency term meets budgets better: the Lagrangian (ProxylessNAS form, lambda by dual ascent) or FBNet's
multiplicative loss * 0.2 * log(E[lat] ms)^0.6.

  python benchmarks/latency_penalties.py                                  # host-ort 2, 4 and 7 ms, both terms
  python benchmarks/latency_penalties.py --run host-tflite-int8:2 --penalty fbnet

Per DEVICE:BUDGET and penalty: `edgefr search --no-train --latency-penalty P` (search, fit, measure; kept in
OUT/<penalty>-<device>-<ms>ms with its report.json and search_minutes.json, reused by a rerun with the same
options). Prints, per run, what the search alone reached and what the fit then had to do:
- E[lat] / budget at the end of the search, and its range over the last quarter of the steps (how settled it is);
- the most probable architecture's calibrated prediction / budget (the search's own answer, before the fit);
- how many decisions (a width, a depth step, a layer's block, an activation) the fitted result differs from it in:
  the fit moves along the learned distributions, so every decision it changes overrides what the search learned;
- measurement rounds (those that fit new candidates), and the measured latency / budget of the result ([0.90,
  1.00] is the window).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from search_vs_baselines import check_searched_alike, parse_run

from edgefr.cli import EdgefrCommand
from edgefr.devices import resolve_device
from edgefr.distill.cli import default_data
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.search import SearchConfig, run_pipeline
from edgefr.search.cli import ensure_table
from edgefr.search.engine import LATENCY_PENALTIES
from edgefr.space.arch import arch_from_dict


def decisions_apart(a: dict, b: dict) -> int:
    """Decisions two architecture dicts differ in: stem and head activation, per stage its width, each layer of
    depth one has and the other lacks, and each layer both have with another block."""
    count = (a["stem"]["act"] != b["stem"]["act"]) + (a["head"]["act"] != b["head"]["act"])
    for stage_a, stage_b in zip(a["stages"], b["stages"]):
        layers_a, layers_b = stage_a["layers"], stage_b["layers"]
        count += (stage_a["width"] != stage_b["width"]) + abs(len(layers_a) - len(layers_b))
        count += sum(x != y for x, y in zip(layers_a, layers_b))
    return count


def run_one(penalty: str, device_name: str, budget: float, steps: int, seed: int, teacher, data, out: Path) -> dict:
    config = SearchConfig(devices=(device_name,), budgets_ms=(budget,), steps=steps, seed=seed,
                          latency_penalty=penalty, checkpoint_every=max(1, min(20, steps // 4)))
    run = out / f"{penalty}-{device_name}-{budget:g}ms"
    minutes_path = run / "search_minutes.json"
    if minutes_path.is_file():  # written last: the run's report.json is complete
        check_searched_alike(run, config)
        return {**json.loads((run / "report.json").read_text()), **json.loads(minutes_path.read_text())}
    ensure_table(device_name, click.echo)
    started = time.perf_counter()
    summary = run_pipeline(config, teacher, data, run, train=False, resume=(run / "search_state.pt").is_file())
    timing = {"search_minutes": (time.perf_counter() - started) / 60}
    minutes_path.write_text(json.dumps(timing) + "\n")
    return {**summary, **timing}


def row(penalty: str, device_name: str, budget: float, summary: dict) -> dict:
    trajectory = summary["search"]["trajectory"]
    late = [point["expected_ms"][device_name] / budget for point in trajectory[-max(1, len(trajectory) // 4):]]
    predictor = LatencyPredictor(load_device_table(resolve_device(device_name)))
    most_probable = summary["most_probable_arch"]
    (result,) = summary["budgets"]
    return {"penalty": penalty, "device": device_name, "budget_ms": budget,
            "expected_end": late[-1], "expected_late_range": [min(late), max(late)],
            "most_probable_predicted": predictor.predict(arch_from_dict(most_probable)).total_ms / budget,
            "decisions_fitted": decisions_apart(most_probable, summary["arch"]),
            # Rounds that fitted new candidates; a confirming call only measures again.
            "rounds": sum(not r.get("confirming") for r in summary["measurement_rounds"]),
            "measured": result["measured_over_budget"],
            "within_window": result["within_window"], "search_minutes": summary["search_minutes"]}


def format_table(rows: list[dict]) -> str:
    lines = ["| penalty | device | budget ms | E[lat] at the end (last quarter) | most probable, predicted | "
             "decisions the fit changed | rounds | measured | search min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["expected_late_range"]
        lines.append(f"| {r['penalty']} | {r['device']} | {r['budget_ms']:g} | {r['expected_end']:.2f} "
                     f"({low:.2f}-{high:.2f}) | {r['most_probable_predicted']:.2f} | {r['decisions_fitted']} | "
                     f"{r['rounds']} | {r['measured']:.2f}{'' if r['within_window'] else ' (outside)'} | "
                     f"{r['search_minutes']:.1f} |")
    return "\n".join(lines) + "\n(latencies as x budget)\n"


@click.command(cls=EdgefrCommand)
@click.option("--run", "runs", multiple=True, default=("host-ort:2", "host-ort:4", "host-ort:7"), show_default=True,
              help="DEVICE:BUDGET_MS, repeatable.")
@click.option("--penalty", "penalties", multiple=True, default=LATENCY_PENALTIES, show_default=True,
              type=click.Choice(LATENCY_PENALTIES))
@click.option("--steps", default=300, show_default=True, help="Search steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--teacher", default="sface")
@click.option("--data", help="Training faces [$EDGEFR_DATA or ../shared/faces/celeba].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/latency-penalties"))
def main(runs, penalties, steps, seed, teacher, data, out) -> None:
    data = data or default_data()
    rows = [row(penalty, device_name, budget,
                run_one(penalty, device_name, budget, steps, seed, teacher, data, out))
            for device_name, budget in map(parse_run, runs) for penalty in penalties]
    table = format_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    click.echo("\n" + table)


if __name__ == "__main__":
    main()
