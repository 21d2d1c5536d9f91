"""How well the latency table predicts whole networks: sample N architectures of the space (seeded, not the
calibration nets), measure each whole on the device, compare with the calibrated LUT prediction.

    python benchmarks/lut_accuracy.py --device host-ort --n 40
    python benchmarks/lut_accuracy.py --device host-ort --device host-tflite --device host-tflite-int8
    python benchmarks/lut_accuracy.py --device host-ort --n 30 --repeats 3

Prints per device: MAPE, RMSE, % within +-5% and +-10%, Kendall tau, and the same for raw block sums. With
--repeats K the nets are measured K times (each a full protocol run): the figures are given for every run and
against the median of the runs, with the test-retest MAPE between runs, the floor no prediction can be seen
to beat on this machine.

Every run also measures the table's anchor blocks (as `edgefr profile` does when it calibrates) and prints the
machine state they show: the speed of this machine now against when the table's blocks were measured. A shared
host drifts by several percent within minutes, which shows up as bias; "x state" rows scale the predictions by
the state read in the same run, which separates the predictor's own error from the machine's drift.
"""

from __future__ import annotations

import itertools
import random

import click
import numpy as np
from scipy.stats import kendalltau

from edgefr.cli import EdgefrCommand
from edgefr.devices import resolve_device
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.latency.models import ModelFileCache
from edgefr.latency.profile import (ANCHOR_BLOCKS, ANCHOR_PREFIX, CALIBRATION_SEED, anchor_blocks, machine_state,
                                   measure_files)
from edgefr.space import MFN_SPACE


def accuracy_figures(predicted: np.ndarray, measured: np.ndarray) -> dict:
    error = (predicted - measured) / measured
    return {"mape_pct": 100 * float(np.mean(np.abs(error))),
            "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
            "within_5_pct": 100 * float(np.mean(np.abs(error) <= 0.05)),
            "within_10_pct": 100 * float(np.mean(np.abs(error) <= 0.10)),
            "kendall_tau": float(kendalltau(predicted, measured).statistic), "bias_pct": 100 * float(np.mean(error))}


def print_figures(label: str, figures: dict) -> None:
    click.echo(f"  {label:28s} {figures['mape_pct']:7.2f} {figures['rmse_ms']:8.3f} {figures['within_5_pct']:6.1f} "
               f"{figures['within_10_pct']:6.1f} {figures['kendall_tau']:6.3f} {figures['bias_pct']:+6.2f}")


def test_retest_mape(runs: list[np.ndarray]) -> float:
    """Mean over pairs of runs of the MAPE of one run against the other: the measurement's own noise."""
    pairs = list(itertools.combinations(runs, 2))
    return 100 * float(np.mean([np.mean(np.abs(a - b) / b) for a, b in pairs]))


@click.command(cls=EdgefrCommand)
@click.option("--device", "devices", multiple=True, default=["host-ort", "host-tflite", "host-tflite-int8"])
@click.option("--n", default=40, show_default=True, help="Random architectures per device.")
@click.option("--seed", default=2024, show_default=True)
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Measure the nets this many times (separate runs): per-run figures and test-retest noise.")
def main(devices, n, seed, repeats) -> None:
    assert seed != CALIBRATION_SEED, "benchmark nets must not be the calibration nets"
    rng = random.Random(seed)
    archs = [MFN_SPACE.sample(rng, name=f"bench-{i}") for i in range(n)]
    for name in devices:
        device = resolve_device(name)
        predictor = LatencyPredictor(load_device_table(device))
        cache = ModelFileCache(device.runtime, device.dtype)
        files = {a.name: cache.network(a) for a in archs}
        anchors = anchor_blocks(predictor.table, archs, ANCHOR_BLOCKS, seed)
        files.update({ANCHOR_PREFIX + spec.key: cache.block(spec) for spec in anchors})
        runs, states = [], []
        for run in range(repeats):
            results = measure_files(device, files, seed + run, f"measure {name} ({run + 1}/{repeats})")["results"]
            runs.append(np.array([results[a.name]["ms"] for a in archs]))
            states.append(machine_state(predictor.table, {s.key: results[ANCHOR_PREFIX + s.key]["ms"]
                                                          for s in anchors})["factor"])
        measured = np.median(runs, axis=0)
        predictions = [predictor.predict(a) for a in archs]
        calibrated = np.array([p.total_ms for p in predictions])
        raw = np.array([p.raw_sum_ms for p in predictions])
        click.echo(f"\n{name}: {n} random nets, measured {measured.min():.2f}..{measured.max():.2f} ms "
                   f"(median {np.median(measured):.2f}); machine state (anchor blocks now / table): "
                   + ", ".join(f"{state:.3f}" for state in states))
        click.echo(f"  {'':28s} {'MAPE%':>7s} {'RMSE ms':>8s} {'<=5%':>6s} {'<=10%':>6s} {'tau':>6s} {'bias%':>6s}")
        against = "" if repeats == 1 else f" vs median of {repeats}"
        if repeats > 1:
            for run, values in enumerate(runs, 1):
                print_figures(f"calibrated, run {run}", accuracy_figures(calibrated, values))
        print_figures("calibrated" + against, accuracy_figures(calibrated, measured))
        print_figures("raw sum" + against, accuracy_figures(raw, measured))
        corrected = [accuracy_figures(calibrated * state, values) for state, values in zip(states, runs)]
        for run, figures in enumerate(corrected, 1):
            print_figures(f"calibrated x state{'' if repeats == 1 else f', run {run}'}", figures)
        if repeats > 1:
            click.echo(f"  test-retest MAPE between runs: {test_retest_mape(runs):.2f}%")


if __name__ == "__main__":
    main()
