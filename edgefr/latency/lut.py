"""Latency lookup tables: one versioned JSON file per device under `latency_tables/`.

```json
{"schema": "edgefr.lut/1", "space": "mfn112-v1", "created": "...",
 "device": {"name", "transport", "runtime", "runtime_version", "dtype", "threads", "metric", "cpu", ...},
 "protocol": {...}, "converter": {"torch": ..., "litert_torch": ...},
 "entries": {"ir:r28:c64-64:s1:e2:k3:prelu:res": {"ms": 0.41, "measured_ms": 0.47, "context": "context:r28:c64",
                                                 "spread": 0.01, "passes": [...], "block": {...}}},
 "contexts": {"context:r28:c64": {"ms": 0.06, ...}},
 "calls": [{"ended": "...", "models": ["ir:r28:...", "context:r28:c64", ...], "reference_ms": {"ir:r14:...": 0.21}}],
 "calibration": {"scale": {"relu": 1.02, "prelu": 0.97}, "offset_ms": 0.05, "nets": [...], "fit": {...}}}
```
Entries are per block, not per operator: per-operator sums were measured 33-40% off (fusion, layout reorders, call
overhead). Each block but the stem is measured behind a cheap context block and the context's own time is
subtracted (`ms` = `measured_ms` - contexts[context].ms), which removes the model-boundary costs a whole graph
does not pay per block (see `edgefr.latency.models.context_module`). `calls` records the profile's measurement
calls: which entries each measured, and the times of the same few reference blocks in it, which tell a call made
in a slow spell of the machine (see `edgefr.latency.profile`). Tables made before it have none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgefr.errors import EdgefrError, read_json_file
from edgefr.paths import latency_tables_dir
from edgefr.space.blocks import BlockSpec

LUT_SCHEMA = "edgefr.lut/1"


@dataclass
class LatencyTable:
    device: dict
    space: str
    protocol: dict
    entries: dict[str, dict] = field(default_factory=dict)
    calibration: dict | None = None
    contexts: dict[str, dict] = field(default_factory=dict)
    converter: dict = field(default_factory=dict)
    calls: list[dict] = field(default_factory=list)
    created: str = ""
    path: Path | None = None

    def ms(self, spec: BlockSpec) -> float:
        entry = self.entries.get(spec.key)
        if entry is None:
            raise EdgefrError(f"{self.where}: no entry for block {spec.key}; profile it with "
                              f"`edgefr profile --device {self.device.get('name')}`")
        return float(entry["ms"])

    def missing(self, specs: list[BlockSpec]) -> list[str]:
        return sorted({s.key for s in specs if s.key not in self.entries})

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"latency table of {self.device.get('name')}"

    def to_dict(self) -> dict:
        return {"schema": LUT_SCHEMA, "space": self.space, "created": self.created, "device": self.device,
                "protocol": self.protocol, "converter": self.converter, "calibration": self.calibration,
                "contexts": dict(sorted(self.contexts.items())), "calls": self.calls,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | Path) -> Path:
        """Atomic write: a crash never leaves a truncated table where a good one was."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        self.path = path
        return path


def table_path(device_name: str) -> Path:
    return latency_tables_dir() / f"{device_name}.json"


def load_table(path: str | Path) -> LatencyTable:
    path = Path(path)
    data = read_json_file(path, "latency table", f"run `edgefr profile --device {path.stem}`")
    if not isinstance(data, dict) or data.get("schema") != LUT_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise EdgefrError(f"{path}: schema {found!r} is not a latency table; expected {LUT_SCHEMA!r}")
    try:
        entries = data["entries"]
        for key, entry in entries.items():
            if not isinstance(entry.get("ms"), (int, float)) or entry["ms"] <= 0:
                raise EdgefrError(f"{path}: entry {key} has no positive 'ms' value")
        return LatencyTable(device=dict(data["device"]), space=data["space"], protocol=data.get("protocol", {}),
                            entries=entries, calibration=data.get("calibration"), contexts=data.get("contexts", {}),
                            converter=data.get("converter", {}), calls=list(data.get("calls", [])),
                            created=data.get("created", ""), path=path)
    except (KeyError, AttributeError, TypeError) as exc:
        raise EdgefrError(f"{path}: malformed latency table (missing or wrong field {exc}); "
                          "re-run edgefr profile") from None


def check_table_matches(table: LatencyTable, device, runtime_version: str | None = None,
                        cpu: str | None = None) -> None:
    """A table measured elsewhere is an error, never a silent wrong prediction."""
    recorded = table.device
    for key in ("name", "runtime", "dtype", "threads", "metric", "transport"):
        if recorded.get(key) != getattr(device, key):
            raise EdgefrError(f"{table.where} was measured with {key}={recorded.get(key)!r}, but device "
                              f"{device.name!r} has {key}={getattr(device, key)!r}; profile this device")
    if runtime_version and recorded.get("runtime_version") != runtime_version:
        raise EdgefrError(f"{table.where} was measured with {recorded.get('runtime_version')}, this host runs "
                          f"{runtime_version}; re-run `edgefr profile --device {device.name}`")
    if cpu and recorded.get("cpu") != cpu:
        raise EdgefrError(f"{table.where} was measured on CPU {recorded.get('cpu')!r}, this host is {cpu!r}; "
                          f"re-run `edgefr profile --device {device.name}`")
