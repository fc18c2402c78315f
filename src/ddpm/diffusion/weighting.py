"""The learned loss weighting of EDM2 (Karras et al. 2024, section 5, eq. 21).

A denoising loss mixes noise levels whose errors differ by orders of magnitude: near sigma = 0 the
best denoiser is almost the identity, at large sigma it can only guess the mean. A fixed weighting
lambda(sigma) (EDM's eq. 8, or min-SNR) balances them by hand. EDM2 instead learns the balance: a
small network u(sigma) estimates the log of the expected loss at each level (its "uncertainty"),
and the training loss becomes

    L = E_sigma [ lambda(sigma) / exp(u(sigma)) * L(D; sigma) + u(sigma) ],

whose minimum over u, for each sigma, is exp(u) = lambda(sigma) * E[L(D; sigma)]: every level's
weighted loss is then 1, so each contributes the same gradient magnitude however hard it is (their
Fig. 5b). u only trains; sampling never reads it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models.mp_unet import MPConv


class LossWeighting(nn.Module):
    """u(sigma): random Fourier features of ln(sigma) / 4 (EDM2's c_noise), cosine and sine at fixed
    frequencies, then one magnitude-preserving linear layer to a scalar (EDM2's logvar head)."""

    def __init__(self, channels: int = 128, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", 2 * math.pi * torch.randn(channels, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=generator))
        self.linear = MPConv(channels, 1, kernel=0)

    def forward(self, sigma: Tensor) -> Tensor:
        """u at each noise level: sigma of shape (n,) -> (n,)."""
        c_noise = sigma.float().log() / 4
        features = torch.cos(c_noise[:, None] * self.frequencies[None, :] + self.phases[None, :]) * math.sqrt(2)
        return self.linear(features).squeeze(1)

    def normalize_weights(self) -> None:
        self.linear.normalize_weights()


def uncertainty_weighted(per_image: Tensor, u: Tensor) -> Tensor:
    """Each image's weighted loss divided by exp(u) of its noise level, plus u (eq. 21's integrand)."""
    return per_image / u.exp() + u
