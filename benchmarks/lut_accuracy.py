"""How well the latency table predicts whole networks: sample N architectures of the space (seeded, not the
calibration nets), measure each whole on the device, compare with the calibrated LUT prediction.

    python benchmarks/lut_accuracy.py --device host-ort --n 40
    python benchmarks/lut_accuracy.py --device host-ort --device host-tflite --device host-tflite-int8

Prints per device: MAPE, RMSE, % within +-5% and +-10%, Kendall tau, and the same for raw block sums.
"""

from __future__ import annotations

import random

import click
import numpy as np
from scipy.stats import kendalltau

from edgefr.devices import resolve_device
from edgefr.latency import LatencyPredictor, load_device_table
from edgefr.latency.models import ModelFileCache
from edgefr.latency.profile import CALIBRATION_SEED, measure_files
from edgefr.space import MFN_SPACE


def accuracy_figures(predicted: np.ndarray, measured: np.ndarray) -> dict:
    error = (predicted - measured) / measured
    return {"mape_pct": 100 * float(np.mean(np.abs(error))),
            "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
            "within_5_pct": 100 * float(np.mean(np.abs(error) <= 0.05)),
            "within_10_pct": 100 * float(np.mean(np.abs(error) <= 0.10)),
            "kendall_tau": float(kendalltau(predicted, measured).statistic), "bias_pct": 100 * float(np.mean(error))}


@click.command()
@click.option("--device", "devices", multiple=True, default=["host-ort", "host-tflite", "host-tflite-int8"])
@click.option("--n", default=40, show_default=True, help="Random architectures per device.")
@click.option("--seed", default=2024, show_default=True)
def main(devices, n, seed) -> None:
    assert seed != CALIBRATION_SEED, "benchmark nets must not be the calibration nets"
    rng = random.Random(seed)
    archs = [MFN_SPACE.sample(rng, name=f"bench-{i}") for i in range(n)]
    for name in devices:
        device = resolve_device(name)
        predictor = LatencyPredictor(load_device_table(device))
        cache = ModelFileCache(device.runtime, device.dtype)
        files = {a.name: cache.network(a) for a in archs}
        results = measure_files(device, files, seed, f"measure {name}")["results"]
        measured = np.array([results[a.name]["ms"] for a in archs])
        predictions = [predictor.predict(a) for a in archs]
        calibrated = accuracy_figures(np.array([p.total_ms for p in predictions]), measured)
        raw = accuracy_figures(np.array([p.raw_sum_ms for p in predictions]), measured)
        click.echo(f"\n{name}: {n} random nets, measured {measured.min():.2f}..{measured.max():.2f} ms "
                   f"(median {np.median(measured):.2f})")
        click.echo(f"  {'':12s} {'MAPE%':>7s} {'RMSE ms':>8s} {'<=5%':>6s} {'<=10%':>6s} {'tau':>6s} {'bias%':>6s}")
        for label, f in (("calibrated", calibrated), ("raw sum", raw)):
            click.echo(f"  {label:12s} {f['mape_pct']:7.2f} {f['rmse_ms']:8.3f} {f['within_5_pct']:6.1f} "
                       f"{f['within_10_pct']:6.1f} {f['kendall_tau']:6.3f} {f['bias_pct']:+6.2f}")


if __name__ == "__main__":
    main()
