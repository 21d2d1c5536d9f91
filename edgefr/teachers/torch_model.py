"""TorchScript files and edgefr student checkpoints as teachers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from edgefr.digests import file_sha256
from edgefr.errors import EdgefrError
from edgefr.teachers.base import Teacher, probe_embedding_dim
from edgefr.teachers.preprocessing import resolve_preprocessing

# A TorchScript archive may carry the model's input convention as this extra file (JSON).
PREPROCESSING_EXTRA_FILE = "edgefr.preprocessing"


def _is_torchscript(path: Path) -> bool:
    # torch.save and torch.jit.save both write zip archives; only TorchScript ones hold compiled code.
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_forward(module: torch.nn.Module):
    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = module(torch.from_numpy(batch))
        return output.float().numpy()
    return forward


def load_torch_teacher(path: str | Path, name: str | None = None, preprocessing: dict | None = None) -> Teacher:
    """A TorchScript `.pt`/`.ts` file or an edgefr student checkpoint `.pt` as a Teacher."""
    from edgefr.space import load_student

    path = Path(path)
    if not path.is_file():
        raise EdgefrError(f"{path}: no such model file")
    if _is_torchscript(path):
        extra = {PREPROCESSING_EXTRA_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        except Exception as exc:  # TorchScript raises RuntimeError subclasses for foreign archives
            raise EdgefrError(f"{path}: not a loadable TorchScript model ({type(exc).__name__})") from None
        spec = resolve_preprocessing(str(path), preprocessing, extra[PREPROCESSING_EXTRA_FILE] or None)
    else:
        model, payload = load_student(path)
        spec = resolve_preprocessing(str(path), preprocessing, payload["preprocessing"])
        module = model
    forward = _torch_forward(module)
    dim, batched = probe_embedding_dim(forward, spec, path)
    return Teacher(name or path.stem, spec, forward, dim, file_sha256(path), max_batch=64 if batched else 1)
