"""Aligned face images: decoding one file (`load_rgb`) and an ImageFolder dataset (`ImageFolderFaces`).

A face set is a folder with one sub-folder per identity holding aligned 112x112 crops (what `edgefr align`
writes). Corrupt files are a fact of life in scraped face sets: they are skipped and counted, never allowed to
stop a training run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edgefr.digests import file_sha256
from edgefr.errors import EdgefrError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FACE_SIZE = 112

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START = b"\x89PNG"


def _jpeg_is_truncated(data: bytes) -> bool:
    # OpenCV decodes a truncated JPEG without complaint (grey bottom rows), so look for the end-of-image
    # marker ourselves; some writers pad a few bytes after it, hence the search in the tail.
    return data.startswith(_JPEG_START) and _JPEG_END not in data[-32:]


def decode_rgb(data: bytes, source: str | Path) -> np.ndarray:
    """Decode encoded image bytes (JPEG/PNG/...) to uint8 HxWx3 RGB; `source` names them in errors."""
    if not data:
        raise EdgefrError(f"{source}: empty image file")
    if _jpeg_is_truncated(data):
        raise EdgefrError(f"{source}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EdgefrError(f"{source}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; an unreadable or corrupt file raises a one-line EdgefrError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EdgefrError(f"{path}: cannot read image ({exc.strerror or type(exc).__name__})") from None
    return decode_rgb(data, path)


def looks_readable(path: Path) -> bool:
    """A cheap check (first and last bytes only) that catches empty, foreign and truncated files."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 32))
            tail = handle.read()
    except OSError:
        return False
    if head.startswith(_JPEG_START):
        return _JPEG_END in tail
    return head.startswith(_PNG_START) or (size > 0 and path.suffix.lower() in (".bmp", ".webp"))


def to_face_size(image: np.ndarray, source: str | Path, size: int = FACE_SIZE) -> np.ndarray:
    """Aligned sets are 112x112; resize anything else (with a note) rather than stop training on it."""
    if image.shape[:2] == (size, size):
        return image
    log.warning("%s: %dx%d image resized to %dx%d; was this folder aligned (`edgefr align`)?",
                source, image.shape[1], image.shape[0], size, size)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def list_imagefolder(root: str | Path, max_per_class: int | None = None,
                     min_images_per_class: int = 1) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folder names) and (path, label) samples of an ImageFolder, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise EdgefrError(f"{root}: no such image folder")
    per_class: list[tuple[str, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if max_per_class is not None:
            files = files[:max_per_class]
        if len(files) >= max(1, min_images_per_class):
            per_class.append((folder.name, files))
    if not per_class:
        raise EdgefrError(f"{root}: no images found; expected one sub-folder per identity holding "
                          f"{'/'.join(IMAGE_EXTENSIONS)} files (at least {min_images_per_class} per identity)")
    classes = [name for name, _ in per_class]
    samples = [(str(path), label) for label, (_, files) in enumerate(per_class) for path in files]
    return classes, samples


# SHA-256 of files already hashed in this process, by (path, size, mtime): a training start asks for the signature
# once per teacher view, and a file that changes gets a new stat and is hashed again.
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes, read once per process while the file's size and mtime stay the same."""
    stat = Path(path).stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_sha256(path)
    return _digests[key]


class ImageFolderFaces(Dataset):
    """Aligned faces in an ImageFolder; item i is (uint8 CHW RGB tensor, label, i).

    Files that fail the cheap header/tail check are dropped at construction and listed in `.skipped`. A file
    that passes it but still fails to decode is added to `.skipped` when met and replaced by the next sample
    (whose own label and index are returned, so per-index teacher embeddings stay consistent).
    """

    def __init__(self, root: str | Path, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 min_images_per_class: int = 1, max_per_class: int | None = None, limit: int | None = None):
        self.root = Path(root)
        self.transform = transform
        self.classes, listed = list_imagefolder(self.root, max_per_class, min_images_per_class)
        self.skipped: list[str] = [path for path, _ in listed if not looks_readable(Path(path))]
        if self.skipped:
            log.warning("%s: skipped %d unreadable image(s), e.g. %s", self.root, len(self.skipped),
                        self.skipped[0])
        bad = set(self.skipped)
        self.samples: list[tuple[str, int]] = [s for s in listed if s[0] not in bad][:limit]
        if not self.samples:
            raise EdgefrError(f"{self.root}: no readable images")

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> ImageFolderFaces:
        """A view over some samples (same classes and labels, indices renumbered from 0)."""
        view = object.__new__(ImageFolderFaces)
        view.__dict__.update(self.__dict__)
        view.samples = [self.samples[i] for i in indices]
        view.skipped = list(self.skipped)
        return view

    def image(self, index: int) -> np.ndarray:
        """Sample `index` as uint8 112x112x3 RGB, untransformed; raises EdgefrError if it cannot be decoded."""
        path = self.samples[index][0]
        return to_face_size(load_rgb(path), path)

    def load(self, index: int) -> tuple[np.ndarray, int, int]:
        """(uint8 HWC RGB image, label, position) of `index`, or of the next decodable sample after it."""
        for offset in range(len(self.samples)):
            position = (index + offset) % len(self.samples)
            path, label = self.samples[position]
            try:
                return self.image(position), label, position
            except EdgefrError as exc:
                if path not in self.skipped:
                    self.skipped.append(path)
                    log.warning("skipped unreadable image (%d so far): %s", len(self.skipped), exc)
        raise EdgefrError(f"{self.root}: none of the {len(self.samples)} images could be decoded")

    def data_signature(self) -> list:
        """What identifies this data for caches: every file's path under the root, label and content digest.

        By content, not modification time: a copy, a re-sync or a re-mount of the same faces keeps its cache
        (hashing is ~0.1 ms per face image, against the teacher's ~10 ms to embed it)."""
        return [(Path(path).relative_to(self.root).as_posix(), label, file_digest(path))
                for path, label in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label, position = self.load(index)
        return to_chw_tensor(image, self.transform), label, position


def to_chw_tensor(image: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """uint8 HWC RGB array -> uint8 CHW tensor, with the dataset's transform applied if any."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return transform(tensor) if transform is not None else tensor
