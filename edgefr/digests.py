"""Content digests of files: what edgefr uses to tell one file's bytes from another's (caches, uploads, reports)."""

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (model files and datasets can be large)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
