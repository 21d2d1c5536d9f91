"""Face verification accuracy: insightface's 10-fold protocol on cosine similarity, plus TAR@FAR."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
from tqdm import tqdm

from edgefr.data.faces import load_rgb, to_face_size
from edgefr.data.pairs import PairSet
from edgefr.teachers.base import l2_normalize

FARS = (1e-1, 1e-2, 1e-3)


class Embedder(Protocol):
    name: str
    preprocessing: dict

    def embed(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, D] raw embeddings of uint8 [N, H, W, 3] RGB faces."""


@dataclass
class VerificationResult:
    """Accuracies are fractions in [0, 1]; `threshold` is the mean over folds of the cosine-similarity
    threshold chosen on the other folds (a pair is "same" when its similarity is above it)."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    threshold: float
    tar_at_far: dict[float, float]
    n_pairs: int
    model: str = ""
    pairs: str = ""
    flip: bool = False
    similarities: np.ndarray = field(default=None, repr=False)  # one per pair, in PairSet order

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["similarities"]
        data["tar_at_far"] = {f"{far:g}": tar for far, tar in self.tar_at_far.items()}
        return data

    def summary(self) -> str:
        tars = ", ".join(f"TAR@FAR={far:g}: {100 * tar:.2f}%" for far, tar in self.tar_at_far.items())
        return (f"{self.model} on {self.pairs} ({self.n_pairs} pairs{', +flip' if self.flip else ''}): "
                f"accuracy {100 * self.accuracy:.2f} +- {100 * self.accuracy_std:.2f}%, "
                f"threshold {self.threshold:.3f} (cosine); {tars}")


def best_threshold(similarities: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximizing accuracy of `similarity > threshold` over all distinct cut points."""
    order = np.argsort(similarities, kind="stable")
    s, y = similarities[order], same[order]
    # Cutting after position k (k = 0..n) calls the first k "different": correct = different among the
    # first k + same among the rest.
    different_below = np.concatenate([[0], np.cumsum(~y)])
    same_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = different_below + same_above
    distinct = np.concatenate([[True], s[1:] != s[:-1], [True]])  # cut only between different values
    correct = np.where(distinct, correct, -1)
    # Ties are common (a whole gap between the classes separates them equally well); take the middle tied
    # cut rather than the first, so the threshold does not hug one class's scores.
    tied = np.flatnonzero(correct == correct.max())
    k = int(tied[len(tied) // 2])
    cuts = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    return float(cuts[k]), correct[k] / len(s)


def tar_at_far(similarities: np.ndarray, same: np.ndarray, fars=FARS) -> dict[float, float]:
    """True-accept rate at the threshold that accepts at most a fraction `far` of different-identity pairs."""
    impostors = np.sort(similarities[~same])[::-1]
    genuine = similarities[same]
    result = {}
    for far in fars:
        allowed = int(np.floor(far * len(impostors)))
        threshold = impostors[min(allowed, len(impostors) - 1)]
        result[far] = float(np.mean(genuine > threshold))
    return result


def kfold_accuracy(similarities: np.ndarray, same: np.ndarray, fold: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-fold (accuracy, threshold): threshold fit on all other folds, accuracy on the held-out one."""
    accuracies, thresholds = [], []
    for k in np.unique(fold):
        test = fold == k
        threshold, _ = best_threshold(similarities[~test], same[~test])
        accuracies.append(float(np.mean((similarities[test] > threshold) == same[test])))
        thresholds.append(threshold)
    return accuracies, thresholds


def paired_accuracy_drop(reference: np.ndarray, other: np.ndarray, same: np.ndarray,
                         fold: np.ndarray) -> tuple[float, float]:
    """(drop, standard error): the accuracy `other` loses against `reference` on the same pairs (their similarities),
    both decided per fold by the threshold the reference chose on the other folds. (b - c) / n over the b pairs only
    the reference gets right and the c only `other` gets right; McNemar's standard error sqrt(b + c) / n.

    The reference's thresholds isolate what `other` changes: re-fitting its own would add the noise of a threshold
    chosen on a flat accuracy curve, and hide a shift of the similarity scale that a deployment keeping its
    threshold suffers."""
    _, thresholds = kfold_accuracy(reference, same, fold)
    per_pair = np.empty(len(same))
    for k, threshold in zip(np.unique(fold), thresholds):
        per_pair[fold == k] = threshold
    reference_right = (reference > per_pair) == same
    other_right = (other > per_pair) == same
    lost, gained = int(np.sum(reference_right & ~other_right)), int(np.sum(~reference_right & other_right))
    return (lost - gained) / len(same), float(np.sqrt(lost + gained)) / len(same)


def embed_paths(embedder: Embedder, paths: list[str], flip: bool = False, batch_size: int = 128,
                progress: bool = True) -> np.ndarray:
    """L2-normalized embeddings of image files (the mirrored crop's embedding added first if `flip`)."""
    size = embedder.preprocessing.get("size", 112)
    out = None
    for start in tqdm(range(0, len(paths), batch_size), desc=f"embedding {embedder.name}", unit="batch",
                      disable=not progress, leave=False):
        images = np.stack([to_face_size(load_rgb(p), p, size) for p in paths[start:start + batch_size]])
        embeddings = embedder.embed(images)
        if flip:
            embeddings = embeddings + embedder.embed(np.ascontiguousarray(images[:, :, ::-1]))
        if out is None:
            out = np.empty((len(paths), embeddings.shape[1]), np.float32)
        out[start:start + len(images)] = embeddings
    return l2_normalize(out)


def verify_pairs(embedder: Embedder, pairs: PairSet, flip: bool = False, batch_size: int = 128,
                 progress: bool = True) -> VerificationResult:
    """Verification accuracy (10-fold, insightface protocol) and TAR@FAR of `embedder` on `pairs`.

    Each distinct image is embedded once however many pairs use it.
    """
    paths = pairs.unique_paths()
    row = {path: i for i, path in enumerate(paths)}
    embeddings = embed_paths(embedder, paths, flip, batch_size, progress)
    left = embeddings[[row[p] for p in pairs.left]]
    right = embeddings[[row[p] for p in pairs.right]]
    similarities = np.sum(left * right, axis=1)
    accuracies, thresholds = kfold_accuracy(similarities, pairs.same, pairs.fold)
    return VerificationResult(accuracy=float(np.mean(accuracies)), accuracy_std=float(np.std(accuracies)),
                              fold_accuracies=accuracies, threshold=float(np.mean(thresholds)),
                              tar_at_far=tar_at_far(similarities, pairs.same), n_pairs=len(pairs),
                              model=embedder.name, pairs=pairs.name, flip=flip, similarities=similarities)
