"""The forward process q(x_t | x_0), the training loss, and the denoiser every sampler calls.

What the network predicts is an objective (objectives.py): eps (Ho et al. 2020), x0, the velocity v
(Salimans & Ho 2022), or EDM's preconditioned output (Karras et al. 2022). Whatever it is,
`Denoiser` turns the network's output into the pair (eps, x0) that every sampler reads, and the
loss trains the output on the objective's target.

`Diffusion` holds one schedule and one objective together, with the loss configured once (as
EDM's loss objects are): `diffusion.loss(network, x0)` is Ho et al.'s Algorithm 1 for that
setting. The functions above it are the same mathematics, one formula each, for readers and tests.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..config.names import TIMESTEP_SAMPLING, element_loss
from .guidance import guided_output
from .objectives import Objective, Prediction, make_objective
from .schedules import NoiseSchedule
from .weighting import uncertainty_weighted

__all__ = ["Denoiser", "Diffusion", "Prediction", "q_posterior", "q_sample", "target", "to_prediction",
           "training_loss"]

def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. eq. 4)."""
    return schedule.at("sqrt_alpha_bar", t, x0) * x0 + schedule.at("sqrt_one_minus_alpha_bar", t, x0) * noise


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0)   (Ho et al. eq. 6-7)."""
    mean = schedule.at("posterior_mean_coef_x0", t, x_t) * x0 + schedule.at("posterior_mean_coef_xt", t, x_t) * x_t
    return mean, schedule.at("posterior_variance", t, x_t)


def levels(schedule: NoiseSchedule, t: Tensor, like: Tensor, sigmas: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha, s, sigma) = (sqrt(alpha_bar), sqrt(1 - alpha_bar), s / alpha) at timesteps t (integer or
    fractional), or with `sigmas` at the noise levels t themselves (a continuous objective's
    training draws), shaped and typed to broadcast against `like`."""
    if sigmas:
        sigma = t.to(like.device, torch.float64)
        alpha = (1 + sigma**2).rsqrt()
        found = alpha, sigma * alpha, sigma
    else:
        found = schedule.levels(t)
    shape = (-1, *([1] * (like.ndim - 1)))
    return tuple(value.to(like.device, like.dtype).reshape(shape) for value in found)


def target(objective: "str | Objective", schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What a network trained with `objective` should output for x_t = q_sample(x0, t, noise)."""
    objective = make_objective(objective)
    return objective.target(x0, noise, *levels(schedule, t, x0))


def to_prediction(objective: "str | Objective", schedule: NoiseSchedule, output: Tensor, x_t: Tensor,
                  t: Tensor) -> Prediction:
    """Turn a network output for `objective` into (eps, x0), inverting x_t = a x0 + s eps."""
    objective = make_objective(objective)
    return objective.prediction(output, x_t, *levels(schedule, t, x_t))


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
      (The edm objective draws the same sigmas without rounding.)
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


def min_snr_weight(objective: Objective, sigma: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 7-9): every objective's loss becomes
    min(SNR, gamma) ||x0 - x0_hat||^2, so the low-noise levels, whose SNR = 1 / sigma^2 is huge, stop
    dominating the gradient. The loss on the output is ||x0 - x0_hat||^2 / c_out^2, so its weight is
    min(SNR, gamma) c_out^2: min(SNR, gamma) / SNR for eps, / (SNR + 1) for v, itself for x0."""
    return (sigma**-2).clamp(max=gamma) * objective.c_out(sigma) ** 2


def training_loss(
    network: Callable[[Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    objective: "str | Objective" = "eps",
    loss: str = "mse",
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    min_snr_gamma: float | None = None,
    weighting: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The simple denoising loss (Ho et al. eq. 14, Algorithm 1) for any objective, on its target
    with unit weight (for EDM that is its lambda(sigma), eq. 8), optionally weighted per noise
    level by min-SNR-gamma (`min_snr_weight`) and by a learned `weighting` u(sigma) (weighting.py).

    t are timesteps drawn uniformly from {0, ..., T-1} (for a continuous objective, EDM's, they are
    noise levels sigma drawn log-normally) and the noise is N(0, I), both from `generator` so that
    a run can be replayed exactly; the training loop may pass them in instead (it draws them for
    the whole batch, then splits it across processes and micro-batches). A class-conditional
    network also gets `labels`.
    """
    objective = make_objective(objective)
    if t is None:
        t = (objective.sample_sigma(x0.shape[0], generator, x0.device) if objective.continuous
             else sample_timesteps(schedule, x0.shape[0], "uniform", generator, x0.device))
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha, s, sigma = levels(schedule, t, x0, sigmas=objective.continuous)
    x_t = alpha * x0 + s * noise  # q(x_t | x_0), Ho et al. eq. 4
    inputs, noise_label = objective.network_input(x_t, alpha, sigma), objective.c_noise(sigma.flatten(), t)
    output = network(inputs, noise_label) if labels is None else network(inputs, noise_label, labels)
    wanted = objective.target(x0, noise, alpha, s, sigma)
    per_image = element_loss(loss)(output.float(), wanted.float(), reduction="none").flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_image = per_image * min_snr_weight(objective, sigma.flatten().double(), min_snr_gamma)
    if weighting is not None:
        per_image = uncertainty_weighted(per_image, weighting(sigma.flatten()))
    return per_image.mean()


def clip(prediction: Prediction, x_t: Tensor, alpha: Tensor, s: Tensor) -> Prediction:
    """x0 clamped to the data range [-1, 1] (Ho et al. §3.3), eps recomputed from it so the pair stays
    consistent with x_t."""
    x0 = prediction.x0.clamp(-1, 1)
    return Prediction(eps=(x_t - alpha * x0) / s, x0=x0)


class Denoiser(nn.Module):
    """A trained network seen through its objective: denoiser(x_t, t) -> Prediction(eps, x0).

    Three pieces, each its own function: the network's output, guided towards `labels` when given
    (classifier-free guidance of weight `guidance`, guidance.py); that output seen through the
    objective (objectives.py); and, with `clip_denoised`, x0 clamped to [-1, 1] (`clip`). Timesteps
    may be fractional (a float tensor): they lie between the schedule's, linearly in log sigma.
    """

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, objective: "str | Objective" = "eps",
                 clip_denoised: bool = True, labels: Tensor | None = None, guidance: float = 1.0):
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.objective = make_objective(objective)
        self.clip_denoised = clip_denoised
        self.labels = labels
        self.guidance = guidance

    def conditioned(self, labels: Tensor, guidance: float = 1.0) -> "Denoiser":
        """The same denoiser, for a batch of these class labels with guidance weight `guidance`."""
        return Denoiser(self.network, self.schedule, self.objective, self.clip_denoised, labels, guidance)

    def forward(self, x_t: Tensor, t: Tensor) -> Prediction:
        alpha, s, sigma = levels(self.schedule, t, x_t)
        inputs = self.objective.network_input(x_t, alpha, sigma)
        noise_label = self.objective.c_noise(sigma.flatten(), t)
        if self.labels is None:
            output = self.network(inputs, noise_label)
        else:
            output = guided_output(self.network, inputs, noise_label, self.labels, self.guidance)
        prediction = self.objective.prediction(output, x_t, alpha, s, sigma)
        return clip(prediction, x_t, alpha, s) if self.clip_denoised else prediction


class Diffusion:
    """One forward process seen through one objective, with its training loss configured once.

        diffusion = Diffusion(make_schedule("cosine", 1000), objective="v")
        loss = diffusion.loss(network, x0)          # Ho et al. Algorithm 1, for any objective
        denoiser = diffusion.denoiser(network)      # what every sampler calls

    `objective` is a name of ddpm.registry.OBJECTIVES or an `Objective` (EDM(sigma_data=1.0)).
    `timestep_sampling` chooses the training timesteps (`sample_timesteps`; a continuous objective
    draws its own sigmas) and `min_snr_gamma` weights the loss (`min_snr_weight`); `loss` is "mse" or "l1".
    """

    def __init__(self, schedule: NoiseSchedule, objective: "str | Objective" = "eps", loss: str = "mse",
                 timestep_sampling: str = "uniform", min_snr_gamma: float | None = None):
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise InputError(f"unknown timestep sampling {timestep_sampling!r}; choose {' or '.join(TIMESTEP_SAMPLING)}")
        self.schedule = schedule
        self.objective = make_objective(objective)
        self.loss_type = loss
        element_loss(loss)
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

    def noise_levels(self, n: int, generator: Optional[torch.Generator] = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """A batch's training noise levels: timesteps, or for a continuous objective sigmas."""
        if self.objective.continuous:
            return self.objective.sample_sigma(n, generator, device)
        return sample_timesteps(self.schedule, n, self.timestep_sampling, generator, device)

    def loss(self, network: Callable[..., Tensor], x0: Tensor, labels: Tensor | None = None, *,
             t: Tensor | None = None, noise: Tensor | None = None, generator: torch.Generator | None = None,
             weighting: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The configured denoising loss of `network` on a batch x0; t and noise are drawn from
        `generator` unless given (the training loop draws them for the whole batch); with a learned
        `weighting` u(sigma), EDM2's uncertainty-weighted loss (weighting.py)."""
        if t is None:
            t = self.noise_levels(x0.shape[0], generator, x0.device)
        return training_loss(network, self.schedule, x0, self.objective, self.loss_type, generator, labels, t, noise,
                             self.min_snr_gamma, weighting)

    def denoiser(self, network: nn.Module, clip_denoised: bool = True) -> "Denoiser":
        return Denoiser(network, self.schedule, self.objective, clip_denoised)
