"""edgefr: search, distill and export face-recognition models that meet a latency budget on a device."""

__version__ = "0.1.0"
