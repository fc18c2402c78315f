"""Training images: loading data sets by name, and the order in which batches are drawn.

Images live in memory as uint8 tensors [N, C, H, W] and are scaled to [-1, 1] only per batch.
The batch order is a pure function of (seed, step): epoch e visits the images in the
permutation drawn from seed and e. That makes resuming at any step exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from ..errors import InputError


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

    def subset(self, indices: Tensor, progress: bool = False) -> "ImageData":
        return ImageData(self.name, self.images[indices], None if self.labels is None else self.labels[indices])

    def cropped(self, size: Optional[int]) -> "ImageData":
        """Center-crop to size x size; None keeps the images whole."""
        if size is None:
            return self
        if size > min(self.images.shape[-2:]):
            raise InputError(f"data.crop {size} is larger than the {self.name} images ({self.image_size} px)")
        from torchvision.transforms.v2 import functional as TF

        return ImageData(self.name, TF.center_crop(self.images, [size, size]), self.labels)

    def with_channels(self, channels: Optional[int]) -> "ImageData":
        """Grayscale (1) or RGB (3), converting when the data differs; None keeps its own."""
        if channels is None or channels == self.channels:
            return self
        if channels == 3:
            return ImageData(self.name, self.images.expand(-1, 3, -1, -1).contiguous(), self.labels)
        from torchvision.transforms.v2 import functional as TF

        return ImageData(self.name, TF.rgb_to_grayscale(self.images), self.labels)

    def resized(self, size: Optional[int]) -> "ImageData":
        """Resize (antialiased bilinear) to size x size once, up front; None keeps the size."""
        if size is None or (self.images.shape[-2] == size and self.images.shape[-1] == size):
            return self
        from torchvision.transforms.v2 import (
            functional as TF,  # imported here: it takes a second
        )

        images = TF.resize(self.images, [size, size], antialias=True)
        return ImageData(self.name, images, self.labels)


def fixed_subset(size: int, n: int) -> Tensor:
    """Indices of n images of a data set of `size`: the first n of one fixed random order (seed 0),
    so that every measure (FID's reference, the latent scale, reconstructions) takes the same ones."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:n]


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the diffusion process assumes."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def open_image(path, what: str = "image"):
    """An image file, decoded: a PIL image. Anything that is not a readable image is one line naming
    the file, and so is a decompression bomb: Pillow refuses images of more than twice its
    MAX_IMAGE_PIXELS (89.5 M) outright and only warns above it, which this makes an error too, so that
    a small file cannot make ddpm decode gigabytes."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except Exception as error:  # missing, unreadable, not an image, a bomb
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot read {what} {path}: {reason}; remove or replace it") from None


def to_pil(image: Tensor):
    """One uint8 image [C, H, W] as a PIL image, grayscale (L) or RGB."""
    from PIL import Image

    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


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


def iterate_batches(data, batch_size: int, seed: int, start_step: int, device: torch.device,
                    workers: int = 2) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
    """(uint8 images, labels or None) on `device` for steps start_step, start_step + 1, ...

    A data set held in memory (ImageData, or a latent run's encoded latents: anything but a torch
    Dataset) moves to the device once and is indexed there. A streamed data set
    (datasets.ImageFiles) is decoded by DataLoader workers, in the same order, into pinned memory
    on CUDA.
    """
    order = batch_indices(len(data), batch_size, seed, start_step)
    if not isinstance(data, torch.utils.data.Dataset):
        images = data.images.to(device)
        labels = None if data.labels is None else data.labels.to(device)
        for indices in order:
            indices = indices.to(device)
            yield images[indices], None if labels is None else labels[indices]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(data, batch_sampler=_BatchOrder(order), num_workers=workers, pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), None if data.labels is None else labels.to(device, non_blocking=True)


class _BatchOrder:
    """batch_indices as a DataLoader batch_sampler: lists of indices, one per step."""

    def __init__(self, order: Iterator[Tensor]):
        self.order = order

    def __iter__(self):
        return (indices.tolist() for indices in self.order)
