"""ddpm's own networks as diffusers models, for the runs UNet2DModel cannot express exactly.

`ddpm export` writes a run's UNet as a UNet2DModel where the layouts agree key for key
(storage/diffusers_folders.py). Where they do not (one skip per level, a one-block neck, a time embedding
wider than the first level, GroupNorms of several sizes, a patch size), no UNet2DModel computes the
same function, so the folder holds ddpm's network itself, as a diffusers model:

    import ddpm                                           # its `ddpm.models` serves diffusers the classes
    pipeline = DDIMPipeline.from_pretrained(FOLDER)       # the run's network, exactly

A latent run exports as an LDMPipeline folder whose `vqvae` is ddpm's autoencoder (`DdpmAutoencoder`):
LDMPipeline divides the sampled latents by the autoencoder's `scaling_factor` and decodes them, as
ddpm's codec does. Each class's config.json holds the run's own config under `ddpm`, and its weights
are the network's state_dict (under `network.`), so the folder says exactly what it holds.

This module needs diffusers (`pip install 'ddpm-textbook[diffusers]'`); writing the folder does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..config import AutoencoderRun, Config
from .autoencoder import autoencoder_from_run
from ..registry import NETWORKS


@dataclass
class NetworkOutput(BaseOutput):
    """What UNet2DModel and the autoencoders return: `.sample`."""

    sample: torch.Tensor


class DdpmUNet(ModelMixin, ConfigMixin):
    """A ddpm run's network behind UNet2DModel's call: `unet(sample, timestep).sample`, and the
    `sample_size` and `in_channels` the pipelines read from its config."""

    @register_to_config
    def __init__(self, ddpm: Optional[dict] = None, sample_size: int = 32, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        config = Config.from_dict(ddpm or {})
        self.network = NETWORKS.get(config.model.network, "model.network").make(config)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        out = self.network(sample, t)
        return NetworkOutput(sample=out) if return_dict else (out,)


class DdpmAutoencoder(ModelMixin, ConfigMixin):
    """ddpm's autoencoder behind the face LDMPipeline decodes through: `decode(z).sample` and
    `config.scaling_factor` (the latents the UNet denoises are the posterior means times it)."""

    @register_to_config
    def __init__(self, ddpm: Optional[dict] = None, scaling_factor: float = 1.0, latent_channels: int = 4):
        super().__init__()
        self.network = autoencoder_from_run(AutoencoderRun.from_dict(ddpm or {}), discriminator=False)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        images = self.network.decode(z)
        return NetworkOutput(sample=images) if return_dict else (images,)
