"""Input conventions of face models. A model fed the wrong channel order or scaling still produces
embeddings, just worse ones; this silent accuracy collapse is why every model declares its convention here.

A spec is a dict: `channel_order` "RGB"/"BGR", `mean` and `std` (a number or one per channel, in the
model's channel order; input = (pixel - mean) / std on 0..255 pixels), `layout` "NCHW"/"NHWC", `size`.
"""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np

from edgefr.errors import EdgefrError

PREPROCESSING_KEYS = ("channel_order", "mean", "std", "layout", "size")
INSIGHTFACE_PREPROCESSING = {"channel_order": "RGB", "mean": 127.5, "std": 128.0, "layout": "NCHW", "size": 112}
# SFace normalizes inside the graph, so it takes raw 0..255 BGR pixels.
SFACE_PREPROCESSING = {"channel_order": "BGR", "mean": 0.0, "std": 1.0, "layout": "NCHW", "size": 112}


def _per_channel(value: Any, key: str, source: str) -> float | list[float]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise EdgefrError(f"{source}: preprocessing {key!r} must be a number or 3 numbers, got {value!r}")
    if key == "std" and any(v == 0 for v in values):
        raise EdgefrError(f"{source}: preprocessing 'std' must be non-zero, got {value!r}")
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def check_preprocessing(spec: Any, source: str = "preprocessing") -> dict:
    """A validated copy of `spec` (a dict or its JSON text); anything malformed is a one-line EdgefrError."""
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except ValueError:
            raise EdgefrError(f"{source}: preprocessing is not valid JSON") from None
    if not isinstance(spec, dict):
        raise EdgefrError(f"{source}: preprocessing must be a JSON object with keys {', '.join(PREPROCESSING_KEYS)}")
    missing = [k for k in PREPROCESSING_KEYS if k not in spec]
    unknown = sorted(set(spec) - set(PREPROCESSING_KEYS))
    if missing or unknown:
        raise EdgefrError(f"{source}: preprocessing needs keys {', '.join(PREPROCESSING_KEYS)}"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    channel_order, layout, size = spec["channel_order"], spec["layout"], spec["size"]
    if channel_order not in ("RGB", "BGR"):
        raise EdgefrError(f"{source}: preprocessing channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if layout not in ("NCHW", "NHWC"):
        raise EdgefrError(f"{source}: preprocessing layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 1024:
        raise EdgefrError(f"{source}: preprocessing size must be an integer side length (e.g. 112), got {size!r}")
    return {"channel_order": channel_order, "mean": _per_channel(spec["mean"], "mean", source),
            "std": _per_channel(spec["std"], "std", source), "layout": layout, "size": size}


def resolve_preprocessing(source: str, explicit: Any = None, declared: Any = None, default: Any = None) -> dict:
    """The spec a model runs with: the caller's `explicit` override, else what the model file `declared`
    (metadata), else the loader's `default`; with none of them, an error asking for one."""
    for spec, origin in ((explicit, source), (declared, f"{source} metadata"), (default, source)):
        if spec is not None:
            return check_preprocessing(spec, origin)
    raise EdgefrError(f"{source}: the model declares no preprocessing; pass one, e.g. --preprocessing "
                      f"'{json.dumps(INSIGHTFACE_PREPROCESSING)}'")


def preprocess(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 [N,H,W,3] RGB -> the float32 batch a model with this (validated) spec expects."""
    size = spec["size"]
    if images.shape[1:3] != (size, size):
        images = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])
    x = images.astype(np.float32)
    if spec["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    if spec["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def check_images(images: Any) -> np.ndarray:
    """Embedders take uint8 [N,H,W,3] RGB; a wrong array is a programming error, reported plainly."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N,H,W,3] RGB, got {images.dtype} {images.shape}")
    return images
