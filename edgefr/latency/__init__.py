"""Latency: per-device block lookup tables, profiling, calibration and (differentiable) prediction."""

from __future__ import annotations

from pathlib import Path

from edgefr.latency.lut import LUT_SCHEMA, LatencyTable, check_table_matches, load_table, table_path
from edgefr.latency.predictor import ArchProbabilities, ExpectedLatency, LatencyPrediction, LatencyPredictor


def load_device_table(device, path: str | Path | None = None) -> LatencyTable:
    """The latency table of `device`, refusing one measured on another device, runtime version or CPU.

    Runtime version and CPU can be checked only where the device is this host; remote tables record both and
    the profile run that made them checked them on the board.
    """
    from edgefr.devices.agent import cpu_model, runtime_version

    table = load_table(path or table_path(device.table_name))
    local = device.transport == "local"
    check_table_matches(table, device, runtime_version(device.runtime) if local else None,
                        cpu_model() if local else None)
    return table


__all__ = ["LUT_SCHEMA", "ArchProbabilities", "ExpectedLatency", "LatencyPrediction", "LatencyPredictor",
           "LatencyTable", "check_table_matches", "load_device_table", "load_table", "table_path"]
