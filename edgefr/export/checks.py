"""The checks every export runs against its recipe's tolerances: embedding agreement with the PyTorch fp32 model,
LFW verification drop, and measured latency against the device's latency-table prediction."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgefr.data.pairs import PairSet
from edgefr.errors import EdgefrError
from edgefr.export.recipes import Tolerances
from edgefr.latency.profile import CONFIRM_AFTER_S
from edgefr.teachers.base import l2_normalize
from edgefr.verify import VerificationResult, paired_accuracy_drop


@dataclass
class Check:
    """One measured value against its tolerance (`limit` None: measured and reported, not checked). `allowance`:
    how far past the limit a value may lie before it fails, for a value whose sampling error is known (it fails
    only where the data show it past the limit)."""

    name: str
    value: float | None
    limit: float | None = None
    bound: str = "min"  # "min": value must be >= limit; "max": value must be <= limit
    unit: str = ""
    note: str = ""
    allowance: float = 0.0

    @property
    def passed(self) -> bool | None:
        if self.limit is None or self.value is None:
            return None
        if self.bound == "min":
            return self.value + self.allowance >= self.limit
        return self.value - self.allowance <= self.limit

    def failure(self) -> str:
        sign = "<" if self.bound == "min" else ">"
        allowed = f" + {self.allowance:.4g}{self.unit} sampling error" if self.allowance else ""
        return (f"{self.name} {self.value:.4g}{self.unit} {sign} {self.limit:g}{self.unit}{allowed} "
                f"(by {abs(self.value - self.limit) - self.allowance:.4g}{self.unit})")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def embedding_agreement(reference: np.ndarray, exported: np.ndarray, tolerances: Tolerances) -> list[Check]:
    """Cosine similarity per face between the PyTorch fp32 embedding and the exported model's."""
    cosine = np.sum(l2_normalize(reference) * l2_normalize(exported), axis=1)
    return [Check("mean_cosine", float(cosine.mean()), tolerances.min_mean_cosine, "min",
                  note=f"{len(cosine)} real aligned faces"),
            Check("min_cosine", float(cosine.min()), tolerances.min_min_cosine, "min")]


def lfw_drop(reference: VerificationResult, exported: VerificationResult, pairs: PairSet,
             tolerances: Tolerances) -> Check:
    """The LFW accuracy the export loses, decided at the PyTorch model's 10-fold thresholds (`paired_accuracy_drop`).
    It fails only when it exceeds the tolerance by more than two standard errors: on a weak model many pairs lie near
    the threshold and 6000 pairs cannot resolve a 0.3 pp drop (a 66%-LFW student's float-head int8 exports moved
    -0.6..+0.6 pp with the calibration faces alone, at cosines of 0.997-0.999); on a strong one few pairs are
    discordant and the allowance vanishes."""
    drop, error = paired_accuracy_drop(reference.similarities, exported.similarities, pairs.same, pairs.fold)
    return Check("lfw_drop_pp", 100 * drop, tolerances.max_lfw_drop_pp, "max", unit=" pp", allowance=2 * 100 * error,
                 note=f"{len(pairs)} pairs at PyTorch's 10-fold thresholds, standard error {100 * error:.2f} pp; "
                      f"10-fold accuracy PyTorch {100 * reference.accuracy:.2f}%, exported "
                      f"{100 * exported.accuracy:.2f}% (its own thresholds)")


def predicted_latency(device, arch, profiled_dtype: str | None) -> tuple[float | None, str]:
    """(prediction in ms, how it was obtained or why there is none). Only the graph the table measured (the
    profile flow of the device's dtype) has a prediction; a missing table or block is "no prediction"."""
    from edgefr.latency import LatencyPredictor, load_device_table

    if profiled_dtype is None:
        return None, "no prediction: this quantization is export-only, no latency table measures its graph"
    if profiled_dtype != device.dtype:
        return None, f"no prediction: device {device.name} has {device.dtype} tables, this export is {profiled_dtype}"
    try:
        prediction = LatencyPredictor(load_device_table(device)).predict(arch)
    except EdgefrError as exc:
        return None, f"no prediction: {exc}"
    return prediction.total_ms, f"latency table of {device.name}" + ("" if prediction.calibrated else " (uncalibrated)")


def measured_latency(device, path: Path, label: str) -> float:
    from edgefr.devices.transports import open_transport

    return float(open_transport(device).measure({label: path})["results"][label]["ms"])


def latency_calls(device, path: Path, label: str, predicted_ms: float | None, tolerances: Tolerances) -> list[float]:
    """The artifact's times on `device`, one per measurement call: a second call CONFIRM_AFTER_S after the first
    where the first fails `latency_check` on the slow side (a slow spell of a shared host slows a whole call); the
    check takes their minimum."""
    calls = [measured_latency(device, path, label)]
    if (predicted_ms is not None and calls[0] > predicted_ms
            and latency_check(calls[0], predicted_ms, "", tolerances).passed is False):
        time.sleep(CONFIRM_AFTER_S)
        calls.append(measured_latency(device, path, label))
    return calls


def latency_check(measured_ms: float, predicted_ms: float | None, note: str, tolerances: Tolerances) -> Check:
    if predicted_ms is None:
        return Check("latency_error_pct", None, None, "max", unit="%", note=note)
    error = 100 * abs(measured_ms - predicted_ms) / measured_ms
    return Check("latency_error_pct", error, tolerances.max_latency_error_pct, "max", unit="%",
                 note=f"measured {measured_ms:.3f} ms, predicted {predicted_ms:.3f} ms ({note})")
