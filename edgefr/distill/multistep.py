"""Multi-step KD (PocketNet, Boutros et al. 2022): the student learns from the teacher *as it was* at a matching
point of its own training, switching to a more mature teacher checkpoint as the student's epochs advance.

A multi-step teacher is the output folder of `edgefr train`, which keeps one checkpoint per epoch in
`epochs/epoch_NNN.pt`.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgefr.errors import EdgefrError

EPOCH_DIR = "epochs"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the snapshot written after `epoch` (0-based) completes."""
    return f"epoch_{epoch + 1:03d}.pt"


def teacher_checkpoints(run_dir: str | Path) -> list[Path]:
    """The per-epoch checkpoints of an `edgefr train` run, oldest first."""
    folder = Path(run_dir) / EPOCH_DIR
    found = sorted(folder.glob("epoch_*.pt"))
    if not found:
        raise EdgefrError(f"{run_dir}: multistep KD needs a teacher with per-epoch checkpoints "
                          f"({EPOCH_DIR}/epoch_NNN.pt, as written by `edgefr train`)")
    return found


def checkpoint_for_epoch(epoch: int, epochs: int, checkpoints: int) -> int:
    """Index of the teacher checkpoint for student epoch `epoch` (0-based) of `epochs`: proportional maturity.

    Student epoch e uses the teacher checkpoint at fraction (e + 1) / epochs of the teacher's training, so the
    last student epoch always learns from the final teacher."""
    return min(checkpoints, max(1, math.ceil((epoch + 1) * checkpoints / epochs))) - 1
