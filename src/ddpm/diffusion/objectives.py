"""What the network learns, and how its output becomes a denoised image.

Karras et al. 2022 (EDM, §5 and Table 1) write every way of training a denoiser as a
*preconditioning* of a raw network F. In the variance-exploding view of the forward process,
x~ = x_t / sqrt(alpha_bar) = x0 + sigma eps with sigma = sqrt((1 - alpha_bar) / alpha_bar):

    D(x~; sigma) = c_skip(sigma) x~ + c_out(sigma) F(c_in(sigma) x~; c_noise(sigma))      (EDM eq. 7)

F is trained to output F* = (x0 - c_skip x~) / c_out with unit weight, which is the loss
lambda(sigma) ||D - x0||^2 with lambda(sigma) = 1 / c_out(sigma)^2 (EDM eq. 8).

| objective | c_skip          | c_out                   | c_in                 | c_noise      | F learns          |
| --------- | --------------- | ----------------------- | -------------------- | ------------ | ----------------- |
| eps       | 1               | -sigma                  | 1 / sqrt(sigma^2+1)  | t            | eps (Ho et al.)   |
| x0        | 0               | 1                       | 1 / sqrt(sigma^2+1)  | t            | x0                |
| v         | 1 / (sigma^2+1) | -sigma / sqrt(sigma^2+1)| 1 / sqrt(sigma^2+1)  | t            | v = a eps - s x0  |
| edm       | sd^2/(sigma^2+sd^2) | sigma sd / sqrt(sigma^2+sd^2) | 1 / sqrt(sigma^2+sd^2) | ln(sigma)/4 | EDM's F      |

(sd = sigma_data.) For eps, x0 and v, c_in x~ = x_t: the network sees the VP image, and c_noise is
the timestep it was trained on; they convert their output exactly as Ho et al. and Salimans & Ho
write it (`prediction`), which the table's formula equals. EDM is trained on continuous noise
levels, ln(sigma) ~ N(P_mean, P_std^2), with sigma_data scaling its input and output to unit
variance; with sigma_data = 1 it is the v objective up to sign.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..registry import OBJECTIVES


class Prediction(NamedTuple):
    """The network's guess of the noise in x_t and of the clean image, always consistent:
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""

    eps: Tensor
    x0: Tensor


class Objective:
    """A preconditioning (EDM Table 1). alpha, s and sigma are the levels sqrt(alpha_bar),
    sqrt(1 - alpha_bar) and s / alpha, shaped to broadcast against the images."""

    name = ""
    continuous = False  # trained on continuous noise levels (`sample_sigma`), not the schedule's timesteps

    def c_skip(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_out(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_in(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + 1).rsqrt()

    def c_noise(self, sigma: Tensor, t: Tensor) -> Tensor:
        """What the network is told of the noise level: here the timestep it was trained on."""
        return t

    def network_input(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """c_in(sigma) x~, with x~ = x_t / alpha."""
        return self.c_in(sigma) * (x_t / alpha)

    def prediction(self, output: Tensor, x_t: Tensor, alpha: Tensor, s: Tensor, sigma: Tensor) -> Prediction:
        """D = c_skip x~ + c_out F (eq. 7), and the eps that makes (eps, D) consistent with x_t."""
        x0 = self.c_skip(sigma) * (x_t / alpha) + self.c_out(sigma) * output
        return Prediction(eps=(x_t - alpha * x0) / s, x0=x0)

    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, s: Tensor, sigma: Tensor) -> Tensor:
        """F* = (x0 - c_skip x~) / c_out, what the output should be for x~ = x0 + sigma noise."""
        return (x0 - self.c_skip(sigma) * (x0 + sigma * noise)) / self.c_out(sigma)

    def weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma): the weight of ||D - x0||^2 that the unit-weight loss on F amounts to (eq. 8)."""
        return self.c_out(sigma) ** -2

    def sample_sigma(self, n: int, generator: Optional[torch.Generator], device) -> Tensor:
        raise NotImplementedError(f"the {self.name} objective trains on the schedule's timesteps")


class _VP(Objective):
    """An objective of the variance-preserving process: the network sees x_t and the timestep."""

    def network_input(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return x_t  # = c_in x~, exactly, with c_in = 1 / sqrt(sigma^2 + 1) = alpha


class Eps(_VP):
    """The noise (Ho et al. 2020, eq. 11-12)."""

    name = "eps"

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return -sigma

    def prediction(self, output, x_t, alpha, s, sigma):
        return Prediction(eps=output, x0=(x_t - s * output) / alpha)

    def target(self, x0, noise, alpha, s, sigma):
        return noise


class X0(_VP):
    """The clean image."""

    name = "x0"

    def c_skip(self, sigma):
        return torch.zeros_like(sigma)

    def c_out(self, sigma):
        return torch.ones_like(sigma)

    def prediction(self, output, x_t, alpha, s, sigma):
        return Prediction(eps=(x_t - alpha * output) / s, x0=output)

    def target(self, x0, noise, alpha, s, sigma):
        return x0


class V(_VP):
    """The velocity v = alpha eps - s x0 (Salimans & Ho 2022, §4). alpha^2 + s^2 = 1, so
    x0 = alpha x_t - s v and eps = s x_t + alpha v."""

    name = "v"

    def c_skip(self, sigma):
        return 1 / (sigma**2 + 1)

    def c_out(self, sigma):
        return -sigma * (sigma**2 + 1).rsqrt()

    def prediction(self, output, x_t, alpha, s, sigma):
        return Prediction(eps=s * x_t + alpha * output, x0=alpha * x_t - s * output)

    def target(self, x0, noise, alpha, s, sigma):
        return alpha * noise - s * x0


class EDM(Objective):
    """Karras et al. 2022's preconditioning (Table 1, "ours"), log-normal noise levels and loss weight.

    c_in and c_out scale the network's input and output to unit variance whatever sigma, c_skip
    passes x~ through where that is the better guess (low noise), and the loss weight
    lambda = (sigma^2 + sd^2) / (sigma sd)^2 makes the effective weight on F one at every level."""

    name = "edm"
    continuous = True

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2):
        self.sigma_data = float(sigma_data)
        self.p_mean, self.p_std = p_mean, p_std

    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data * (sigma**2 + self.sigma_data**2).rsqrt()

    def c_in(self, sigma):
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma, t):
        return sigma.log() / 4

    def sample_sigma(self, n, generator, device):
        """ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1, training)."""
        normal = torch.randn(n, device=device, generator=generator, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * normal)


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, as the paper writes it."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def make_objective(objective: "str | Objective", options=None) -> Objective:
    """The objective called `objective` (ddpm.registry.OBJECTIVES), with `options`, or one already made."""
    if isinstance(objective, Objective):
        return objective
    return OBJECTIVES.get(objective).build(options)
