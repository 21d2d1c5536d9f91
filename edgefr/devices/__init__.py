"""Devices: descriptions (`devices/*.toml`), transports (local, ssh, adb) and the measurement agent."""

from edgefr.devices.spec import Device, list_devices, load_device_file, resolve_device
from edgefr.devices.transports import LocalTransport, Transport, open_transport

__all__ = ["Device", "LocalTransport", "Transport", "list_devices", "load_device_file", "open_transport",
           "resolve_device"]
