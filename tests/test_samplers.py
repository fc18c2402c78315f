"""Samplers checked with mathematics: the analytic optimal denoiser for Gaussian data, and
the DDIM / DDPM identities of Song et al."""

import pytest
import torch

from conftest import GaussianDenoiser
from ddpm import InputError, ddim, ddpm, make_schedule, spaced_timesteps

import math

MU = torch.tensor([0.5, -0.3, 0.0, 0.8]).reshape(1, 1, 2, 2)
SIGMA = torch.tensor([0.3, 0.5, 1.0, 0.8]).reshape(1, 1, 2, 2)


def _gaussian_run(sampler, steps, schedule_name="linear", n=20_000, seed=0, **options):
    schedule = make_schedule(schedule_name, 1000)
    denoiser = GaussianDenoiser(schedule, MU, SIGMA)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 2, 2), generator=g)
    return sampler(denoiser, x, schedule, spaced_timesteps(1000, steps), generator=g, **options)


@pytest.mark.parametrize(
    "sampler, steps, schedule_name",
    [(ddpm, 1000, "linear"), (ddpm, 1000, "cosine"), (ddim, 1000, "linear"), (ddim, 1000, "cosine")],
)
def test_samplers_recover_gaussian_data(sampler, steps, schedule_name):
    """With the optimal denoiser, samples of N(mu, sigma^2) have mean mu and std sigma (within 2 %).

    Few-step DDIM is first order: each step scales the spread by about cos(delta theta), where
    sqrt(alpha_bar) = cos(theta), so 50 steps lose >= 2.4 % of the std of unit-variance data
    whatever the spacing. It is checked against its exact discrete-chain variance below instead.
    """
    x = _gaussian_run(sampler, steps, schedule_name)
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True)
    # 2 % of sigma for the mean (its standard error is sigma / sqrt(n) = 0.7 %), 2 % relative for the std.
    assert torch.all((mean - MU).abs() <= 0.02 * SIGMA + 1e-4), (mean, MU)
    assert torch.all((std / SIGMA - 1).abs() <= 0.02), (std, SIGMA)


def _exact_std(sampler, steps, sigma, schedule):
    """Std of the discrete chain's output for N(0, sigma^2) data, by propagating the variance.

    With the optimal denoiser every update is linear in x_t, x_prev = A x_t + noise, so
    Var(x_prev) = A^2 Var(x_t) + (added noise variance), exactly.
    """
    timesteps = spaced_timesteps(schedule.timesteps, steps)
    chain = schedule.respace(timesteps)
    variance = 1.0
    for i, t in enumerate(timesteps):
        ab = schedule.alpha_bar[t].item()
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        gain = a * sigma**2 / (ab * sigma**2 + s**2)  # x0_hat = gain * x_t
        if sampler is ddpm:
            k = len(timesteps) - 1 - i
            A = chain.posterior_mean_coef_x0[k].item() * gain + chain.posterior_mean_coef_xt[k].item()
            variance = A**2 * variance + chain.posterior_variance[k].item()
        else:  # DDIM, eta = 0
            ab_prev = schedule.alpha_bar[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
            A = math.sqrt(ab_prev) * gain + math.sqrt(1 - ab_prev) * (1 - a * gain) / s
            variance = A**2 * variance
    return math.sqrt(variance)


@pytest.mark.parametrize("sampler, steps", [(ddpm, 1000), (ddpm, 25), (ddim, 1000), (ddim, 50), (ddim, 10)])
def test_sampler_matches_the_exact_variance_of_its_discrete_chain(sampler, steps):
    """A sharper check than "close to sigma": narrow data (sigma = 0.05, close to sqrt(beta_1) = 0.01)
    comes out narrower by a known amount, the last step's posterior-mean shrinkage; the
    implementation must reproduce that amount, within sampling error."""
    sigmas = [0.05, 0.2, 1.0, 2.0]
    schedule = make_schedule("linear", 1000)
    sigma = torch.tensor(sigmas).reshape(1, 1, 2, 2)
    denoiser = GaussianDenoiser(schedule, torch.zeros_like(sigma), sigma)
    g = torch.Generator().manual_seed(5)
    n = 20_000
    x = sampler(denoiser, torch.randn((n, 1, 2, 2), generator=g), schedule, spaced_timesteps(1000, steps), generator=g)
    measured = x.std(0).flatten().tolist()
    for got, s in zip(measured, sigmas):
        # the std of a sample std is std / sqrt(2n): 0.5 %; allow four of those
        assert got == pytest.approx(_exact_std(sampler, steps, s, schedule), rel=4 / math.sqrt(2 * n))


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    """Song et al. §4.1: with eta = 1 and every timestep, DDIM's update is DDPM's ancestral step."""
    a = _gaussian_run(ddpm, 1000, n=64, seed=3)
    b = _gaussian_run(ddim, 1000, n=64, seed=3, eta=1.0)
    assert torch.allclose(a, b, atol=1e-4)
    c = _gaussian_run(ddim, 1000, n=64, seed=3, eta=0.0)
    assert not torch.allclose(a, c, atol=1e-2)


def test_ddim_with_eta_one_on_a_subsequence_is_respaced_ddpm():
    a = _gaussian_run(ddpm, 20, n=64, seed=4)
    b = _gaussian_run(ddim, 20, n=64, seed=4, eta=1.0)
    assert torch.allclose(a, b, atol=1e-4)


def test_ddim_eta_zero_is_deterministic():
    schedule = make_schedule("cosine", 1000)
    denoiser = GaussianDenoiser(schedule, MU, SIGMA)
    x = torch.randn(16, 1, 2, 2)
    steps = spaced_timesteps(1000, 50)
    a = ddim(denoiser, x, schedule, steps, generator=torch.Generator().manual_seed(0))
    b = ddim(denoiser, x, schedule, steps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # ... while DDPM draws fresh noise at each step.
    c = ddpm(denoiser, x, schedule, steps, generator=torch.Generator().manual_seed(0))
    d = ddpm(denoiser, x, schedule, steps, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)


def test_callback_sees_every_step():
    schedule = make_schedule("linear", 100)
    seen = []
    ddim(GaussianDenoiser(schedule, MU, SIGMA), torch.randn(2, 1, 2, 2), schedule, spaced_timesteps(100, 10),
         callback=lambda i, t, x, p: seen.append((i, t)))
    assert [t for _, t in seen] == spaced_timesteps(100, 10)


@pytest.mark.parametrize("steps", [[0, 10, 20], [5, 5, 0], [100, 0], [-1]])
def test_samplers_refuse_bad_timesteps(steps):
    schedule = make_schedule("linear", 100)
    with pytest.raises(InputError):
        ddpm(GaussianDenoiser(schedule, MU, SIGMA), torch.randn(2, 1, 2, 2), schedule, steps)
