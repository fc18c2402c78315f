"""How well an autoencoder reconstructs its data: PSNR, and rFID (FID of reconstructions against
the data set), the measures Rombach et al. report for their first-stage models."""

from __future__ import annotations


import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.imagedata import ImageData, fixed_subset, to_model_range, to_uint8
from ..models.codec import Codec


@torch.no_grad()
def reconstruct(codec: Codec, data: ImageData, n: int, device: torch.device, batch_size: int = 64,
                progress: bool = True) -> tuple[Tensor, Tensor]:
    """(originals, reconstructions), uint8 [n, C, H, W]: a fixed random n of the data set (seed 0),
    each encoded to its posterior mean and decoded."""
    indices = fixed_subset(len(data), n)
    originals = data.images[indices]
    rebuilt = []
    for start in tqdm(range(0, len(originals), batch_size), desc="reconstructing", unit="batch", disable=not progress):
        x = to_model_range(originals[start:start + batch_size].to(device))
        rebuilt.append(to_uint8(codec.decode(codec.encode(x)).cpu()))
    return originals, torch.cat(rebuilt)


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images, per image, averaged: 10 log10(255^2 / MSE)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0 ** 2 / mse)).mean())


__all__ = ["reconstruct", "psnr"]
