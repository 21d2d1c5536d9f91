"""Transports run the measurement agent where the device is: in this process, over ssh, or over adb."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable, Protocol

from edgefr.devices import agent
from edgefr.devices.spec import Device
from edgefr.digests import file_sha256
from edgefr.errors import EdgefrError

ProgressFn = Callable[[int, int], None]


class Transport(Protocol):
    def measure(self, models: dict[str, Path], seed: int = 0, progress: ProgressFn | None = None) -> dict:
        """Measure model files ({id: local path}); returns the agent's result document."""
        ...


def agent_job(device: Device, models: dict[str, str], seed: int) -> dict:
    return {"runtime": device.runtime, "threads": device.threads, "metric": device.metric,
            "protocol": device.protocol, "seed": seed,
            "models": [{"id": model_id, "path": path} for model_id, path in models.items()]}


def content_addressed_name(path: Path, prefix: str = "") -> str:
    """PREFIX + the first 16 hex digits of the file's sha256 + its suffix: one name per content, so equal names on
    the device mean equal files (size and bytes) and nothing is uploaded twice."""
    return f"{prefix}{file_sha256(path)[:16]}{path.suffix}"


def rename_uploads(names: list[str]) -> list[str]:
    """`mv -f NAME.part NAME` for each uploaded file, to run in its directory: only a complete upload gets its name."""
    return [f"mv -f {shlex.quote(name + '.part')} {shlex.quote(name)}" for name in names]


class LocalTransport:
    def __init__(self, device: Device):
        self.device = device

    def measure(self, models: dict[str, Path], seed: int = 0, progress: ProgressFn | None = None) -> dict:
        job = agent_job(self.device, {k: str(v) for k, v in models.items()}, seed)
        try:
            return agent.measure(job, progress)
        except Exception as exc:
            raise EdgefrError(f"device {self.device.name}: measuring failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def open_transport(device: Device) -> Transport:
    if device.transport == "local":
        return LocalTransport(device)
    if device.transport == "ssh":
        from edgefr.devices.ssh import SshTransport

        return SshTransport(device)
    from edgefr.devices.adb import AdbTransport

    return AdbTransport(device)
