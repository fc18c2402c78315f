"""Editing, checked where the truth is known: with the exact denoiser of Gaussian data, inpainting
should sample the conditional Gaussian, DDIM inversion should invert DDIM, and slerp should keep the
norm of a Gaussian sample."""

import math

import pytest
import torch

from helpers import GaussianDenoiser
from ddpm import InputError, Prediction, make_schedule, sample_ddim, sample_ddpm, spaced_timesteps
from ddpm.diffusion.editing import img2img, inpaint, invert, repaint_schedule, slerp

MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
_A = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [0.5, 0.4, 0.5, 0], [0.3, 0.6, 0.2, 0.4]], dtype=torch.float64)
SIGMA = 0.25 * _A @ _A.T  # correlated pixels: the known ones say something about the unknown ones


class CorrelatedGaussian:
    """The optimal denoiser for x0 ~ N(MU, SIGMA) over 2x2 images: with x_t = a x0 + s eps,
    E[x0 | x_t] = MU + a SIGMA (a^2 SIGMA + s^2 I)^-1 (x_t - a MU)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t):
        a, s = self.schedule.sqrt_alpha_bar[t[0]].item(), self.schedule.sqrt_one_minus_alpha_bar[t[0]].item()
        gain = a * SIGMA @ torch.linalg.inv(a**2 * SIGMA + s**2 * torch.eye(4, dtype=torch.float64))
        x0 = MU + (x_t.flatten(1) - a * MU) @ gain.T
        return Prediction(eps=(x_t - a * x0.view_as(x_t)) / s, x0=x0.view_as(x_t))


KNOWN = torch.tensor([True, False, True, False]).view(1, 1, 2, 2)
IMAGE = torch.tensor([0.6, 0.0, -0.3, 0.0], dtype=torch.float64).view(1, 1, 2, 2)


def _inpaint(resample: int, n: int = 8000, **kwargs) -> torch.Tensor:
    schedule = make_schedule("cosine", 1000)
    return inpaint(CorrelatedGaussian(schedule), IMAGE.expand(n, -1, -1, -1), KNOWN, schedule,
                   spaced_timesteps(1000, 50), resample=resample, jump=5, generator=torch.Generator().manual_seed(0),
                   **kwargs)


def test_inpainting_keeps_the_known_pixels_exactly_at_every_step():
    steps = []

    def record(level, x, target):
        assert torch.equal(x[KNOWN.expand_as(x)], target[KNOWN.expand_as(target)])
        steps.append(level)

    out = _inpaint(resample=3, n=16, callback=record)
    assert torch.equal(out[KNOWN.expand_as(out)], IMAGE.expand_as(out)[KNOWN.expand_as(out)])
    assert steps[-1] == 50 and len(steps) > 50  # every reverse step, resampled ones too


def test_inpainting_approaches_the_conditional_gaussian_as_resampling_grows():
    """The exact answer: x_U | x_K ~ N(mu_U + S_UK S_KK^-1 (x_K - mu_K), S_UU - S_UK S_KK^-1 S_KU).
    Measured at 50 steps, jump 5, 8,000 samples (standard error of the mean ~0.003): the largest
    mean error is 0.207 for plain replacement, 0.086 with N = 5 and 0.063 with N = 10; the
    covariance's 0.020, 0.010 and 0.014."""
    k, u = KNOWN.flatten(), ~KNOWN.flatten()
    x = IMAGE.flatten()
    mean = MU[u] + SIGMA[u][:, k] @ torch.linalg.solve(SIGMA[k][:, k], x[k] - MU[k])
    covariance = SIGMA[u][:, u] - SIGMA[u][:, k] @ torch.linalg.solve(SIGMA[k][:, k], SIGMA[k][:, u])
    errors = {}
    for resample in (1, 5, 10):
        samples = _inpaint(resample).flatten(1)[:, u]
        errors[resample] = ((samples.mean(0) - mean).abs().max().item(),
                            (torch.cov(samples.T) - covariance).abs().max().item())
    assert errors[1][0] < 0.23 and errors[5][0] < 0.10 and errors[10][0] < 0.075, errors
    assert errors[1][0] > errors[5][0] > errors[10][0], errors
    assert all(cov < 0.025 for _, cov in errors.values()), errors


def test_the_repaint_schedule():
    assert repaint_schedule(4, 2, 1) == [0, 1, 2, 3, 4]
    # at levels 2 and 4, back 2 levels, once each (N = 2)
    assert repaint_schedule(4, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4]
    with pytest.raises(InputError, match="--resample and --jump must be >= 1"):
        repaint_schedule(4, 0, 2)


def _gaussian(n=512):
    schedule = make_schedule("cosine", 1000)
    mu, sigma = torch.full((1, 1, 2, 2), 0.2, dtype=torch.float64), torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    return schedule, GaussianDenoiser(schedule, mu, sigma), mu + sigma * torch.randn(
        (n, 1, 2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_img2img_at_strength_0_is_the_input_and_at_1_is_plain_sampling():
    schedule, denoiser, x0 = _gaussian(64)
    steps = spaced_timesteps(1000, 20)
    assert torch.equal(img2img(sample_ddpm, denoiser, x0, 0.0, schedule, steps,
                               generator=torch.Generator().manual_seed(1)), x0)
    g = torch.Generator().manual_seed(1)
    plain = sample_ddpm(denoiser, torch.randn(x0.shape, generator=g, dtype=x0.dtype), schedule, steps, generator=g)
    edited = img2img(sample_ddpm, denoiser, x0, 1.0, schedule, steps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(edited, plain)
    # in between, the output stays closer to the input the lower the strength
    distance = [(img2img(sample_ddim, denoiser, x0, s, schedule, steps, generator=torch.Generator().manual_seed(1))
                 - x0).abs().mean().item() for s in (0.2, 0.5, 0.9)]
    assert distance[0] < distance[1] < distance[2], distance
    with pytest.raises(InputError, match="--strength must be in \\[0, 1\\]"):
        img2img(sample_ddpm, denoiser, x0, 1.5, schedule, steps)


def test_ddim_inversion_returns_the_image_and_converges_with_steps():
    """Measured: mean |x0 - DDIM(invert(x0))| is 0.024 at 50 steps, 0.0062 at 200 and 0.0013 at 1,000:
    first order in the step, as both maps use the prediction at one end of each step."""
    schedule, denoiser, x0 = _gaussian()
    errors = {}
    for steps in (50, 200):
        timesteps = spaced_timesteps(1000, steps)
        x_T = invert(denoiser, x0, schedule, timesteps)
        errors[steps] = (sample_ddim(denoiser, x_T, schedule, timesteps) - x0).abs().mean().item()
    assert errors[50] < 0.03 and errors[200] < 0.008 and errors[200] < errors[50] / 3.5, errors


def test_slerp_keeps_the_endpoints_and_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)
    frames = slerp(a, b, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert torch.allclose(frames[0], a, atol=1e-5) and torch.allclose(frames[-1], b, atol=1e-5)
    expected = math.sqrt(a.numel())  # a Gaussian sample's norm
    assert all(abs(frame.norm().item() / expected - 1) < 0.03 for frame in frames)
    assert abs(((a + b) / 2).norm().item() / expected - 2**-0.5) < 0.03  # what a straight line does
