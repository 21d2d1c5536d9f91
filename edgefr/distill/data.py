"""The training side of distillation: which images train, which validate, and the augmented training view.

Validation never touches the test sets: a fraction of each training identity's images is held out, and
verification pairs (same identity / different identities) are drawn from those held-out images only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from edgefr.data.pairs import PairSet
from edgefr.errors import EdgefrError

# Fewer images than this and an identity stays wholly in training: holding some out would leave it unlearnable.
MIN_IMAGES_TO_HOLD_OUT = 4


@dataclass(frozen=True)
class Split:
    """Dataset indices for training and validation, and each training identity's contiguous class id."""

    train: np.ndarray
    val: np.ndarray
    class_of_label: dict[int, int]  # dataset label -> 0..num_classes-1

    @property
    def num_classes(self) -> int:
        return len(self.class_of_label)


def dataset_labels(dataset) -> np.ndarray:
    return np.array([label for _, label in dataset.samples], dtype=np.int64)


def split_dataset(labels: np.ndarray, val_fraction: float, seed: int, max_images: int | None = None) -> Split:
    """Hold out `val_fraction` of each identity's images (at least 2, so positive pairs exist).

    `max_images` keeps whole identities, in label order, until that many images: a KD run on a subset still
    needs several images per identity for the margin loss and the validation pairs."""
    if not 0 <= val_fraction < 1:
        raise EdgefrError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val, kept = [], [], []
    total = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if max_images is not None and total + len(members) > max_images and kept:
            break
        kept.append(int(label))
        total += len(members)
        held = (max(2, round(val_fraction * len(members)))
                if val_fraction and len(members) >= MIN_IMAGES_TO_HOLD_OUT else 0)
        members = rng.permutation(members)
        val.extend(members[:held])
        train.extend(members[held:])
    if not train:
        raise EdgefrError("no training images left after the validation split; lower --val-fraction")
    return Split(np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64)),
                 {label: i for i, label in enumerate(kept)})


def validation_pairs(dataset, labels: np.ndarray, val: np.ndarray, seed: int, max_pairs: int = 3000,
                     folds: int = 10) -> PairSet | None:
    """Verification pairs from the held-out images, half same-identity, half different (None if too few),
    in `folds` folds so that they are scored with the same 10-fold protocol as LFW."""
    rng = np.random.default_rng(seed)
    positives = []
    for label in np.unique(labels[val]):
        members = val[labels[val] == label]
        positives.extend((a, b) for i, a in enumerate(members) for b in members[i + 1:])
    if len(positives) < folds or len(np.unique(labels[val])) < 2:
        return None
    positives = np.array(positives, dtype=np.int64)
    if len(positives) > max_pairs // 2:
        positives = positives[rng.choice(len(positives), max_pairs // 2, replace=False)]
    negatives = []
    while len(negatives) < len(positives):
        a, b = rng.choice(val, 2, replace=False)
        if labels[a] != labels[b]:
            negatives.append((a, b))
    pairs = np.concatenate([positives, np.array(negatives, dtype=np.int64)])
    same = np.arange(len(pairs)) < len(positives)
    path = [p for p, _ in dataset.samples]
    return PairSet([path[a] for a in pairs[:, 0]], [path[b] for b in pairs[:, 1]], same,
                   np.arange(len(pairs)) % folds, name="held-out training images")


def sample_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (CRC of their bytes): the same on every process and every run."""
    return zlib.crc32(np.array(parts, dtype=np.int64).tobytes())


class AugmentedView(Dataset):
    """The training images of one epoch: `augment` (crop/colour jitter, no mirror), then a mirror flip drawn here.

    Every random draw is seeded by (seed, epoch, dataset index), so an epoch's images do not depend on the order
    or the process that loads them: a resumed run and a DistributedDataParallel run see the same augmentations.
    The flip is drawn here so that the matching cached teacher view ("flip") is known; the crop and colour
    jitter are not in the cache, which makes cached teacher targets slightly approximate for augmented images
    (`online_teacher=True` embeds each augmented batch with the teacher instead).
    Items: (uint8 CHW image, class id, dataset index, flipped).
    """

    def __init__(self, dataset, indices: np.ndarray, class_of_label: dict[int, int], seed: int,
                 augment_factory=None, flip: bool = True):
        self.dataset = dataset
        self.indices = indices
        self.class_of_label = class_of_label
        self.seed = seed
        self.augment_factory = augment_factory
        self.flip = flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        image, label, index = self.dataset[int(self.indices[position])]
        draw = sample_seed(self.seed, self.epoch, index)
        if self.augment_factory is not None:
            image = self.augment_factory(draw)(image)
        flipped = self.flip and bool(np.random.default_rng(draw).random() < 0.5)
        if flipped:
            image = torch.flip(image, dims=[-1])
        return image, self.class_of_label[int(label)], index, flipped
