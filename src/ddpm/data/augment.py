"""Non-leaking augmentation for small data sets (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", App. F.2; the idea is Karras et al. 2020's ADA).

Each training image is, with its own probability per kind, mirrored, shifted by whole pixels
(wrapping around) and rotated by a multiple of 90 degrees, before it is noised. The network is told
what was done (`augment_labels`, zero for an untouched image) through an embedding of its own, so
it learns the augmented images as what they are and never needs to produce them: sampling passes no
label, which is the zero label, and draws the data's own distribution. Every transform is a bijection
on the pixels, so nothing of an image is lost.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config.schema import AUGMENT_LABEL_DIM as AUGMENT_DIM  # noqa: F401  (the label's width, declared with the settings)
MAX_SHIFT = 0.125  # the largest shift, as a fraction of the image's size (EDM's translate range)


def draw_augmentations(n: int, size: int, xflip: float, translate: float, rotate90: float,
                       generator: torch.Generator, device) -> Tensor:
    """What is done to each of n images of size x size: [n, 4] integers (mirrored 0/1, shift x, shift y,
    quarter turns), each kind with its own probability, from `generator` (every rank draws the same)."""
    chance = torch.rand(n, 3, device=device, generator=generator) < torch.tensor([xflip, translate, rotate90],
                                                                               device=device)
    most = max(1, int(size * MAX_SHIFT))
    shifts = torch.randint(-most, most + 1, (n, 2), device=device, generator=generator)
    turns = torch.randint(1, 4, (n,), device=device, generator=generator)
    return torch.stack([chance[:, 0].long(), shifts[:, 0] * chance[:, 1], shifts[:, 1] * chance[:, 1],
                        turns * chance[:, 2]], dim=1)


def augment_images(x: Tensor, done: Tensor) -> Tensor:
    """x [n, c, h, w] with `done` (draw_augmentations) applied: mirror, then shift, then turn."""
    x = torch.where(done[:, 0].bool()[:, None, None, None], x.flip(-1), x)
    x = torch.stack([image.roll((int(dy), int(dx)), dims=(-2, -1)) for image, dx, dy in
                     zip(x, done[:, 1].tolist(), done[:, 2].tolist())]) if done[:, 1:3].any() else x
    if done[:, 3].any():
        turned = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        x = torch.stack([turned[int(k)][i] for i, k in enumerate(done[:, 3].tolist())])
    return x


def augment_labels(done: Tensor, size: int) -> Tensor:
    """The network's augmentation label [n, AUGMENT_DIM]: zero for an untouched image."""
    angle = done[:, 3].double() * (math.pi / 2)
    return torch.stack([done[:, 0].double(), done[:, 1].double() / size, done[:, 2].double() / size,
                        1 - angle.cos(), angle.sin()], dim=1).float()
