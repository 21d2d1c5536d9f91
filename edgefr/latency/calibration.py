"""Whole-net calibration of block sums: latency = sum over activations of scale[act] * (block sum of that act) + offset.

Summing standalone blocks misses what a whole graph does differently (no per-model call overhead between blocks,
reorders at block boundaries, cache state). A constant offset alone was measured to be wrong: the error is
proportional. The scale is per activation because ReLU and PReLU blocks are fused (and, in TFLite int8, delegated)
differently; it is fitted per table, i.e. per (runtime, dtype). Fitted by non-negative least squares on relative
error over a handful of whole nets measured during `edgefr profile`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from edgefr.space.blocks import ACTIVATIONS


def fit_calibration(nets: list[dict]) -> dict:
    """`nets`: [{"name", "raw_by_act": {act: ms}, "measured_ms"}] -> {"scale": {act: a}, "offset_ms": b, "fit": ...}."""
    measured = np.array([n["measured_ms"] for n in nets], dtype=float)
    columns = [a for a in ACTIVATIONS if any(n["raw_by_act"].get(a, 0.0) > 0 for n in nets)]
    design = np.array([[n["raw_by_act"].get(a, 0.0) for a in columns] + [1.0] for n in nets])
    coef, _ = nnls(design / measured[:, None], np.ones(len(nets)))
    scale = {a: float(c) for a, c in zip(columns, coef[:-1])}
    # An activation no calibration net used keeps the mean scale of those that were fitted.
    default = float(np.mean(list(scale.values()))) if scale else 1.0
    scale = {a: scale.get(a, default) for a in ACTIVATIONS}
    predicted = design @ coef
    errors = (predicted - measured) / measured
    return {"scale": scale, "offset_ms": float(coef[-1]),
            "fit": {"nets": len(nets), "mape": float(np.mean(np.abs(errors))),
                    "max_abs_error": float(np.max(np.abs(errors)))},
            "nets": [{**n, "predicted_ms": float(p)} for n, p in zip(nets, predicted)]}
