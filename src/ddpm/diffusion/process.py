"""The forward process q(x_t | x_0), the network's prediction targets, and the training loss.

The network can be trained to predict the noise eps (Ho et al. 2020), the clean image x0, or the
velocity v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, §4). Whatever it
predicts, `Denoiser` turns its output into the pair (eps, x0) that every sampler reads.

`Diffusion` holds one schedule and one prediction target together, with the loss configured once
(as EDM's loss objects are): `diffusion.loss(network, x0)` is Ho et al.'s Algorithm 1 for that
setting. The functions below it are the same mathematics, one formula each, for readers and tests.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..names import OBJECTIVES, TIMESTEP_SAMPLING
from .guidance import guided_output
from .schedules import NoiseSchedule


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. eq. 4)."""
    return schedule.at("sqrt_alpha_bar", t, x0) * x0 + schedule.at("sqrt_one_minus_alpha_bar", t, x0) * noise


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0)   (Ho et al. eq. 6-7)."""
    mean = schedule.at("posterior_mean_coef_x0", t, x_t) * x0 + schedule.at("posterior_mean_coef_xt", t, x_t) * x_t
    return mean, schedule.at("posterior_variance", t, x_t)


def target(objective: str, schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What a network trained with `objective` should output for x_t = q_sample(x0, t, noise)."""
    if objective == "eps":
        return noise
    if objective == "x0":
        return x0
    if objective == "v":  # Salimans & Ho 2022 §4: v = alpha_t eps - sigma_t x
        return schedule.at("sqrt_alpha_bar", t, x0) * noise - schedule.at("sqrt_one_minus_alpha_bar", t, x0) * x0
    raise InputError(f"unknown objective {objective!r}; choose eps, x0 or v")


class Prediction(NamedTuple):
    """The network's guess of the noise in x_t and of the clean image, always consistent:
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""

    eps: Tensor
    x0: Tensor


def to_prediction(objective: str, schedule: NoiseSchedule, output: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
    """Turn a network output for `objective` into (eps, x0), inverting x_t = a x0 + s eps."""
    a = schedule.at("sqrt_alpha_bar", t, x_t)
    s = schedule.at("sqrt_one_minus_alpha_bar", t, x_t)
    if objective == "eps":
        return Prediction(eps=output, x0=(x_t - s * output) / a)
    if objective == "x0":
        return Prediction(eps=(x_t - a * output) / s, x0=output)
    if objective == "v":  # a^2 + s^2 = 1, so x0 = a x_t - s v and eps = s x_t + a v
        return Prediction(eps=s * x_t + a * output, x0=a * x_t - s * output)
    raise InputError(f"unknown objective {objective!r}; choose eps, x0 or v")


EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # Karras et al. 2022, Table 1: ln(sigma) ~ N(P_mean, P_std^2) in training


def sample_timesteps(schedule: NoiseSchedule, n: int, distribution: str = "uniform", generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """Training timesteps for a batch of n images.

    - uniform: t ~ U{0, ..., T-1}, Ho et al. Algorithm 1;
    - stratified: the low-discrepancy sampler of Kingma et al. 2021 (VDM, §5.3): one u_0 ~ U[0, 1)
      per batch and u_i = (u_0 + i/n) mod 1, t_i = floor(T u_i). Each t_i is still uniform, so the
      loss's expectation is unchanged, but every batch covers the noise levels evenly, one draw in
      each of n equal strata, which lowers the variance of the batch's loss and gradient;
    - lognormal: EDM's noise levels (Karras et al. 2022, §5): the noise-to-signal ratio
      sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is drawn with ln(sigma) ~ N(-1.2, 1.2^2) and
      rounded to the nearest timestep, so training concentrates on the middle noise levels where
      an image's shape is decided, instead of spending a third of its steps on near-pure noise.
    """
    if distribution == "uniform":
        return torch.randint(0, schedule.timesteps, (n,), device=device, generator=generator)
    if distribution == "stratified":
        u0 = torch.rand((), device=device, generator=generator)
        u = (u0 + torch.arange(n, device=device) / n) % 1.0
        return (u * schedule.timesteps).long().clamp(max=schedule.timesteps - 1)  # rounding can reach T
    if distribution == "lognormal":
        log_sigma = -0.5 * schedule.log_snr.to(device)  # increasing in t
        boundaries = (log_sigma[1:] + log_sigma[:-1]) / 2
        drawn = EDM_P_MEAN + EDM_P_STD * torch.randn(n, device=device, generator=generator)
        return torch.searchsorted(boundaries, drawn.to(boundaries.dtype))
    raise InputError(f"unknown timestep sampling {distribution!r}; choose {' or '.join(TIMESTEP_SAMPLING)}")


def min_snr_weight(objective: str, schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 7-9): every objective's loss becomes
    min(SNR_t, gamma) ||x0 - x0_hat||^2, so the low-noise steps, whose SNR is huge, stop dominating
    the gradient. ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2."""
    snr = schedule.log_snr.to(t.device)[t].exp()
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "x0":
        return clipped
    if objective == "v":
        return clipped / (snr + 1)
    raise InputError(f"unknown objective {objective!r}; choose eps, x0 or v")


def training_loss(
    network: Callable[[Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    objective: str = "eps",
    loss: str = "mse",
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """The simple denoising loss (Ho et al. eq. 14, Algorithm 1), for any prediction target,
    optionally weighted per timestep by min-SNR-gamma (`min_snr_weight`).

    t is drawn uniformly from {0, ..., T-1} and the noise from N(0, I), both from `generator`
    so that a run can be replayed exactly; the training loop may pass them in instead (it draws
    them for the whole batch, then splits it across processes and micro-batches). A
    class-conditional network also gets `labels`.
    """
    if t is None:
        t = sample_timesteps(schedule, x0.shape[0], "uniform", generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    output = network(x_t, t) if labels is None else network(x_t, t, labels)
    wanted = target(objective, schedule, x0, noise, t)
    if loss == "mse":
        per_image = F.mse_loss(output.float(), wanted.float(), reduction="none")
    elif loss == "l1":
        per_image = F.l1_loss(output.float(), wanted.float(), reduction="none")
    else:
        raise InputError(f"unknown loss {loss!r}; choose mse or l1")
    per_image = per_image.flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_image = per_image * min_snr_weight(objective, schedule, t, min_snr_gamma)
    return per_image.mean()


class Denoiser(nn.Module):
    """A trained network seen through its objective: denoiser(x_t, t) -> Prediction(eps, x0).

    With `clip_denoised`, x0 is clamped to the data range [-1, 1] (Ho et al. §3.3) and eps is
    recomputed from the clamped x0, so the pair stays consistent with x_t.

    A class-conditional network is asked for `labels` (one per image of the batch), mixed with
    its unconditional prediction by classifier-free guidance of weight `guidance`; see
    `conditioned` and guidance.py.
    """

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, objective: str = "eps", clip_denoised: bool = True,
                 labels: Tensor | None = None, guidance: float = 1.0):
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.objective = objective
        self.clip_denoised = clip_denoised
        self.labels = labels
        self.guidance = guidance

    def conditioned(self, labels: Tensor, guidance: float = 1.0) -> "Denoiser":
        """The same denoiser, for a batch of these class labels with guidance weight `guidance`."""
        return Denoiser(self.network, self.schedule, self.objective, self.clip_denoised, labels, guidance)

    def forward(self, x_t: Tensor, t: Tensor) -> Prediction:
        if self.labels is None:
            output = self.network(x_t, t)
        else:
            output = guided_output(self.network, x_t, t, self.labels, self.guidance)
        prediction = to_prediction(self.objective, self.schedule, output, x_t, t)
        if not self.clip_denoised:
            return prediction
        return to_prediction("x0", self.schedule, prediction.x0.clamp(-1, 1), x_t, t)


class Diffusion:
    """One forward process seen through one prediction target, with its training loss configured once.

        diffusion = Diffusion(make_schedule("cosine", 1000), objective="v")
        loss = diffusion.loss(network, x0)          # Ho et al. Algorithm 1, for any target
        denoiser = diffusion.denoiser(network)      # what every sampler calls

    `timestep_sampling` chooses the training timesteps (`sample_timesteps`) and `min_snr_gamma`
    weights the loss per timestep (`min_snr_weight`); `loss` is "mse" or "l1".
    """

    def __init__(self, schedule: NoiseSchedule, objective: str = "eps", loss: str = "mse",
                 timestep_sampling: str = "uniform", min_snr_gamma: float | None = None):
        if objective not in OBJECTIVES:
            raise InputError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise InputError(f"unknown timestep sampling {timestep_sampling!r}; choose {' or '.join(TIMESTEP_SAMPLING)}")
        self.schedule = schedule
        self.objective = objective
        self.loss_type = loss
        self.timestep_sampling = timestep_sampling
        self.min_snr_gamma = min_snr_gamma

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def to(self, device: torch.device | str) -> "Diffusion":
        """The same process with its schedule's tensors on `device`."""
        return Diffusion(self.schedule.to(device), self.objective, self.loss_type, self.timestep_sampling,
                         self.min_snr_gamma)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return q_sample(self.schedule, x0, t, noise)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return target(self.objective, self.schedule, x0, noise, t)

    def prediction(self, output: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        return to_prediction(self.objective, self.schedule, output, x_t, t)

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> Tensor:
        return sample_timesteps(self.schedule, n, self.timestep_sampling, generator, device)

    def loss(self, network: Callable[..., Tensor], x0: Tensor, labels: Tensor | None = None, *,
             t: Tensor | None = None, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The configured denoising loss of `network` on a batch x0; t and noise are drawn from
        `generator` unless given (the training loop draws them for the whole batch)."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, x0.device)
        return training_loss(network, self.schedule, x0, self.objective, self.loss_type, generator, labels, t, noise,
                             self.min_snr_gamma)

    def denoiser(self, network: nn.Module, clip_denoised: bool = True) -> "Denoiser":
        return Denoiser(network, self.schedule, self.objective, clip_denoised)
