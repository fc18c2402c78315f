import math

import pytest
import torch

from ddpm import Config, InputError, make_schedule, spaced_timesteps
from ddpm.factory import build_schedule
from ddpm.diffusion.schedules import NoiseSchedule, cosine_alpha_bar, linear_betas


def test_linear_schedule_matches_ho_et_al():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # Ho et al. report sqrt(alpha_bar_T) ~ 6.4e-3 at T = 1000, i.e. alpha_bar_T ~ 4.04e-5.
    alpha_bar_T = make_schedule("linear", 1000).alpha_bar[-1].item()
    assert alpha_bar_T == pytest.approx(4.036e-5, rel=0.01)


def test_linear_schedule_scales_with_T():
    betas = linear_betas(250)
    assert betas[0].item() == pytest.approx(4e-4)
    assert betas[-1].item() == pytest.approx(0.08)
    # The signal left at the end stays of the same order.
    assert make_schedule("linear", 250).alpha_bar[-1].item() == pytest.approx(4.036e-5, rel=0.5)


@pytest.mark.parametrize("t", [0, 1, 250, 500, 750, 990])
def test_cosine_alpha_bar_is_equation_17(t):
    T, s = 1000, 0.008
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    schedule = make_schedule("cosine", T)
    # alpha_bar at paper step t + 1 (0-based index t); betas are clipped only at the very end.
    assert schedule.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine_alpha_bar(T)[t].item() == pytest.approx(f(t) / f(0), rel=1e-12)


def test_cosine_betas_are_clipped_at_0_999():
    schedule = make_schedule("cosine", 1000)
    assert schedule.betas.max().item() == pytest.approx(0.999)
    assert (schedule.betas <= 0.999).all()
    assert schedule.alpha_bar[-1].item() < 1e-6


def test_sigmoid_schedule_runs_from_signal_to_noise():
    schedule = make_schedule("sigmoid", 1000)
    ab = schedule.alpha_bar
    assert (ab.diff() < 0).all()
    assert ab[0].item() > 0.999 and ab[-1].item() < 1e-3
    # RIN sigmoid with start -3, end 3, tau 1: at t = 1/2, alpha_bar = (s(3) - s(0)) / (s(3) - s(-3)).
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (sig(3) - sig(0)) / (sig(3) - sig(-3))
    assert ab[499].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("shift", [1.65, -2.0])
def test_log_snr_shift_is_scaling_the_data(name, shift):
    """Shifting log SNR by s is the base schedule applied to data scaled by b = exp(s / 2), then
    rescaled to unit variance: alpha_bar' = b^2 alpha_bar / (b^2 alpha_bar + 1 - alpha_bar)."""
    base, shifted = make_schedule(name, 1000), make_schedule(name, 1000, log_snr_shift=shift)
    b2, ab = math.exp(shift), base.alpha_bar
    expected = b2 * ab / (b2 * ab + 1 - ab)
    # every step but the last, where beta may be clipped at 0.999, is exact
    assert torch.allclose(shifted.alpha_bar[:-1], expected[:-1], rtol=1e-9, atol=0)
    assert torch.allclose(shifted.log_snr[:-1] - base.log_snr[:-1], torch.full((999,), shift, dtype=torch.float64))
    assert ((shifted.betas > 0) & (shifted.betas <= 0.999)).all()
    assert shifted.alpha_bar[-1].item() < 1e-3  # still ends in noise


def test_log_snr_shift_comes_from_the_config():
    config = Config()
    assert torch.equal(build_schedule(config).betas, make_schedule("cosine", 1000).betas)  # 0: the paper's schedule
    shift = config.diffusion.log_snr_shift = 2 * math.log(64 / 28)  # Hoogeboom et al.'s rule for 28 x 28: 1.653
    assert build_schedule(config).log_snr[500].item() == pytest.approx(
        make_schedule("cosine", 1000).log_snr[500].item() + shift, rel=1e-9)
    config.diffusion.log_snr_shift = math.inf
    with pytest.raises(InputError, match="log_snr_shift must be a finite number"):
        config.validate()


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("t", [1, 10, 500, 998])
def test_posterior_is_gaussian_conditioning(name, t):
    """Ho et al. eq. 6-7 against the conditional of the joint Gaussian (x_{t-1}, x_t) given x_0."""
    s = make_schedule(name, 1000)
    ab_prev, ab, alpha = s.alpha_bar[t - 1].item(), s.alpha_bar[t].item(), s.alphas[t].item()
    # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) e1,  x_t = sqrt(alpha) x_{t-1} + sqrt(1 - alpha) e2
    cov = math.sqrt(alpha) * (1 - ab_prev)
    gain = cov / (1 - ab)
    expected_var = (1 - ab_prev) - cov * gain
    # mean = sqrt(ab_prev) x0 + gain (x_t - sqrt(ab) x0)
    assert s.posterior_mean_coef_xt[t].item() == pytest.approx(gain, rel=1e-9)
    assert s.posterior_mean_coef_x0[t].item() == pytest.approx(math.sqrt(ab_prev) - gain * math.sqrt(ab), rel=1e-6)
    assert s.posterior_variance[t].item() == pytest.approx(expected_var, rel=1e-6)


def test_first_step_posterior_is_deterministic():
    s = make_schedule("linear", 1000)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_mean_coef_x0[0].item() == pytest.approx(1.0)
    assert s.posterior_mean_coef_xt[0].item() == 0.0


def test_respacing_keeps_alpha_bar_on_the_visited_steps():
    s = make_schedule("cosine", 1000)
    full = s.respace(range(1000))
    assert torch.allclose(full.betas, s.betas, rtol=1e-9)
    steps = [0, 99, 399, 999]
    short = s.respace(steps)
    assert torch.allclose(short.alpha_bar, s.alpha_bar[steps], rtol=1e-12)


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    steps = spaced_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))
    with pytest.raises(InputError):
        spaced_timesteps(100, 101)


def test_schedule_refuses_bad_betas():
    with pytest.raises(InputError):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(InputError):
        make_schedule("quadratic", 10)


def test_fractional_timesteps_lie_between_the_grids_in_log_sigma_and_invert():
    """EDM's sampler asks a model at noise levels between its timesteps: t(sigma) and sigma(t) are
    inverse, linear in log sigma between neighbours, and exact at the grid (sigma_t^2 = (1 - a) / a)."""
    s = make_schedule("cosine", 1000)
    sigma = torch.logspace(-2, 2.5, 60, dtype=torch.float64)
    alpha, noise, back = s.levels(s.timestep(sigma))
    torch.testing.assert_close(back, sigma)
    torch.testing.assert_close(alpha**2 + noise**2, torch.ones_like(sigma))
    middle = s.levels(torch.tensor([10.5, 500.25], dtype=torch.float64))[2]
    torch.testing.assert_close(middle[0], (s.sigma[10] * s.sigma[11]).sqrt())
    torch.testing.assert_close(middle[1], s.sigma[500] ** 0.75 * s.sigma[501] ** 0.25)
    grid = torch.tensor([0, 1, 999])
    torch.testing.assert_close(s.levels(grid.double())[2], ((1 - s.alpha_bar[grid]) / s.alpha_bar[grid]).sqrt())
    assert s.timestep(torch.tensor([1e-9, 1e9], dtype=torch.float64)).tolist() == [0.0, 999.0]  # clamped to the range
