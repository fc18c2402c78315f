"""Samplers: from pure noise x_T to an image, by running the reverse process.

Every sampler is a plain function with one signature:

    sampler(denoiser, x, schedule, timesteps, *, generator=None, callback=None, progress=False) -> x_0

- denoiser(x_t, t) returns a `Prediction` (eps, x0) for a batch of timesteps t;
- x is the starting noise x_T, shape [B, C, H, W];
- timesteps are the steps to visit, in sampling order (descending), e.g. [999, 979, ..., 0];
- generator draws any fresh noise, so a seed fixes the result;
- callback(i, t, x_t, prediction) is called at every step (pictures of the trajectory use it).

A sampler may add keyword-only options of its own, with defaults (DDIM's `eta`), so that any
caller that uses only the shared part can call any sampler. `SAMPLERS` maps names to samplers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .diffusion import Prediction, q_posterior
from .errors import InputError
from .schedules import NoiseSchedule

Denoiser = Callable[[Tensor, Tensor], Prediction]
Callback = Callable[[int, int, Tensor, Prediction], None]


@torch.no_grad()
def ddpm(
    denoiser: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling, Ho et al. 2020 Algorithm 2, with the fixed posterior variance beta~_t.

    x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), the Gaussian of eq. 6-7 with x0 replaced by the network's
    estimate. On a subsequence of timesteps the same update runs on the respaced chain, whose
    betas join the visited steps (`NoiseSchedule.respace`).
    """
    timesteps = _check_timesteps(timesteps, schedule)
    chain = schedule.respace(timesteps)  # chain step i <-> original timestep ascending[i]
    for i, t in enumerate(_progress(timesteps, progress, "ddpm")):
        k = len(timesteps) - 1 - i  # index of t in the ascending chain
        prediction = denoiser(x, _batch(t, x))
        mean, variance = q_posterior(chain, prediction.x0, x, _batch(k, x))
        if k > 0:  # Algorithm 2 line 3: no noise at the last step
            x = mean + variance.sqrt() * _noise_like(x, generator)
        else:
            x = mean
        if callback is not None:
            callback(i, t, x, prediction)
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """DDIM, Song et al. 2021 eq. 12, over any subsequence of timesteps.

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_prev)  (eq. 16).
    eta = 0 is deterministic; eta = 1 over all T steps is DDPM's ancestral sampler.
    """
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"DDIM's eta must lie in [0, 1] (got {eta})")
    timesteps = _check_timesteps(timesteps, schedule)
    alpha_bar = schedule.alpha_bar.tolist()
    for i, t in enumerate(_progress(timesteps, progress, "ddim")):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        a_t = alpha_bar[t]
        a_prev = alpha_bar[t_prev] if t_prev is not None else 1.0  # the final step lands on x_0
        prediction = denoiser(x, _batch(t, x))
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * prediction.x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * prediction.eps
        if sigma > 0:
            x = x + sigma * _noise_like(x, generator)
        if callback is not None:
            callback(i, t, x, prediction)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., Tensor]:
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# ---- helpers shared by the samplers ----------------------------------------------------------


def _check_timesteps(timesteps: Sequence[int], schedule: NoiseSchedule) -> list[int]:
    steps = [int(t) for t in timesteps]
    if not steps:
        raise InputError("a sampler needs at least one timestep")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise InputError("sampler timesteps must be strictly decreasing, e.g. [999, 979, ..., 0]")
    if steps[0] >= schedule.timesteps or steps[-1] < 0:
        raise InputError(f"sampler timesteps must lie in [0, {schedule.timesteps})")
    return steps


def _batch(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _progress(timesteps: list[int], enabled: bool, name: str):
    return tqdm(timesteps, desc=name, leave=False, disable=not enabled, unit="step")
