"""A latent run's training set: every image encoded once by the run's autoencoder, and cached.

Encoding is the slow part of a latent step, and a latent is a function of the image and the
autoencoder's weights alone, so the set is encoded once (both flips when the run flips) and kept
in the cache folder under the weights' hash and the images' hash. The latent scale (1 / std of the
posterior means, Rombach et al.'s `scale_by_std`) is measured here too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..storage.atomic import atomic_write
from .folders import cache_dir
from ..errors import InputError
from ..models.codec import Codec
from .imagedata import ImageData, fixed_subset, to_model_range

SCALE_IMAGES = 5000  # the scale is measured on at most this many images (a fixed random subset)


@torch.no_grad()
def latent_std(encode_mean: Callable[[Tensor], Tensor], data: ImageData, device: torch.device,
               batch_size: int = 128) -> float:
    """The standard deviation of the posterior means over (a fixed subset of at most SCALE_IMAGES
    images of) the data set: its reciprocal is the latent scale."""
    indices = fixed_subset(len(data), SCALE_IMAGES)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(indices), batch_size):
        x = to_model_range(data.images[indices[start:start + batch_size]].to(device))
        z = encode_mean(x).double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.square().sum().item(), count + z.numel()
    mean = total / count
    return max(total_sq / count - mean * mean, 1e-24) ** 0.5


@dataclass
class LatentData:
    """A training set encoded once: latents [N, V, C, h, w] (V = 2 when the run flips: the latents of
    each image and of its mirror image), or with `moments` [N, V, 2, C, h, w] (the posterior's mean
    and standard deviation, to draw a latent from), and the data set's labels."""

    name: str
    images: Tensor
    labels: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.images)


@torch.no_grad()
def encode_data(codec: Codec, data: ImageData, flip: bool, device: torch.device, progress: bool = True,
                batch_size: int = 128, moments: bool = False) -> LatentData:
    """The scaled latents of every image (and of its mirror image with `flip`), or with `moments` the
    mean and standard deviation of their posteriors, from the cache when this autoencoder has
    encoded these exact images before."""
    from safetensors.torch import load_file, save_file

    if not isinstance(data, ImageData):
        raise InputError(f"latent diffusion encodes the training set once and needs it in memory; {data.name} has "
                         f"{len(data)} images, more than fit; use a subset folder")
    key = hashlib.sha256(data.images.numpy().tobytes()).hexdigest()[:16]
    kind = ("flip" if flip else "plain") + ("-moments" if moments else "")
    cached = cache_dir() / "latents" / f"{codec.sha256[:16]}-{key}-{kind}.safetensors"
    if cached.is_file():
        return LatentData(data.name, load_file(cached)["latents"], data.labels)
    views = [False, True] if flip else [False]
    encode = codec.encode_moments if moments else codec.encode
    latents = []
    for start in tqdm(range(0, len(data), batch_size), desc="encoding the training set", unit="batch",
                      disable=not progress):
        x = to_model_range(data.images[start:start + batch_size].to(device))
        latents.append(torch.stack([encode(x.flip(-1) if mirrored else x).float().cpu() for mirrored in views], 1))
    latents = torch.cat(latents).contiguous()
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Under torchrun every rank encodes; each writes its own temporary file and the last rename wins, whole.
    atomic_write(cached, lambda tmp: save_file({"latents": latents}, str(tmp)))
    return LatentData(data.name, latents, data.labels)
