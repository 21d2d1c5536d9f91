"""The verification sets every stage reports on, taken from the shared faces folder when it is there: LFW View 2
(10-fold `pairs.txt`) and 3000 seeded pairs of CelebA identities (harder: pose, age and lighting vary more)."""

from __future__ import annotations

from edgefr.data.pairs import PairSet, read_lfw_pairs, sample_imagefolder_pairs
from edgefr.paths import shared_dir
from edgefr.verify.protocol import Embedder, VerificationResult, verify_pairs

CELEBA_PAIRS = 3000


def shared_pair_sets(names: tuple[str, ...] = ("lfw", "celeba_pairs")) -> dict[str, PairSet]:
    faces = shared_dir() / "faces"
    sets = {}
    if "lfw" in names and (faces / "lfw" / "pairs.txt").is_file():
        sets["lfw"] = read_lfw_pairs(faces / "lfw" / "pairs.txt", faces / "lfw")
    if "celeba_pairs" in names and (faces / "celeba").is_dir():
        sets["celeba_pairs"] = sample_imagefolder_pairs(faces / "celeba", CELEBA_PAIRS, seed=0)
    return sets


def evaluate_shared(embedder: Embedder, names: tuple[str, ...] = ("lfw", "celeba_pairs"),
                    progress: bool = True) -> dict[str, VerificationResult]:
    """10-fold verification on each shared set present (an empty dict when none is)."""
    return {name: verify_pairs(embedder, pairs, progress=progress) for name, pairs in shared_pair_sets(names).items()}
