"""The latent space of latent diffusion (Rombach et al. 2022): an autoencoder behind one face.

A `Codec` turns images in [-1, 1] into latents of unit standard deviation and back:

    encode(x) = scale * mean of q(z | x)          decode(z) = decoder(z / scale)

with scale = 1 / std of the posterior means over the data set (Rombach et al.'s `scale_by_std`),
so the diffusion process, which assumes data of about unit variance, sees that. Two kinds of
autoencoder wear this face: an autoencoder run of `ddpm train-autoencoder` (models/autoencoder.py,
loaded by factory.load_codec), and a local diffusers `AutoencoderKL` folder (Stable Diffusion's
VAE, TAESD), through `diffusers_codec`; diffusers is optional.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..storage.atomic import file_sha256
from ..errors import InputError

DIFFUSERS = "diffusers:"


@dataclass
class Codec:
    """Images in [-1, 1] <-> scaled latents. `posterior(x)` gives the mean and standard deviation of
    q(z | x), unscaled; `decode_raw(z)` decodes an unscaled latent."""

    posterior: Callable[[Tensor], tuple[Tensor, Tensor]]
    decode_raw: Callable[[Tensor], Tensor]
    module: nn.Module
    scale: float
    sha256: str
    channels: int  # of the latents
    factor: int  # how many times smaller than the image each side is
    reference: str  # as the user named it: a run directory or diffusers:PATH

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The scaled posterior mean."""
        return self.posterior(x)[0] * self.scale

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> Tensor:
        """The scaled posterior mean and standard deviation, stacked: [B, 2, C, h, w]."""
        return torch.stack(self.posterior(x), 1) * self.scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.decode_raw(z / self.scale)

    def to(self, device) -> "Codec":
        self.module.to(device)
        return self

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.channels, image_size // self.factor, image_size // self.factor)


def autoencoder_codec(autoencoder, scale: float, sha256: str, z_channels: int, reference: str) -> Codec:
    """An autoencoder of models/autoencoder.py behind the codec's face."""

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = autoencoder.encode(x)
        return q.mean, q.std

    return Codec(posterior, autoencoder.decode, autoencoder, scale, sha256, z_channels, autoencoder.factor, reference)


def diffusers_codec(path: Path, reference: str) -> Codec:
    """A diffusers AutoencoderKL saved with save_pretrained (config.json and its weights), with the
    scaling factor of its own config."""
    # The folder is checked before diffusers is imported: a wrong path is named as such either way.
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a diffusers AutoencoderKL folder (no config.json); save one with "
                         f"AutoencoderKL.save_pretrained(PATH)")
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise InputError(f"{path} holds no weights (.safetensors or .bin)")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise InputError(f"{reference} needs the diffusers package: pip install 'ddpm-textbook[diffusers]'") from None
    vae = AutoencoderKL.from_pretrained(str(path))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = vae.encode(x).latent_dist
        return q.mean, q.std

    return Codec(posterior, lambda z: vae.decode(z).sample, vae,
                 float(vae.config.scaling_factor), file_sha256(*weights), vae.config.latent_channels, factor, reference)
