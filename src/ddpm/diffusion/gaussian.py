"""Gaussian data, where everything a diffusion model learns is known in closed form.

For data x0 ~ N(mu, diag(sigma_data^2)) and x_t = a x0 + s eps (a = sqrt(alpha_bar_t),
s = sqrt(1 - alpha_bar_t)), x_t is Gaussian too, with mean a mu and variance a^2 sigma_data^2 + s^2.
Three facts follow, and the tests and the book use each of them to check code without training:

- the optimal denoiser: E[eps | x_t] = s (x_t - a mu) / (a^2 sigma_data^2 + s^2), and
  E[x0 | x_t] = (x_t - s E[eps | x_t]) / a (Tweedie's formula for this case);
- the probability-flow ODE (Song et al. 2021b, eq. 13) moves every coordinate monotonically, so it
  keeps its standardised value: x_t's z = (x_t - a mu) / sqrt(a^2 sigma_data^2 + s^2) is the same at
  every t, and the ODE's exact end point from x_T is mu + sigma_data z (`ode_endpoint`);
- the right sampler turns N(0, I) into samples of mean mu and standard deviation sigma_data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .objectives import Prediction
from .schedules import NoiseSchedule

__all__ = ["GaussianDenoiser", "ode_endpoint"]


class GaussianDenoiser:
    """The optimal denoiser of Gaussian data N(mu, diag(sigma^2)), called like a trained `Denoiser`:
    `denoiser(x_t, t)` returns the `Prediction` (eps, x0), at integer timesteps or between them
    (fractional t, as EDM's sampler asks)."""

    def __init__(self, schedule: NoiseSchedule, mu: Tensor | float, sigma: Tensor | float):
        self.schedule, self.mu, self.sigma = schedule, torch.as_tensor(mu), torch.as_tensor(sigma)

    def __call__(self, x_t: Tensor, t: Tensor) -> Prediction:
        a, s, _ = (level.to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1)) for level in self.schedule.levels(t))
        eps = s * (x_t - a * self.mu) / (a**2 * self.sigma**2 + s**2)
        return Prediction(eps=eps, x0=(x_t - s * eps) / a)


def ode_endpoint(schedule: NoiseSchedule, x_t: Tensor, t: int, mu: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Where the probability-flow ODE started at x_t (timestep t) ends at x_0, for Gaussian data."""
    alpha_bar = schedule.alpha_bar[t].item()
    spread = (alpha_bar * torch.as_tensor(sigma) ** 2 + 1 - alpha_bar).sqrt()
    return mu + sigma * (x_t - alpha_bar**0.5 * torch.as_tensor(mu)) / spread
