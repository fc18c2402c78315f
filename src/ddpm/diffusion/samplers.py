"""Samplers: from pure noise x_T to an image, by running the reverse process.

Every sampler is a plain function with one signature:

    sample_NAME(denoiser, x, schedule, timesteps, *, generator=None, callback=None, progress=False) -> x_0

- denoiser(x_t, t) returns a `Prediction` (eps, x0) for a batch of timesteps t;
- x is the starting noise x_T, shape [B, C, H, W];
- timesteps are the steps to visit, in sampling order (descending), e.g. [999, 979, ..., 0];
- generator draws any fresh noise, so a seed fixes the result;
- callback(i, t, x_t, prediction) is called at every step (pictures of the trajectory use it).

A sampler may add keyword-only options of its own, with defaults (DDIM's `eta`), so that any
caller that uses only the shared part can call any sampler. Each sampler's spec (its name, its
options as a dataclass, how many network evaluations K steps take, whether it draws noise) is in
ddpm.registry.SAMPLERS: adding a sampler is its function and one `SAMPLERS.register` call.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import InputError
from ..registry import SAMPLERS, DDIMOptions, DDPMOptions, owners
from ..registry import EDMSamplerOptions as EDM
from .process import Prediction, q_posterior
from .schedules import NoiseSchedule

PredictFn = Callable[[Tensor, Tensor], Prediction]  # a process.Denoiser, or any callable like it
Callback = Callable[[int, int, Tensor, Prediction], None]


@torch.no_grad()
def sample_ddpm(
    denoiser: PredictFn,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    variance: str = DDPMOptions.variance,  # every option's default is its spec's (ddpm.registry)
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling, Ho et al. 2020 Algorithm 2.

    x_{t-1} ~ N(mu~_t(x_t, x0_hat), sigma_t^2 I): the mean of q(x_{t-1} | x_t, x0) (eq. 7) with x0
    replaced by the network's estimate, and one of the two fixed variances of §3.2:
    - "small": sigma_t^2 = beta~_t, the posterior's own (eq. 7), exact when the data is one point;
    - "large": sigma_t^2 = beta_t, exact when x0 ~ N(0, I). Ho et al.'s CIFAR-10 model sampled with it.
    On a subsequence of timesteps the same update runs on the respaced chain, whose betas join the
    visited steps (`NoiseSchedule.respace`).
    """
    DDPMOptions.build({"variance": variance})  # checked as the registry's spec checks it
    timesteps = check_timesteps(timesteps, schedule)
    chain = schedule.respace(timesteps)  # chain step i <-> original timestep ascending[i]
    for i, t in enumerate(_progress(timesteps, progress, "ddpm")):
        k = len(timesteps) - 1 - i  # index of t in the ascending chain
        prediction = denoiser(x, timestep_batch(t, x))
        mean, posterior_variance = q_posterior(chain, prediction.x0, x, timestep_batch(k, x))
        if k > 0:  # Algorithm 2 line 3: no noise at the last step
            sigma_squared = posterior_variance if variance == "small" else chain.at("betas", timestep_batch(k, x), x)
            x = mean + sigma_squared.sqrt() * noise_like(x, generator)
        else:
            x = mean
        if callback is not None:
            callback(i, t, x, prediction)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: PredictFn,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    eta: float = DDIMOptions.eta,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """DDIM, Song et al. 2021 eq. 12, over any subsequence of timesteps.

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_prev)  (eq. 16).
    eta = 0 is deterministic; eta = 1 over all T steps is DDPM's ancestral sampler.
    """
    DDIMOptions.build({"eta": eta})
    timesteps = check_timesteps(timesteps, schedule)
    alpha_bar = schedule.alpha_bar.tolist()
    for i, t in enumerate(_progress(timesteps, progress, "ddim")):
        a_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0  # the final step lands on x_0
        prediction = denoiser(x, timestep_batch(t, x))
        x = ddim_step(prediction, x, alpha_bar[t], a_prev, eta, generator)
        if callback is not None:
            callback(i, t, x, prediction)
    return x


def ddim_step(prediction: Prediction, x: Tensor, alpha_bar_t: float, alpha_bar_prev: float, eta: float = 0.0,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """One DDIM update from the level alpha_bar_t to alpha_bar_prev (Song et al. eq. 12 and 16)."""
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))
    x = (math.sqrt(alpha_bar_prev) * prediction.x0
         + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * prediction.eps)
    return x + sigma * noise_like(x, generator) if sigma > 0 else x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: PredictFn,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: multistep, second order, data prediction.

    In lambda = log(alpha / sigma) (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)), with
    h_i = lambda_i - lambda_{i-1} and r_i = h_{i-1} / h_i:
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i
    The first step uses D = x0_{i-1} (first order, that is DDIM). So does the step onto the last
    timestep when it jumps in lambda (r < 1/2, where the extrapolation's weight 1 / (2 r) would
    outweigh the prediction it corrects): a grid uniform in t that ends at t = 0 jumps there, and a
    second-order step overshoots (Lu et al.'s reference code also ends in lower order). A grid even
    in lambda (r = 1) keeps second order to the end. The last step, onto sigma = 0, returns the
    data prediction itself. One network evaluation per timestep.
    """
    timesteps = check_timesteps(timesteps, schedule)
    alpha_bar = schedule.alpha_bar.tolist()
    previous_x0, previous_h = None, None
    for i, t in enumerate(_progress(timesteps, progress, "dpm++2m")):
        prediction = denoiser(x, timestep_batch(t, x))
        if i + 1 == len(timesteps):
            x = prediction.x0
        else:
            decay, weight, h = _exponential_step(alpha_bar[t], alpha_bar[timesteps[i + 1]])
            data = prediction.x0
            r = previous_h / h if previous_x0 is not None else None
            if r is not None and (i + 2 < len(timesteps) or r >= 0.5):  # see above: the final step
                data = (1 + 1 / (2 * r)) * prediction.x0 - (1 / (2 * r)) * previous_x0
            x = decay * x + weight * data
            previous_x0, previous_h = prediction.x0, h
        if callback is not None:
            callback(i, t, x, prediction)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: PredictFn,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1),
    adapted to the discrete VP schedule.

    Algorithm 1 takes an Euler step, evaluates the model at its end, and redoes the step with the
    two slopes averaged (the trapezoidal rule). Which time variable the ODE is written in decides
    how well that works. EDM writes it in sigma = sqrt((1 - alpha_bar) / alpha_bar); a VP model's
    top timestep has sigma ~ 1e4 there, and even EDM's own 10-step schedule on sigma <= 80 misses
    the spread of Gaussian data by 18-25 %. Here the time is the angle phi of the VP path
    (Salimans & Ho 2022, §4),

        x_t = cos(phi) x0 + sin(phi) eps,   phi = atan(sqrt((1 - alpha_bar_t) / alpha_bar_t)),

    whose velocity dx/dphi = cos(phi) eps - sin(phi) x0 is v. The probability-flow ODE is then
    dx/dphi = v_hat(x, phi) = cos(phi) eps_hat - sin(phi) x0_hat, a bounded, smooth slope over
    phi in [0, pi/2], and each step is

        x_euler = x + (phi_next - phi) v_hat(x, phi)
        x_next  = x + (phi_next - phi) (v_hat(x, phi) + v_hat(x_euler, phi_next)) / 2.

    The last step, onto phi = 0, returns the data prediction. 2K - 1 network evaluations for K
    timesteps.
    """
    timesteps = check_timesteps(timesteps, schedule)
    alpha_bar = schedule.alpha_bar.tolist()
    angle = [_angle(alpha_bar[t]) for t in timesteps]
    for i, t in enumerate(_progress(timesteps, progress, "heun")):
        prediction = denoiser(x, timestep_batch(t, x))
        if i + 1 == len(timesteps):
            x = prediction.x0
        else:
            t_next, step = timesteps[i + 1], angle[i + 1] - angle[i]
            slope = _velocity(prediction, alpha_bar[t])
            x_euler = x + step * slope  # predictor: Euler
            corrected = _velocity(denoiser(x_euler, timestep_batch(t_next, x)), alpha_bar[t_next])
            x = x + step * (slope + corrected) / 2  # corrector: the trapezoidal rule
        if callback is not None:
            callback(i, t, x, prediction)
    return x


@torch.no_grad()
def sample_edm(
    denoiser: PredictFn,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    rho: float = EDM.rho, sigma_min: float = EDM.sigma_min, sigma_max: float = EDM.sigma_max,  # the levels (eq. 5)
    churn: float = EDM.churn, s_tmin: float = EDM.s_tmin, s_tmax: float = EDM.s_tmax,  # Algorithm 2's S_*
    s_noise: float = EDM.s_noise,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """EDM's sampler, Karras et al. 2022 Algorithm 2 (Algorithm 1 when churn = 0), on any model.

    It integrates the probability-flow ODE in the variance-exploding view x~ = x_t / sqrt(alpha_bar),
    dx~/dsigma = (x~ - D(x~; sigma)) / sigma (eq. 3-4), with Heun's method over its own K = len(timesteps)
    noise levels, evenly spaced in sigma^(1/rho) (eq. 5), then sigma_K = 0:

        sigma_i = (sigma_max^(1/rho) + i / (K - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    The levels lie between those of the first and last timestep given, within [sigma_min,
    sigma_max]; for a model of the discrete VP schedule the denoiser is asked at fractional
    timesteps (schedules.NoiseSchedule.levels). With churn > 0, each step first adds noise to go
    from sigma_i up to sigma^_i = (1 + gamma) sigma_i, gamma = min(churn / K, sqrt(2) - 1) where
    s_tmin <= sigma_i <= s_tmax, with noise of scale s_noise (Algorithm 2, lines 4-6). The step onto
    sigma = 0 is Euler's (line 7). x and the callback's x_t are in the VP view, like every sampler's.
    2K - 1 network evaluations.
    """
    timesteps = check_timesteps(timesteps, schedule)
    sigmas = edm_sigmas(len(timesteps), schedule, timesteps, rho, sigma_min, sigma_max)
    alpha = (1 + sigmas[0] ** 2) ** -0.5
    x = x / alpha  # x~: the VP input scaled to the VE view at its level

    def denoise(x_ve: Tensor, sigma: float) -> Prediction:
        a = (1 + sigma**2) ** -0.5
        t = schedule.timestep(torch.tensor([sigma], dtype=torch.float64)).item()
        return denoiser(x_ve * a, torch.full((x_ve.shape[0],), t, dtype=torch.float64, device=x_ve.device))

    gamma = min(churn / len(timesteps), math.sqrt(2) - 1)
    for i in _progress(range(len(timesteps)), progress, "edm"):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if gamma > 0 and s_tmin <= sigma <= s_tmax:  # lines 4-6: raise the noise level to sigma_hat
            sigma_hat = sigma * (1 + gamma)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise_like(x, generator)
            sigma = sigma_hat
        prediction = denoise(x, sigma)
        slope = (x - prediction.x0) / sigma  # line 7: d_i = (x - D(x; sigma)) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if sigma_next > 0:  # lines 9-11: the second-order correction
            corrected = (x_next - denoise(x_next, sigma_next).x0) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + corrected) / 2
        x = x_next
        if callback is not None:
            callback(i, schedule.timestep(torch.tensor([sigma], dtype=torch.float64)).item(),
                     x * (1 + sigma_next**2) ** -0.5, prediction)
    return x


def edm_sigmas(count: int, schedule: NoiseSchedule, timesteps: Sequence[int], rho: float = 7.0,
               sigma_min: float = 0.002, sigma_max: float = 80.0) -> list[float]:
    """EDM's K noise levels (Karras et al. eq. 5) and a final 0, within the range of `timesteps`."""
    high = min(sigma_max, schedule.sigma[timesteps[0]].item())
    low = min(max(sigma_min, schedule.sigma[timesteps[-1]].item()), high)
    if count == 1:
        return [high, 0.0]
    return [(high ** (1 / rho) + i / (count - 1) * (low ** (1 / rho) - high ** (1 / rho))) ** rho
            for i in range(count)] + [0.0]


def sampler_options(name: str, given: dict, base: Optional[dict] = None):
    """The option set of sampler `name` (ddpm.registry.SAMPLERS): `base` (a run's values) overridden by
    the options `given`, checked. An option that only other samplers take is refused, unless it has
    its default (the value every sampler accepts, so a caller may always pass it)."""
    spec = SAMPLERS.get(name)
    own = dict(base or {})
    for option, value in given.items():
        if option in spec.options.fields():
            own[option] = value
            continue
        takers = owners(SAMPLERS, option)
        if not takers:
            raise InputError(f"no sampler takes an option {option!r}")
        if value != takers[0].options.fields()[option].default:
            raise InputError(f"{takers[0].options.what(option)} applies to the {', '.join(t.name for t in takers)} "
                             f"sampler only, not {name}")
    return spec.options.build(own)


def get_sampler(name: str, **options) -> Callable[..., Tensor]:
    """The sampler called `name` with its options bound (DDIM's eta, DDPM's variance, EDM's churn),
    checked now, not at the first step of a long job (`sampler_options`)."""
    return SAMPLERS.get(name).bind(sampler_options(name, options))


def network_evaluations(name: str, steps: int) -> int:
    """How many times sampler `name` calls the network for `steps` timesteps (NFE)."""
    return SAMPLERS.get(name).evaluations(steps)


# ---- helpers shared by the samplers and editing.py -----------------------------------------


def check_timesteps(timesteps: Sequence[int], schedule: NoiseSchedule) -> list[int]:
    steps = [int(t) for t in timesteps]
    if not steps:
        raise InputError("a sampler needs at least one timestep")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise InputError("sampler timesteps must be strictly decreasing, e.g. [999, 979, ..., 0]")
    if steps[0] >= schedule.timesteps or steps[-1] < 0:
        raise InputError(f"sampler timesteps must lie in [0, {schedule.timesteps})")
    return steps


def _log_snr_half(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = log SNR / 2, the time variable of DPM-Solver."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def _exponential_step(alpha_bar_t: float, alpha_bar_next: float) -> tuple[float, float, float]:
    """Coefficients of the first-order exponential-integrator step (Lu et al. 2022b, eq. 9):
    x_next = decay * x_t + weight * x0, with decay = sigma_next / sigma_t and
    weight = alpha_next (1 - e^-h); also returns h = lambda_next - lambda_t."""
    h = _log_snr_half(alpha_bar_next) - _log_snr_half(alpha_bar_t)
    decay = math.sqrt(1 - alpha_bar_next) / math.sqrt(1 - alpha_bar_t)
    return decay, -math.sqrt(alpha_bar_next) * math.expm1(-h), h


def _angle(alpha_bar: float) -> float:
    """phi with cos(phi) = sqrt(alpha_bar) and sin(phi) = sqrt(1 - alpha_bar): the VP path's angle."""
    return math.atan2(math.sqrt(1 - alpha_bar), math.sqrt(alpha_bar))


def _velocity(prediction: Prediction, alpha_bar: float) -> Tensor:
    """v_hat = cos(phi) eps_hat - sin(phi) x0_hat = dx/dphi, the slope of the probability-flow ODE in phi."""
    return math.sqrt(alpha_bar) * prediction.eps - math.sqrt(1 - alpha_bar) * prediction.x0


def timestep_batch(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _progress(timesteps: list[int], enabled: bool, name: str):
    return tqdm(timesteps, desc=name, leave=False, disable=not enabled, unit="step")
