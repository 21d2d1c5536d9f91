"""Device descriptions: `devices/*.toml` files, or ad-hoc `ssh://user@host[:port]` / `adb:SERIAL` targets.

A device fixes everything that changes a latency number: where the model runs (transport), on what (runtime,
dtype, threads) and how time is read (metric, protocol).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from edgefr.devices.agent import DEFAULT_PROTOCOL
from edgefr.errors import EdgefrError, read_toml_file
from edgefr.paths import devices_dir

TRANSPORTS = ("local", "ssh", "adb")
RUNTIMES = ("onnxruntime", "tflite")
DTYPES = ("fp32", "int8")
METRICS = ("thread_cpu", "wall")


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    dtype: str = "fp32"
    transport: str = "local"
    threads: int = 1
    metric: str = "thread_cpu"
    description: str = ""
    # ssh
    host: str = ""  # user@host
    port: int = 22
    identity_file: str = ""
    python: str = "python3"
    workdir: str = "/tmp/edgefr-agent"
    connect_timeout_s: int = 10
    ssh_options: tuple[str, ...] = ()
    # adb
    serial: str = ""
    benchmark_binary: str = "/data/local/tmp/benchmark_model"
    remote_dir: str = "/data/local/tmp/edgefr"
    protocol: dict = field(default_factory=lambda: dict(DEFAULT_PROTOCOL))
    source: str = ""

    @property
    def table_name(self) -> str:
        """File stem of this device's latency table."""
        return re.sub(r"[^A-Za-z0-9_.@-]+", "_", self.name)

    def summary(self) -> dict:
        return {"name": self.name, "transport": self.transport, "runtime": self.runtime, "dtype": self.dtype,
                "threads": self.threads, "metric": self.metric,
                **({"host": self.host, "port": self.port} if self.transport == "ssh" else {}),
                **({"serial": self.serial} if self.transport == "adb" else {})}

    def check(self) -> "Device":
        where = self.source or f"device {self.name!r}"

        def need(value, allowed, what):
            if value not in allowed:
                raise EdgefrError(f"{where}: {what}={value!r} is not supported; expected one of {', '.join(allowed)}")

        need(self.transport, TRANSPORTS, "transport")
        need(self.runtime, RUNTIMES, "runtime")
        need(self.dtype, DTYPES, "dtype")
        need(self.metric, METRICS, "metric")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise EdgefrError(f"{where}: threads must be a positive integer, got {self.threads!r}")
        if self.metric == "thread_cpu" and self.threads != 1:
            raise EdgefrError(f"{where}: metric thread_cpu counts only the calling thread, so it needs threads = 1; "
                              "use metric = \"wall\" for multi-threaded runs")
        if self.transport == "ssh" and not self.host:
            raise EdgefrError(f"{where}: an ssh device needs host = \"user@host\"")
        if self.transport == "adb" and self.runtime != "tflite":
            raise EdgefrError(f"{where}: the adb transport runs TFLite's benchmark_model; set runtime = \"tflite\"")
        statistic = self.protocol.get("statistic", DEFAULT_PROTOCOL["statistic"])  # the agent fills in defaults
        if statistic not in ("min", "median"):
            raise EdgefrError(f"{where}: [protocol] statistic must be \"min\" or \"median\", got {statistic!r}")
        unknown = set(self.protocol) - set(DEFAULT_PROTOCOL)
        if unknown:
            raise EdgefrError(f"{where}: unknown [protocol] keys {sorted(unknown)}; known: {sorted(DEFAULT_PROTOCOL)}")
        return self


_FIELDS = {f.name for f in fields(Device)} - {"source"}


def _device_from_mapping(data: dict, source: str) -> Device:
    unknown = set(data) - _FIELDS
    if unknown:
        raise EdgefrError(f"{source}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
    if "runtime" not in data:
        raise EdgefrError(f"{source}: missing required key 'runtime' ({' or '.join(RUNTIMES)})")
    values = dict(data)
    values["protocol"] = {**DEFAULT_PROTOCOL, **data.get("protocol", {})}
    values["ssh_options"] = tuple(data.get("ssh_options", ()))
    return Device(**values, source=source).check()


def load_device_file(path: Path) -> Device:
    data = read_toml_file(path, "device file", "see devices/*.toml for examples")
    data.setdefault("name", path.stem)
    return _device_from_mapping(data, str(path))


def list_devices() -> list[Device]:
    return [load_device_file(p) for p in sorted(devices_dir().glob("*.toml"))]


_SSH_URI = re.compile(r"^ssh://(?P<host>[^:/]+@[^:/]+|[^:/@]+)(?::(?P<port>\d+))?/?$")


def resolve_device(spec: str, runtime: str | None = None, dtype: str | None = None) -> Device:
    """A device from a name in `devices/`, a `.toml` path, `ssh://user@host[:port]` or `adb:SERIAL`.

    `runtime`/`dtype` complete ad-hoc targets and must agree with a device file that already fixes them.
    """
    overrides = {k: v for k, v in (("runtime", runtime), ("dtype", dtype)) if v}
    if spec.startswith("ssh://"):
        match = _SSH_URI.match(spec)
        if not match:
            raise EdgefrError(f"--device {spec!r}: expected ssh://user@host[:port]")
        if not runtime:
            raise EdgefrError(f"--device {spec}: an ssh target needs --runtime ({' or '.join(RUNTIMES)})")
        name = f"ssh-{match['host']}-{runtime}-{dtype or 'fp32'}"
        return _device_from_mapping({"name": name, "transport": "ssh", "host": match["host"],
                                     "port": int(match["port"] or 22), "metric": "wall", **overrides},
                                    f"--device {spec}")
    if spec.startswith("adb:"):
        serial = spec[4:]
        if not serial:
            raise EdgefrError(f"--device {spec!r}: expected adb:SERIAL (see `adb devices`)")
        return _device_from_mapping({"name": f"adb-{serial}-{dtype or 'fp32'}", "transport": "adb", "serial": serial,
                                     "metric": "wall", "runtime": runtime or "tflite",
                                     **({"dtype": dtype} if dtype else {})}, f"--device {spec}")
    path = Path(spec)
    if path.suffix == ".toml":
        device = load_device_file(path)
    else:
        candidate = devices_dir() / f"{spec}.toml"
        if not candidate.is_file():
            known = ", ".join(p.stem for p in sorted(devices_dir().glob("*.toml")))
            raise EdgefrError(f"--device {spec!r}: unknown device; known: {known} (or a .toml path, "
                              "ssh://user@host, adb:SERIAL)")
        device = load_device_file(candidate)
    for key, value in overrides.items():
        if getattr(device, key) != value:
            raise EdgefrError(f"--{key} {value} disagrees with {device.source} ({key} = {getattr(device, key)!r})")
    return device
