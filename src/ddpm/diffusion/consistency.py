"""Consistency models (Song et al. 2023) and the loss of easy consistency tuning (Geng et al. 2024, ECT).

In the variance-exploding view x~ = x_t / alpha = x0 + sigma eps (objectives.py), the probability-flow
ODE carries each x~ at level sigma along a trajectory down to sigma_min. A consistency function maps
every point of a trajectory to its end, f(x~, sigma) = x~(sigma_min), so one evaluation from pure
noise is a sample, and a few more (re-noised in between) refine it.

The parametrisation (Song et al. 2023, eq. 3 and Appendix C; ECT keeps it) builds the boundary
condition f(x~, sigma_min) = x~ into the network's output F:

    f = c_skip(sigma) x~ + c_out(sigma) F,   c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
                                             c_out  = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2).

A ddpm network is trained through an objective, whose denoiser is, in EDM's terms,
D = c_skip'(sigma) x~ + c_out'(sigma) F with c_skip' = sd^2 / (sigma^2 + sd^2) and
c_out' = sigma sd / sqrt(sigma^2 + sd^2) (objectives.py's table: any objective's D defines such an F).
Put into the line above, c_out / c_out' = (sigma - sigma_min) / sigma, and

    f(x~, sigma) = (c_skip - (sigma - sigma_min) / sigma c_skip') x~ + (sigma - sigma_min) / sigma D(x~, sigma),

which is `consistency_weights`. So every objective's network is a consistency function through its
own denoiser, and a network fresh from its teacher is the teacher's denoiser, except near sigma_min
where f bends to x~ (ECT's starting point). sigma_min is the schedule's lowest level, sigma at t = 0:
the teacher never saw less noise.

ECT (Geng et al. 2024, §3) tunes f on pairs of levels r < t of one trajectory, approximated, as in
consistency training (Song et al. 2023, §5), by the same noise: x~_t = x0 + t eps, x~_r = x0 + r eps.
The target is the network itself at r under stop-gradient, with the same dropout mask; the gap t - r
shrinks stage by stage (`ect_partner`), and the loss weighs the distance by 1 / (t - r) (`ect_loss`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..registry import ConsistencyOptions
from .objectives import Prediction
from .samplers import _progress, noise_like
from .schedules import NoiseSchedule

ECT_TWO_STEP_SIGMA = 0.821  # the intermediate level of 2-step sampling (Song et al. 2023, §6; ECT's too)


def consistency_weights(sigma: Tensor, sigma_min: float, sigma_data: float) -> tuple[Tensor, Tensor]:
    """(a, b) with f(x~, sigma) = a x~ + b D(x~, sigma): the module docstring's last formula. At sigma_min,
    a = 1 and b = 0 exactly."""
    gap = (sigma - sigma_min).clamp(min=0)
    c_skip = sigma_data**2 / (gap**2 + sigma_data**2)
    b = gap / sigma
    return c_skip - b * sigma_data**2 / (sigma**2 + sigma_data**2), b


def consistency_denoiser(denoiser, config) -> "ConsistencyFunction":
    """How a sampler reads a consistency student's network: the run's denoiser as the consistency function
    f(x, t), with the run's consistency.sigma_data (Config.sigma_data resolves it)."""
    return ConsistencyFunction(denoiser, config.sigma_data(config.consistency.sigma_data))


class ConsistencyFunction(nn.Module):
    """A denoiser (process.Denoiser, or one like it) seen as a consistency function: called as
    f(x_t, t) it returns the Prediction whose x0 is f(x~, sigma_t), so that every sampler and editor
    reads it as it reads a denoiser. Timesteps may be fractional."""

    def __init__(self, denoiser, sigma_data: float = 0.5):
        super().__init__()
        self.denoiser, self.sigma_data = denoiser, sigma_data
        self.schedule: NoiseSchedule = denoiser.schedule
        self.sigma_min = float(self.schedule.sigma[0])

    def conditioned(self, labels: Tensor, guidance: float = 1.0) -> "ConsistencyFunction":
        """The same function for these class labels; guidance mixes the network's outputs, and f is
        affine in them, so the guided f is the mix of the conditional and unconditional f."""
        return ConsistencyFunction(self.denoiser.conditioned(labels, guidance), self.sigma_data)

    def forward(self, x_t: Tensor, t: Tensor) -> Prediction:
        alpha, s, sigma = (v.to(x_t.device).reshape(-1, *[1] * (x_t.ndim - 1)) for v in self.schedule.levels(t))
        a, b = consistency_weights(sigma, self.sigma_min, self.sigma_data)
        d = self.denoiser(x_t, t).x0
        x0 = a.to(x_t.dtype) * (x_t / alpha.to(x_t.dtype)) + b.to(x_t.dtype) * d
        return Prediction(eps=(x_t - alpha.to(x_t.dtype) * x0) / s.to(x_t.dtype), x0=x0)


# ---- ECT's training pairs and loss ----------------------------------------------------------------


def ect_partner(t: Tensor, stage: int, q: float, k: float, b: float, sigma_min: float) -> Tensor:
    """ECT's mapping from a level t to its partner r (Geng et al. 2024, §3.2, the sigmoid n(t)):

        r = t (1 - q^-(stage+1) n(t)),   n(t) = 1 + k sigmoid(-b t),

    so the gap t - r starts near t (stage 0: the target is nearly the data, the teacher's own task)
    and halves (q = 2) each stage, wider at low noise. r is at least sigma_min, where the boundary
    condition makes the target x~_r itself."""
    ratio = 1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=sigma_min)


def ect_levels(n: int, p_mean: float, p_std: float, schedule: NoiseSchedule, generator: Optional[torch.Generator],
               device) -> Tensor:
    """n training levels t, ln t ~ N(p_mean, p_std^2) (ECT's lognormal), float64, kept within the teacher's
    levels: above sigma at t = 1, so that r < t, and at most sigma at T - 1."""
    normal = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    top, low = float(schedule.sigma[-1]), float(schedule.sigma[min(1, schedule.timesteps - 1)])
    return torch.exp(p_mean + p_std * normal).clamp(low, top)


def ect_distance(f_t: Tensor, f_r: Tensor, c: float) -> Tensor:
    """Per image, the pseudo-Huber distance sqrt(|f_t - f_r|^2 + c^2) - c (Song & Dhariwal 2023); with c = 0
    ECT's |f_t - f_r|, the squared distance's gradient adaptively weighed by its inverse."""
    squared = (f_t.float() - f_r.float()).flatten(1).square().sum(1)
    return (squared + c * c).clamp(min=1e-30).sqrt() - c


def ect_loss(f_t: Tensor, f_r: Tensor, t: Tensor, r: Tensor, c: float) -> Tensor:
    """ECT's loss (Geng et al. 2024, eq. 9 with their weighting w(t, r) = 1 / (t - r)), averaged over the batch."""
    return (ect_distance(f_t, f_r, c) / (t - r).float().flatten()).mean()


class SameRandomness:
    """The random state of `device` as it is now, to draw the same numbers again: the target's pass of
    the network gets the dropout mask the student's pass got (ECT's shared dropout)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.state = torch.cuda.get_rng_state(device) if self.cuda else torch.get_rng_state()

    def replay(self) -> None:
        if self.cuda:
            torch.cuda.set_rng_state(self.state, self.device)
        else:
            torch.set_rng_state(self.state)


# ---- sampling ----------------------------------------------------------------------------------------


def consistency_sigmas(steps: int, sigmas: str = "", sigma_max: float = 80.0,
                       schedule: Optional[NoiseSchedule] = None) -> list[float]:
    """The noise levels of `steps`-step consistency sampling, descending: the first is sigma_max (within
    the schedule's levels), then the intermediate ones: `sigmas` ("2.5,0.821"), or by default ECT's
    0.821 for 2 steps and, for more, Karras et al.'s rho = 7 levels between the first and 0.002 (or the
    model's lowest level, if higher; eq. 5), the ends dropped."""
    top = min(sigma_max, float(schedule.sigma[-1])) if schedule is not None else sigma_max
    bottom = float(schedule.sigma[0]) if schedule is not None else 0.0
    if sigmas.strip():
        try:
            middle = [float(v) for v in sigmas.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"sample.sigmas must be comma-separated numbers, e.g. 2.5,0.821 (got {sigmas!r})") from None
        if len(middle) != steps - 1:
            raise InputError(f"{steps}-step consistency sampling takes {steps - 1} intermediate sigmas (got {len(middle)})")
    elif steps == 2:
        middle = [ECT_TWO_STEP_SIGMA]
    else:
        rho, low = 7.0, max(0.002, bottom)
        middle = [(top ** (1 / rho) + i / steps * (low ** (1 / rho) - top ** (1 / rho))) ** rho for i in range(1, steps)]
    levels = [top, *middle]
    if any(not math.isfinite(v) or not bottom < v for v in middle) or any(b >= a for a, b in zip(levels, levels[1:])):
        raise InputError(f"consistency sampling's sigmas must descend from {top:g} and stay above the model's lowest "
                         f"level {bottom:.3g} (got {', '.join(f'{v:g}' for v in levels)})")
    return levels


@torch.no_grad()
def sample_consistency(denoiser, x: Tensor, schedule: NoiseSchedule, timesteps: Sequence[int], *,
                       sigmas: str = ConsistencyOptions.sigmas, sigma_max: float = ConsistencyOptions.sigma_max,
                       generator: Optional[torch.Generator] = None, callback=None,
                       progress: bool = False) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1), in as many steps as `timesteps` has:
    x~ = sigma_1 z, x0 = f(x~, sigma_1); then for each further level sigma_i, x~ = x0 + sigma_i z and
    x0 = f(x~, sigma_i). The levels are `consistency_sigmas`; the steps' own timesteps are not used.
    With a consistency function (a student of distill.method ect) one step is a sample; with a
    diffusion model's denoiser it is the x0 prediction re-noised, a poor sampler."""
    levels = consistency_sigmas(len(timesteps), sigmas, sigma_max, schedule)
    times = schedule.timestep(torch.tensor(levels, dtype=torch.float64)).tolist()
    x = x * float(schedule.levels(torch.tensor([times[0]]))[1][0])  # the VP image of x~ = sigma_1 z: s_1 z
    for i, t in enumerate(_progress(times, progress, "consistency")):
        prediction = denoiser(x, torch.full((len(x),), t, device=x.device, dtype=torch.float64))
        if i + 1 < len(times):  # re-noise the sample to the next level: x_t = alpha x0 + s z
            alpha, s, _ = (float(v[0]) for v in schedule.levels(torch.tensor([times[i + 1]])))
            x = alpha * prediction.x0 + s * noise_like(prediction.x0, generator)
        else:
            x = prediction.x0
        if callback is not None:
            callback(i, t, x, prediction)
    return x
