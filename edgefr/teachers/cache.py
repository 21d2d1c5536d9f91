"""Teacher embeddings of a whole dataset, computed once and kept as `.npy` under the edgefr cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgefr.errors import EdgefrError
from edgefr.paths import cache_dir as default_cache_dir
from edgefr.teachers.base import Teacher

log = logging.getLogger(__name__)

VIEWS = ("center", "flip")
BATCH = 64


def embeddings_cache_path(teacher: Teacher, dataset, view: str = "center", cache_dir: str | Path | None = None) -> Path:
    """Where `cached_embeddings` keeps this (teacher, data, view): the name carries a hash of the teacher's
    weights and preprocessing, every file's size and mtime, and the view, so any change misses the cache."""
    if view not in VIEWS:
        raise EdgefrError(f"--view {view!r}: expected one of {', '.join(VIEWS)}")
    key = json.dumps([teacher.name, teacher.fingerprint, teacher.preprocessing, view, dataset.data_signature()],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "embeddings"
    return folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', teacher.name)}-{view}-{digest}.npy"


def cached_embeddings(teacher: Teacher, dataset, view: str = "center",
                      cache_dir: str | Path | None = None) -> np.ndarray:
    """float32 [len(dataset), D]: row i is the teacher's raw embedding of sample i (mirrored for view="flip").

    `dataset` is an ImageFolderFaces or RecordIOFaces; its transform is ignored (the cache holds the clean
    views). A sample that cannot be decoded gets the row of the sample the dataset serves in its place.
    """
    path = embeddings_cache_path(teacher, dataset, view, cache_dir)
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(dataset), teacher.embedding_dim):
            return cached
        log.warning("%s: cached embeddings have shape %s, expected %s; recomputing", path, cached.shape,
                    (len(dataset), teacher.embedding_dim))
    out = np.empty((len(dataset), teacher.embedding_dim), np.float32)
    for start in tqdm(range(0, len(dataset), BATCH), desc=f"{teacher.name} embeddings ({view})", unit="batch",
                      leave=False):
        images = np.stack([dataset.load(i)[0] for i in range(start, min(start + BATCH, len(dataset)))])
        if view == "flip":
            images = np.ascontiguousarray(images[:, :, ::-1])
        out[start:start + len(images)] = teacher.embed(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temp file per process: concurrent trainings on one machine may fill the same cache entry at once.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out
