"""Editing with a trained model: inpainting, SDEdit (img2img), DDIM inversion and interpolation.

Each is a plain function over the same pieces as the samplers: a denoiser(x_t, t) -> Prediction,
a noise schedule and the timesteps to visit (descending). Images are floats in [-1, 1].

- `inpaint`: fill the unknown pixels of x0 so that they agree with the known ones. At every step
  the known pixels are replaced by the original noised to the level that step lands on
  (Lugmayr et al. 2022, RePaint, eq. 8), so the output keeps them exactly. RePaint's resampling
  goes back `jump` steps with fresh forward noise, `resample - 1` times at each jump point, so
  that the unknown part can adapt to the known part (resample = 1: plain replacement).
- `img2img`: SDEdit (Meng et al. 2022): noise x0 to the level that `strength` selects and run a
  sampler from there. strength 0 returns x0; strength 1 starts from pure noise, which is plain
  sampling.
- `invert`: DDIM run forwards (Song et al. 2021 §4.3, eq. 13 read as an ODE): from an image to the
  x_T that deterministic DDIM (eta = 0) maps back to it; exact as the steps grow.
- `slerp`: spherical interpolation (Shoemake 1985) between two noises, which keeps the norm of a
  Gaussian sample where a straight line would shrink it by up to 1/sqrt(2).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .samplers import PredictFn, check_timesteps, ddim_step, noise_like, timestep_batch
from .schedules import NoiseSchedule

StepCallback = Callable[[int, Tensor, Tensor], None]  # (level index, x, the known pixels' target)


def repaint_schedule(count: int, jump: int, resample: int) -> list[int]:
    """The order in which RePaint visits the levels 0 (x_T), 1, ..., count (x_0): forwards one at a
    time, and at every `jump`-th level back `jump` levels, `resample - 1` times (Lugmayr et al.,
    Algorithm 1 with their jump schedule). resample = 1 visits 0, 1, ..., count once."""
    if resample < 1 or jump < 1:
        raise InputError(f"--resample and --jump must be >= 1 (got {resample} and {jump})")
    jumps = {level: resample - 1 for level in range(jump, count + 1, jump)}
    path, level = [0], 0
    while level < count:
        level += 1
        path.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump):
                level -= 1
                path.append(level)
    return path


@torch.no_grad()
def inpaint(denoiser: PredictFn, x0: Tensor, known: Tensor, schedule: NoiseSchedule, timesteps: Sequence[int], *,
            eta: float = 1.0, resample: int = 1, jump: int = 10, generator: Optional[torch.Generator] = None,
            x: Optional[Tensor] = None, callback: Optional[StepCallback] = None) -> Tensor:
    """Fill the pixels of x0 where `known` is False; those where it is True come back exactly.

    The steps are DDIM's with `eta` (1: DDPM's ancestral step on the respaced chain, 0:
    deterministic). `x` is the starting noise (default: drawn from `generator`).
    `callback(level, x, target)` sees x after every step with the noised original it copied.
    """
    timesteps = check_timesteps(timesteps, schedule)
    known = known.expand_as(x0).bool()
    alpha_bar = [schedule.alpha_bar[t].item() for t in timesteps] + [1.0]  # level i; level K is x_0
    x = noise_like(x0, generator) if x is None else x
    path = repaint_schedule(len(timesteps), jump, resample)
    for previous, level in zip(path, path[1:]):
        a_from, a_to = alpha_bar[previous], alpha_bar[level]
        if level > previous:  # a reverse step, then the known pixels at the level it lands on (eq. 8)
            prediction = denoiser(x, timestep_batch(timesteps[previous], x))
            x = ddim_step(prediction, x, a_from, a_to, eta, generator)
            target = x0 if level == len(timesteps) else math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * noise_like(x0, generator)
            x = torch.where(known, target, x)
            if callback is not None:
                callback(level, x, target)
        else:  # back one level: q(x_to | x_from) = N(sqrt(a_to / a_from) x_from, (1 - a_to / a_from) I)
            x = math.sqrt(a_to / a_from) * x + math.sqrt(1 - a_to / a_from) * noise_like(x, generator)
    return x


@torch.no_grad()
def img2img(sampler: Callable[..., Tensor], denoiser: PredictFn, x0: Tensor, strength: float, schedule: NoiseSchedule,
            timesteps: Sequence[int], *, generator: Optional[torch.Generator] = None, **options) -> Tensor:
    """SDEdit: the last round(strength * K) of the K timesteps, started from x0 noised to the first
    of them. strength 0 returns x0 itself; strength 1 draws x_T = z as plain sampling does (the
    first draw of `generator`), so the image no longer matters."""
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"--strength must be in [0, 1], 0 for the input and 1 for plain sampling (got {strength})")
    timesteps = check_timesteps(timesteps, schedule)
    kept = timesteps[len(timesteps) - round(strength * len(timesteps)):]
    if not kept:
        return x0.clone()
    noise = noise_like(x0, generator)
    if strength == 1.0:
        x = noise
    else:
        a = schedule.alpha_bar[kept[0]].item()
        x = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise  # q(x_t | x_0), Ho et al. eq. 4
    return sampler(denoiser, x, schedule, kept, generator=generator, **options)


@torch.no_grad()
def invert(denoiser: PredictFn, x0: Tensor, schedule: NoiseSchedule, timesteps: Sequence[int]) -> Tensor:
    """DDIM inversion: the x_T from which `sample_ddim(..., eta=0)` over the same timesteps returns
    about x0. Each step runs DDIM's update towards more noise, with the prediction at the level it
    starts from: x_next = sqrt(alpha_bar_next) x0_hat + sqrt(1 - alpha_bar_next) eps_hat."""
    ascending = check_timesteps(timesteps, schedule)[::-1]
    x = x0
    for i, t_next in enumerate(ascending):
        t = ascending[i - 1] if i else ascending[0]  # the first step starts at the data: ask at the lowest t
        prediction = denoiser(x, timestep_batch(t, x))
        a = schedule.alpha_bar[t_next].item()
        x = math.sqrt(a) * prediction.x0 + math.sqrt(1 - a) * prediction.eps
    return x


def slerp(a: Tensor, b: Tensor, weights: Sequence[float]) -> Tensor:
    """Spherical interpolation between a and b (each [C, H, W]) at each weight in [0, 1]:
    sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle between them."""
    cos = (a.flatten() @ b.flatten() / (a.norm() * b.norm())).clamp(-1, 1)
    theta = torch.arccos(cos).item()
    frames = []
    for w in weights:
        if theta < 1e-6:  # parallel: the line is the arc
            frames.append((1 - w) * a + w * b)
        else:
            frames.append((math.sin((1 - w) * theta) * a + math.sin(w * theta) * b) / math.sin(theta))
    return torch.stack(frames)
