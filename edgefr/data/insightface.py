"""insightface data files without mxnet: training `train.rec`/`train.idx` (MXNet RecordIO) and evaluation
`.bin` pairs (a pickle), the latter read through an unpickler that can only build plain data.

RecordIO record: uint32 magic 0xced7230a, uint32 (continuation flag << 29 | length), payload, zero padding
to 4 bytes. An image payload (mx.recordio.pack) is the header struct `IfQQ` (flag, label, id, id2); when
flag > 0 the label is instead `flag` float32 values following the header; the encoded image comes last.
insightface's record 0 is a header whose label[0] is one past the last image record.
`train.idx` is text: `key<TAB>byte offset` per line.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgefr.data.faces import decode_rgb, to_chw_tensor, to_face_size
from edgefr.errors import EdgefrError

RECORDIO_MAGIC = 0xCED7230A
_RECORD_HEAD = struct.Struct("<II")
_IMAGE_HEAD = struct.Struct("<IfQQ")


def _padding(length: int) -> int:
    return -length % 4


def pack_image_record(label: float | Iterable[float], encoded_image: bytes, record_id: int = 0) -> bytes:
    """One RecordIO payload as mx.recordio.pack writes it: a scalar label, or a label vector."""
    labels = np.atleast_1d(np.asarray(label, dtype=np.float32))
    if labels.size == 1:
        return _IMAGE_HEAD.pack(0, float(labels[0]), record_id, 0) + encoded_image
    return _IMAGE_HEAD.pack(labels.size, 0.0, record_id, 0) + labels.tobytes() + encoded_image


def unpack_image_record(payload: bytes, source: str) -> tuple[np.ndarray, bytes]:
    """(label vector float32, encoded image bytes) of one payload."""
    if len(payload) < _IMAGE_HEAD.size:
        raise EdgefrError(f"{source}: record too short for an image header")
    flag, label, _, _ = _IMAGE_HEAD.unpack_from(payload)
    body = payload[_IMAGE_HEAD.size:]
    if flag == 0:
        return np.array([label], dtype=np.float32), body
    if len(body) < 4 * flag:
        raise EdgefrError(f"{source}: record header announces {flag} labels but is too short")
    return np.frombuffer(body[:4 * flag], dtype=np.float32).copy(), body[4 * flag:]


def write_recordio(rec_path: str | Path, payloads: Iterable[bytes], idx_path: str | Path | None = None) -> None:
    """Write payloads as records 0, 1, ... with their `.idx` (default: rec_path with suffix .idx)."""
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
    offsets = []
    with rec_path.open("wb") as rec:
        for payload in payloads:
            if len(payload) >= 1 << 29:
                raise EdgefrError(f"{rec_path}: a record of {len(payload)} bytes needs multi-part records")
            offsets.append(rec.tell())
            rec.write(_RECORD_HEAD.pack(RECORDIO_MAGIC, len(payload)) + payload + b"\0" * _padding(len(payload)))
    idx_path.write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets)))


class RecordIOReader:
    """Random access to the records of a `.rec` file through its `.idx`."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        for path in (self.rec_path, idx_path):
            if not path.is_file():
                raise EdgefrError(f"{path}: no such file (RecordIO needs both the .rec and the .idx)")
        self.offsets: dict[int, int] = {}
        for number, line in enumerate(idx_path.read_text().splitlines(), start=1):
            try:
                key, offset = line.split()
                self.offsets[int(key)] = int(offset)
            except ValueError:
                raise EdgefrError(f"{idx_path}:{number}: expected '<key>\\t<offset>'") from None
        self._file = None

    def __getstate__(self) -> dict:
        # An open file cannot cross into DataLoader worker processes; each reopens it on first read.
        return {**self.__dict__, "_file": None}

    def read(self, key: int) -> bytes:
        if key not in self.offsets:
            raise EdgefrError(f"{self.rec_path}: no record {key} in the index")
        if self._file is None:
            self._file = self.rec_path.open("rb")
        self._file.seek(self.offsets[key])
        head = self._file.read(_RECORD_HEAD.size)
        if len(head) < _RECORD_HEAD.size:
            raise EdgefrError(f"{self.rec_path}: record {key} lies past the end of the file")
        magic, length_flag = _RECORD_HEAD.unpack(head)
        if magic != RECORDIO_MAGIC:
            raise EdgefrError(f"{self.rec_path}: record {key} has no RecordIO magic (not a .rec, or a stale .idx)")
        if length_flag >> 29:
            raise EdgefrError(f"{self.rec_path}: record {key} is split across parts; not supported")
        payload = self._file.read(length_flag & ((1 << 29) - 1))
        if len(payload) != length_flag & ((1 << 29) - 1):
            raise EdgefrError(f"{self.rec_path}: record {key} is truncated")
        return payload


class RecordIOFaces(Dataset):
    """An insightface `train.rec` as a dataset with the same items as ImageFolderFaces: (uint8 CHW RGB, label, i)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, transform=None,
                 limit: int | None = None):
        self.reader = RecordIOReader(rec_path, idx_path)
        self.transform = transform
        self.keys = sorted(self.reader.offsets)
        if 0 in self.reader.offsets:
            labels, _ = unpack_image_record(self.reader.read(0), f"{rec_path} record 0")
            if len(labels) >= 2:
                # insightface layout: record 0 is a header, images are records 1 .. label[0]-1.
                self.keys = [k for k in range(1, int(labels[0])) if k in self.reader.offsets]
        self.keys = self.keys[:limit]
        if not self.keys:
            raise EdgefrError(f"{rec_path}: no image records")

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> tuple[np.ndarray, int, int]:
        """(uint8 112x112x3 RGB image, label, index) of record `index`."""
        source = f"{self.reader.rec_path} record {self.keys[index]}"
        labels, encoded = unpack_image_record(self.reader.read(self.keys[index]), source)
        return to_face_size(decode_rgb(encoded, source), source), int(labels[0]), index

    def data_signature(self) -> list:
        """What identifies this data for caches: the .rec file's size and modification time, and the keys."""
        stat = self.reader.rec_path.stat()
        return [str(self.reader.rec_path), stat.st_size, stat.st_mtime_ns, self.keys[0], len(self.keys)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label, index = self.load(index)
        return to_chw_tensor(image, self.transform), label, index


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only builtin containers, bytes, numbers and numpy bool arrays; any other global is refused,
    which is what stops a crafted `.bin` from running code (e.g. `os.system`) while loading."""

    _ALLOWED = frozenset({("builtins", "list"), ("builtins", "tuple"), ("builtins", "dict"), ("builtins", "set"),
                          ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "bool"), ("builtins", "int"),
                          ("builtins", "float"), ("builtins", "str"), ("_codecs", "encode"),
                          ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                          ("numpy._core.multiarray", "_reconstruct")})

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise EdgefrError(f"{self.source}: refused to load: the pickle references {module}.{name}; "
                          "an insightface .bin holds only image bytes and bools")


def read_bin_pairs(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """An insightface verification `.bin`: (encoded images, 2 per pair in order; issame bool per pair)."""
    path = Path(path)
    if not path.is_file():
        raise EdgefrError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            images, issame = _PlainDataUnpickler(handle, str(path)).load()
    except EdgefrError:
        raise
    except Exception as exc:  # unpickling garbage raises many types
        raise EdgefrError(f"{path}: not an insightface .bin ({type(exc).__name__})") from None
    images = [bytes(image) for image in images]
    issame = np.asarray(issame, dtype=np.bool_)
    if len(images) != 2 * len(issame):
        raise EdgefrError(f"{path}: {len(images)} images for {len(issame)} pairs; expected two per pair")
    return images, issame


def bin_to_pairset(path: str | Path, out_dir: str | Path, folds: int = 10):
    """Write the images of a `.bin` as JPEG files under `out_dir` and return their PairSet (contiguous folds,
    as insightface's verification code splits them)."""
    from edgefr.data.pairs import PairSet

    images, issame = read_bin_pairs(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(images):
        decode_rgb(data, f"{path} image {i}")  # fail here, naming the .bin, rather than later on a temp file
        target = out_dir / f"{i:06d}.jpg"
        target.write_bytes(data)
        paths.append(str(target))
    fold = np.arange(len(issame)) * folds // max(1, len(issame))
    return PairSet(paths[0::2], paths[1::2], issame, fold, name=f"bin:{path}")
