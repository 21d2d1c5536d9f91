"""Fixtures shared across test modules: the real face data in ../shared and an isolated edgefr cache."""

from pathlib import Path

import numpy as np
import pytest

from edgefr.paths import shared_dir

SHARED = shared_dir()
LFW = SHARED / "faces" / "lfw"
CELEBA = SHARED / "faces" / "celeba"

needs_lfw = pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason="../shared/faces/lfw is absent")
needs_celeba = pytest.mark.skipif(not CELEBA.is_dir(), reason="../shared/faces/celeba is absent")


@pytest.fixture
def edgefr_cache(tmp_path, monkeypatch) -> Path:
    """EDGEFR_CACHE pointed at a fresh folder, so tests neither read nor leave caches in ~/.cache."""
    folder = tmp_path / "edgefr-cache"
    monkeypatch.setenv("EDGEFR_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def real_faces() -> list[Path]:
    """A few real aligned face JPEGs of different people (LFW)."""
    if not LFW.is_dir():
        pytest.skip("../shared/faces/lfw is absent")
    people = [p for p in sorted(LFW.iterdir()) if p.is_dir()][:6]
    return [sorted(p.glob("*.jpg"))[0] for p in people]


@pytest.fixture(scope="session")
def small_imagefolder(tmp_path_factory) -> Path:
    """An ImageFolder of 6 real CelebA identities x 5 images (copies, so tests may add broken files)."""
    if not CELEBA.is_dir():
        pytest.skip("../shared/faces/celeba is absent")
    root = tmp_path_factory.mktemp("faces6")
    for identity in sorted(p for p in CELEBA.iterdir() if p.is_dir())[:6]:
        (root / identity.name).mkdir()
        for image in sorted(identity.glob("*.jpg"))[:5]:
            (root / identity.name / image.name).write_bytes(image.read_bytes())
    return root


def lfw_subset(per_fold_and_kind: int):
    """The first n same and n different LFW pairs of each fold, keeping the 10-fold structure."""
    from edgefr.data.pairs import PairSet, read_lfw_pairs

    pairs = read_lfw_pairs(LFW / "pairs.txt", LFW)
    keep = np.concatenate([np.flatnonzero((pairs.fold == f) & (pairs.same == s))[:per_fold_and_kind]
                           for f in range(10) for s in (True, False)])
    return PairSet([pairs.left[i] for i in keep], [pairs.right[i] for i in keep], pairs.same[keep],
                   pairs.fold[keep], name=f"lfw-{len(keep)}")
