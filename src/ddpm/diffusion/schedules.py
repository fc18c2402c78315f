"""Noise schedules: the variances beta_t of the forward process and every quantity derived from them.

Timesteps are 0-based in code: index t here is step t + 1 of the papers, so `alpha_bar[0]` is the
papers' alpha_bar_1 and `alpha_bar_prev[0]` is alpha_bar_0 = 1.

Each timestep is also a noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise of the
variance-exploding view x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps of the same path (Karras et al.
2022, §2). A fractional timestep lies between two of the grid's, linearly in log sigma (as
k-diffusion's discrete schedules interpolate), so that samplers that choose their own noise levels
(EDM's) can ask any model.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..config.names import SCHEDULES, SPACINGS

MAX_BETA = 0.999  # Nichol & Dhariwal 2021 §3.2: clip beta so the last steps stay invertible


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020 §4: beta rises linearly from 1e-4 to 0.02 over T = 1000 steps.

    For other T the end points are scaled by 1000 / T, so that alpha_bar_T, the signal left at the
    last step, stays about the same (as in Nichol & Dhariwal's code).
    """
    scale = 1000 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021 eq. 17: alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    Returns alpha_bar at t = 0, 1, ..., T (T + 1 values, the first is 1).
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def betas_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """Nichol & Dhariwal 2021 §3.2: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at 0.999.

    `alpha_bar` holds T + 1 values, from alpha_bar_0 = 1 to alpha_bar_T."""
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


def cosine_betas(timesteps: int, s: float = 0.008) -> Tensor:
    """The betas of Nichol & Dhariwal's cosine alpha_bar (eq. 17)."""
    return betas_from_alpha_bar(cosine_alpha_bar(timesteps, s))


def sigmoid_betas(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Jabri et al. 2022 (RIN) §3.5: alpha_bar follows a sigmoid of t between `start` and `end`.

    alpha_bar(t) = (sigmoid(end / tau) - sigmoid((start + t (end - start)) / tau))
                   / (sigmoid(end / tau) - sigmoid(start / tau)),  t in [0, 1].
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    v = torch.sigmoid((start + t * (end - start)) / tau)
    return betas_from_alpha_bar((v_end - v) / (v_end - v_start))


def shift_log_snr(betas: Tensor, shift: float) -> Tensor:
    """The schedule whose log SNR is `shift` above that of `betas` at every step.

    Hoogeboom et al. 2023 (simple diffusion) shift the cosine schedule's log SNR by
    2 log(64 / d) for d x d images, so that a resolution sees as much of its signal destroyed as
    64 x 64 does under the plain cosine. A shift > 0 adds less noise, < 0 more; it is the same as
    scaling the data by exp(shift / 2) under the unshifted schedule (Chen 2023):
    alpha_bar' = sigmoid(logit(alpha_bar) + shift).
    """
    alpha_bar = torch.cumprod(1 - betas.to(torch.float64), dim=0)
    shifted = torch.sigmoid(torch.logit(alpha_bar) + shift)
    return betas_from_alpha_bar(torch.cat([shifted.new_ones(1), shifted]))


class NoiseSchedule:
    """beta_1..beta_T and the quantities that the forward process, losses and samplers read.

    All are float64 tensors of length T, computed once here. Index them with a batch of
    timesteps through `at(name, t, x)`, which also broadcasts to the shape of x.
    """

    def __init__(self, betas: Tensor):
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise InputError("a noise schedule needs a non-empty 1-D tensor of betas")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise InputError("every beta of a noise schedule must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)  # Ho et al. eq. 4
        self.alpha_bar_prev = torch.cat([betas.new_ones(1), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1 - self.alpha_bar).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(mean_coef_x0 x_0 + mean_coef_xt x_t, posterior_variance), Ho et al. eq. 6-7
        self.posterior_variance = betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        self.posterior_mean_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1 - self.alpha_bar)
        self.posterior_mean_coef_xt = (1 - self.alpha_bar_prev) * self.alphas.sqrt() / (1 - self.alpha_bar)
        # log SNR_t = log(alpha_bar / (1 - alpha_bar)) (Kingma et al. 2021), for plots and loss weights
        self.log_snr = self.alpha_bar.log() - (1 - self.alpha_bar).log()
        # the VE noise level sigma_t = sqrt((1 - alpha_bar) / alpha_bar) = exp(-log SNR / 2) (Karras et al. §2)
        self.sigma = self.sqrt_one_minus_alpha_bar / self.sqrt_alpha_bar

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """The same schedule with every tensor on `device` (indexing then needs no copies)."""
        moved = object.__new__(NoiseSchedule)
        moved.__dict__.update({name: value.to(device) for name, value in vars(self).items()})
        return moved

    def at(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Quantity `name` at timesteps t (shape [B]), shaped [B, 1, 1, ...] to broadcast against x."""
        values = getattr(self, name).to(t.device)[t]
        return values.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def levels(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(sqrt(alpha_bar), sqrt(1 - alpha_bar), sigma) at timesteps t [B], as float64 [B].

        Integer timesteps read the tables. Fractional ones (a float tensor) interpolate log sigma
        linearly between the two neighbouring timesteps, and alpha_bar = 1 / (1 + sigma^2) follows."""
        if not t.is_floating_point():
            index = t.to(self.betas.device)
            return self.sqrt_alpha_bar[index], self.sqrt_one_minus_alpha_bar[index], self.sigma[index]
        position = t.to(self.betas.device, torch.float64).clamp(0, self.timesteps - 1)
        low = position.floor().long().clamp(max=max(self.timesteps - 2, 0))
        high = (low + 1).clamp(max=self.timesteps - 1)
        weight = position - low
        log_sigma = self.sigma.log()
        sigma = torch.exp((1 - weight) * log_sigma[low] + weight * log_sigma[high])
        alpha = (1 + sigma**2).rsqrt()
        return alpha, sigma * alpha, sigma

    def timestep(self, sigma: Tensor) -> Tensor:
        """The fractional timestep whose noise level is `sigma` (float64), inverse of `levels`;
        clamped to [0, T - 1]."""
        log_sigma = self.sigma.log()
        wanted = sigma.to(self.betas.device, torch.float64).log().clamp(log_sigma[0], log_sigma[-1])
        high = torch.searchsorted(log_sigma, wanted).clamp(1, max(self.timesteps - 1, 1))
        low = high - 1
        span = (log_sigma[high] - log_sigma[low]).clamp(min=1e-300)
        return (low + (wanted - log_sigma[low]) / span).clamp(0, self.timesteps - 1)

    def respace(self, timesteps: Sequence[int]) -> "NoiseSchedule":
        """The schedule of the shorter chain that visits only `timesteps` (Nichol & Dhariwal §4).

        Its betas are chosen so that its alpha_bar equals ours at those steps:
        beta'_i = 1 - alpha_bar[s_i] / alpha_bar[s_{i-1}].
        """
        steps = sorted(set(int(t) for t in timesteps))
        if not steps or steps[0] < 0 or steps[-1] >= self.timesteps:
            raise InputError(f"timesteps to respace must lie in [0, {self.timesteps})")
        alpha_bar = self.alpha_bar[steps]
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        return NoiseSchedule(1 - alpha_bar / alpha_bar_prev)


def make_schedule(name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                  log_snr_shift: float = 0.0) -> NoiseSchedule:
    """The schedule called `name` ("linear", "cosine" or "sigmoid") with T = `timesteps`, its log
    SNR shifted by `log_snr_shift` (0: the schedule as its paper gives it)."""
    if name == "linear":
        betas = linear_betas(timesteps, beta_start, beta_end)
    elif name == "cosine":
        betas = cosine_betas(timesteps)
    elif name == "sigmoid":
        betas = sigmoid_betas(timesteps)
    else:
        raise InputError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if log_snr_shift:
        betas = shift_log_snr(betas, log_snr_shift)
    return NoiseSchedule(betas)


def spaced_timesteps(timesteps: int, steps: int, spacing: str = "uniform",
                     schedule: "NoiseSchedule | None" = None) -> list[int]:
    """`steps` of the T timesteps to visit when sampling, in sampling order (descending).

    - uniform: evenly over [0, T - 1], both ends included;
    - trailing: T - 1, T - 1 - T/K, ..., ending at T/K - 1 (Lin et al. 2024, Table 2), so the
      first step always starts from pure noise and the gaps are equal;
    - leading: (K - 1) c, ..., c, 0 with c = floor(T / K) (Song et al.'s selection, diffusers' default):
      the gaps are equal and the last step lands on t = 0, but the first starts below T - 1;
    - quadratic: t_i = (T - 1) (i / (K - 1))^2, dense near t = 0 where the image's details form
      (Song et al. 2021 use a quadratic selection for CIFAR-10);
    - logsnr: evenly in log SNR between the first and last timestep of `schedule`, the spacing Lu
      et al. 2022 (DPM-Solver, §3.3) recommend for solvers in lambda; each t is the nearest one.
    """
    if not 1 <= steps <= timesteps:
        raise InputError(f"sampling steps must be between 1 and T = {timesteps} (got {steps})")
    if spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps == 1:
        return [timesteps - 1]
    if spacing == "leading":
        return [(steps - 1 - i) * (timesteps // steps) for i in range(steps)]
    if spacing == "trailing":
        chosen = torch.round(timesteps - torch.arange(steps, dtype=torch.float64) * timesteps / steps).long() - 1
        return chosen.tolist()
    fraction = torch.linspace(0, 1, steps, dtype=torch.float64)
    if spacing == "logsnr":
        if schedule is None or schedule.timesteps != timesteps:
            raise InputError("logsnr spacing needs the noise schedule of the model")
        log_snr = schedule.log_snr.cpu()
        targets = log_snr[0] + fraction * (log_snr[-1] - log_snr[0])
        chosen = (log_snr[None, :] - targets[:, None]).abs().argmin(dim=1)
    else:
        if spacing == "quadratic":
            fraction = fraction**2
        chosen = (fraction * (timesteps - 1)).round().long()
    # Rounding can merge neighbours: push each step past the one before it, then back below the
    # one after it, so the K steps are distinct and run from 0 to T - 1.
    chosen[0] = 0
    for i in range(1, steps):
        chosen[i] = max(chosen[i], chosen[i - 1] + 1)
    chosen[-1] = timesteps - 1
    for i in range(steps - 2, -1, -1):
        chosen[i] = min(chosen[i], chosen[i + 1] - 1)
    return chosen.flip(0).tolist()
