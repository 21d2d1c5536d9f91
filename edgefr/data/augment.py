"""Training augmentation for aligned faces, in plain torch (torchvision is not available).

Kept mild on purpose: the crops are aligned to a landmark template, so large crops or rotations would
teach the student a geometry it never sees at test time.
"""

from __future__ import annotations

import torch

# ITU-R BT.601 luma weights, as used by the usual colour-jitter implementations.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class FaceAugment:
    """uint8 CHW RGB -> uint8 CHW RGB: horizontal flip, a few pixels of translation, colour jitter."""

    def __init__(self, flip_p: float = 0.5, max_shift: int = 4, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2, seed: int | None = None):
        self.flip_p = flip_p
        self.max_shift = max_shift
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.seed = seed
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._worker_id: int | None = None

    def _reseed_in_worker(self) -> None:
        # DataLoader workers receive copies of this object with identical generator state; without this
        # every worker would apply the same "random" augmentation. The worker seed is derived from the
        # loader's generator, so a seeded training run stays reproducible.
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id != self._worker_id:
            self._worker_id = info.id
            self.generator.manual_seed((info.seed + (self.seed or 0)) % 2**63)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _factor(self, strength: float) -> float:
        return self._uniform(1 - strength, 1 + strength) if strength > 0 else 1.0

    def _shift(self, image: torch.Tensor) -> torch.Tensor:
        # Pad by replicating the border, then crop back at a random offset: a translation of up to
        # max_shift pixels that keeps the 112x112 size and invents no black borders.
        s = self.max_shift
        padded = torch.nn.functional.pad(image.unsqueeze(0), (s, s, s, s), mode="replicate").squeeze(0)
        dx, dy = (int(torch.randint(0, 2 * s + 1, (), generator=self.generator)) for _ in range(2))
        return padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 3xHxW tensor, got {image.dtype} {tuple(image.shape)}")
        self._reseed_in_worker()
        if self._uniform(0, 1) < self.flip_p:
            image = image.flip(-1)
        if self.max_shift > 0:
            image = self._shift(image)
        brightness, contrast, saturation = (self._factor(s) for s in
                                            (self.brightness, self.contrast, self.saturation))
        if (brightness, contrast, saturation) == (1.0, 1.0, 1.0):
            return image.contiguous()
        x = image.float() * brightness
        grey = (x * _LUMA).sum(0, keepdim=True)
        x = (x - grey.mean()) * contrast + grey.mean()
        grey = (x * _LUMA).sum(0, keepdim=True)
        x = (x - grey) * saturation + grey
        return x.round_().clamp_(0, 255).to(torch.uint8)


def train_transform(seed: int | None = None, **options) -> FaceAugment:
    """The default training augmentation; `options` override FaceAugment's strengths (e.g. flip_p=0)."""
    return FaceAugment(seed=seed, **options)
