"""Verification pairs: the LFW View-2 `pairs.txt` protocol, and balanced pairs sampled from an ImageFolder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefr.data.faces import list_imagefolder
from edgefr.errors import EdgefrError


@dataclass
class PairSet:
    """Image pairs with their ground truth (`same`) and the cross-validation fold of each pair."""

    left: list[str]
    right: list[str]
    same: np.ndarray  # bool, one per pair
    fold: np.ndarray  # int, one per pair
    name: str = "pairs"

    def __len__(self) -> int:
        return len(self.left)

    def per_fold_subset(self, per_fold: int) -> "PairSet":
        """The first `per_fold` pairs of each fold, half same and half different: the same protocol on fewer
        images (whole set when `per_fold` covers every fold)."""
        keep = np.concatenate([np.flatnonzero((self.fold == f) & (self.same == s))[:per_fold // 2]
                               for f in np.unique(self.fold) for s in (True, False)])
        return PairSet([self.left[i] for i in keep], [self.right[i] for i in keep], self.same[keep],
                       self.fold[keep], name=f"{self.name} ({len(keep)} pairs)")

    def unique_paths(self) -> list[str]:
        """Every image once, in first-seen order (LFW: 7,701 images behind 12,000 pair sides)."""
        return list(dict.fromkeys(self.left + self.right))


def _require_files(paths: Iterable[str], source: Path) -> None:
    missing = [p for p in dict.fromkeys(paths) if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EdgefrError(f"{missing[0]}: image listed in {source} does not exist{more}")


def lfw_image_path(images_root: Path, name: str, number: str) -> str:
    return str(images_root / name / f"{name}_{int(number):04d}.jpg")


def read_lfw_pairs(pairs_txt: str | Path, images_root: str | Path) -> PairSet:
    """Parse LFW View-2 pairs: header `folds n`, then per fold n same lines `name i j` and n different
    lines `name1 i name2 j`."""
    pairs_txt, images_root = Path(pairs_txt), Path(images_root)
    try:
        lines = [line.split() for line in pairs_txt.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgefrError(f"{pairs_txt}: cannot read pairs file ({type(exc).__name__})") from None
    try:
        folds, per_fold = (int(v) for v in lines[0])
    except (ValueError, IndexError):
        raise EdgefrError(f"{pairs_txt}: first line must be '<folds> <pairs per fold>', e.g. '10 300'") from None
    body = lines[1:]
    if len(body) != 2 * folds * per_fold:
        raise EdgefrError(f"{pairs_txt}: expected {2 * folds * per_fold} pair lines for {folds} folds of "
                          f"2x{per_fold}, found {len(body)}")
    left, right, same = [], [], []
    for number, fields in enumerate(body, start=2):
        if len(fields) == 3:
            name, i, j = fields
            pair = (name, i, name, j)
        elif len(fields) == 4:
            pair = tuple(fields)
        else:
            raise EdgefrError(f"{pairs_txt}:{number}: expected 'name i j' or 'name1 i name2 j'")
        try:
            left.append(lfw_image_path(images_root, pair[0], pair[1]))
            right.append(lfw_image_path(images_root, pair[2], pair[3]))
        except ValueError:
            raise EdgefrError(f"{pairs_txt}:{number}: image numbers must be integers") from None
        same.append(len(fields) == 3)
    _require_files(left + right, pairs_txt)
    fold = np.repeat(np.arange(folds), 2 * per_fold)
    return PairSet(left, right, np.array(same, dtype=np.bool_), fold, name=f"lfw:{pairs_txt}")


def sample_imagefolder_pairs(root: str | Path, n_pairs: int = 3000, seed: int = 0, folds: int = 10) -> PairSet:
    """`n_pairs` distinct pairs, half same-identity and half different, each fold balanced like LFW's."""
    if n_pairs <= 0 or n_pairs % (2 * folds):
        raise EdgefrError(f"--n-pairs {n_pairs}: must be a positive multiple of {2 * folds} "
                          f"(equal same/different pairs in each of {folds} folds)")
    classes, samples = list_imagefolder(root)
    by_class: list[list[str]] = [[] for _ in classes]
    for path, label in samples:
        by_class[label].append(path)
    multi = [i for i, paths in enumerate(by_class) if len(paths) >= 2]
    half = n_pairs // 2
    available_same = sum(len(by_class[i]) * (len(by_class[i]) - 1) // 2 for i in multi)
    if len(classes) < 2 or available_same < half:
        raise EdgefrError(f"{root}: too few identities/images for {half} same-identity pairs "
                          f"({available_same} possible)")
    rng = np.random.default_rng(seed)

    def draw(same: bool) -> list[tuple[str, str]]:
        chosen: dict[frozenset, tuple[str, str]] = {}
        while len(chosen) < half:
            if same:
                paths = by_class[multi[rng.integers(len(multi))]]
                a, b = rng.choice(len(paths), 2, replace=False)
                pair = (paths[a], paths[b])
            else:
                c1, c2 = rng.choice(len(classes), 2, replace=False)
                pair = (by_class[c1][rng.integers(len(by_class[c1]))], by_class[c2][rng.integers(len(by_class[c2]))])
            chosen.setdefault(frozenset(pair), pair)
        return list(chosen.values())

    same_pairs, different_pairs = draw(True), draw(False)
    per_fold = half // folds
    ordered = [pair for k in range(folds)
               for pair in (same_pairs[k * per_fold:(k + 1) * per_fold]
                            + different_pairs[k * per_fold:(k + 1) * per_fold])]
    same = np.tile(np.repeat([True, False], per_fold), folds)
    return PairSet([a for a, _ in ordered], [b for _, b in ordered], same,
                   np.repeat(np.arange(folds), 2 * per_fold), name=f"imagefolder:{root}:seed{seed}")
