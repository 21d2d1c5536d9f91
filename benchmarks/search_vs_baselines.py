"""Searched students against MobileFaceNet scaled to the same measured latency, trained alike.

  python benchmarks/search_vs_baselines.py --device host-ort --device host-tflite-int8 --budget 2 --budget 4 --budget 8

For every device and budget: `edgefr search` (search + fit + measure + distill + evaluate), then the
width/depth-scaled MobileFaceNet whose measured latency is closest to the searched student's, distilled from the
same teacher on the same data with the same recipe (`SHORT_RUN_RECIPE`) and epochs, and evaluated the same way.
Prints one table:
budget, measured ms, params, MFLOPs, LFW and CelebA-pairs accuracy, wall time.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import click

from edgefr.devices import resolve_device
from edgefr.distill import SHORT_RUN_RECIPE, distill
from edgefr.distill.cli import default_data
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.latency.profile import measure_network
from edgefr.search import SearchConfig, run_pipeline
from edgefr.search.pipeline import evaluate_student
from edgefr.space import count_flops, count_params, create_model, scaled_mobilefacenet

WIDTHS = (0.5, 0.75, 1.0, 1.25)
DEPTHS = (0.5, 0.75, 1.0)


def matched_baseline(device, target_ms: float):
    """The scaled MobileFaceNet (PReLU and ReLU variants) predicted closest to `target_ms` on `device`."""
    predictor = LatencyPredictor(load_device_table(device))
    grid = [scaled_mobilefacenet(w, d, act) for w, d, act in itertools.product(WIDTHS, DEPTHS, ("prelu", "relu"))]
    return min(grid, key=lambda arch: abs(predictor.predict(arch).total_ms - target_ms))


def row(label: str, arch, measured_ms: float, accuracy: dict, seconds: float) -> dict:
    model = create_model(arch)
    return {"model": label, "measured_ms": measured_ms, "params_m": count_params(model) / 1e6,
            "mflops": count_flops(model) / 1e6, "lfw": 100 * accuracy["lfw"]["accuracy"],
            "celeba": 100 * accuracy["celeba_pairs"]["accuracy"], "minutes": seconds / 60}


@click.command()
@click.option("--device", "devices", multiple=True, default=["host-ort", "host-tflite-int8"])
@click.option("--budget", "budgets", type=float, multiple=True, default=[2.0, 4.0, 8.0])
@click.option("--teacher", default="sface")
@click.option("--data", help="Training faces [$EDGEFR_DATA or ../shared/faces/celeba].")
@click.option("--kd", default="proxyless,mimic", help="KD objective guiding the search.")
@click.option("--steps", default=300, help="Search steps.")
@click.option("--epochs", default=2, help="Distillation epochs, the same for searched and baseline students.")
@click.option("--distill-minutes", default=8.0, help="The distillation time box of `edgefr search` (0: none), both.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/search-vs-baselines"))
def main(devices, budgets, teacher, data, kd, steps, epochs, distill_minutes, out) -> None:
    data = data or default_data()
    time_box = distill_minutes * 60 or None
    rows = []
    for device_name, budget in itertools.product(devices, budgets):
        device = resolve_device(device_name)
        run = out / f"{device_name}-{budget:g}ms"
        started = time.perf_counter()
        config = SearchConfig(devices=(device_name,), budgets_ms=(budget,), methods=tuple(kd.split(",")), steps=steps,
                              checkpoint_every=max(1, min(20, steps // 4)))
        summary = run_pipeline(config, teacher, data, run, train=True, distill_epochs=epochs,
                               distill_minutes=distill_minutes or None, resume=(run / "search_state.pt").is_file())
        searched_ms = summary["budgets"][0]["measured_ms"]
        rows.append({"device": device_name, "budget_ms": budget, **row(
            "searched", summary["arch"], searched_ms, summary["accuracy"], time.perf_counter() - started)})
        started = time.perf_counter()
        baseline = matched_baseline(device, searched_ms)
        trained = distill(baseline, teacher, data, epochs=epochs, out=run / "baseline",
                          resume=(run / "baseline" / "last.pt").is_file(), time_budget_s=time_box,
                          **SHORT_RUN_RECIPE)
        rows.append({"device": device_name, "budget_ms": budget, **row(
            baseline.name, baseline, measure_network(device, baseline), evaluate_student(trained.student),
            time.perf_counter() - started)})
    click.echo(f"\n{'device':18s} {'budget':>6s} {'model':34s} {'ms':>6s} {'params':>7s} {'MFLOPs':>7s} "
               f"{'LFW%':>6s} {'CelebA%':>7s} {'min':>6s}")
    for r in rows:
        click.echo(f"{r['device']:18s} {r['budget_ms']:6g} {r['model']:34s} {r['measured_ms']:6.2f} "
                   f"{r['params_m']:6.3f}M {r['mflops']:7.1f} {r['lfw']:6.2f} {r['celeba']:7.2f} {r['minutes']:6.1f}")


if __name__ == "__main__":
    main()
