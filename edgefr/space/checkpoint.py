"""Student checkpoints: one `.pt` file carrying the arch JSON, weights and input preprocessing, so that any
later stage (eval, export) rebuilds the model without other inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from edgefr.errors import EdgefrError
from edgefr.space.arch import arch_from_dict
from edgefr.space.model import FaceNet

CHECKPOINT_FORMAT = "edgefr.checkpoint/1"


def save_student(path: str | Path, model: FaceNet, **extra) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "arch": model.arch.to_dict(), "state_dict": model.state_dict(),
               "preprocessing": model.preprocessing, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgefrError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise EdgefrError(f"{path}: not an edgefr checkpoint ({type(exc).__name__}); "
                          f"expected a .pt written by edgefr distill/search") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise EdgefrError(f"{path}: not an edgefr checkpoint; expected format {CHECKPOINT_FORMAT!r}")
    return payload


def load_student(path: str | Path) -> tuple[FaceNet, dict]:
    """The model (eval mode) and the whole checkpoint dict (metrics, epoch, ... as saved)."""
    payload = read_checkpoint(path)
    model = FaceNet(arch_from_dict(payload["arch"], str(path)))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload
