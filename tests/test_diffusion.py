import pytest
import torch

from ddpm import Denoiser, InputError, make_schedule, q_sample, target, to_prediction, training_loss


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_forward_process_moments(t):
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I): check mean and variance."""
    s = make_schedule("linear", 1000)
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    xt = q_sample(s, x0, torch.full((n,), t), torch.randn(n, 1))
    ab = s.alpha_bar[t].item()
    std_error = ((1 - ab) / n) ** 0.5
    assert xt.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=5 * std_error + 1e-6)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.02, abs=1e-7)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_targets_invert_to_the_same_eps_and_x0(objective):
    """A network that outputs the exact target of any objective recovers the true (eps, x0)."""
    s = make_schedule("cosine", 1000)
    x0 = torch.rand(16, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 5, 50, 100, 300, 500, 700, 900, 950, 990, 995, 997, 998, 999, 400])
    xt = q_sample(s, x0, t, noise)
    prediction = to_prediction(objective, s, target(objective, s, x0, noise, t), xt, t)
    assert torch.allclose(prediction.eps, noise, atol=1e-6)
    # x0 from eps divides by sqrt(alpha_bar), tiny at the last steps: compare where it is sane.
    sane = s.alpha_bar[t] > 1e-4
    assert torch.allclose(prediction.x0[sane], x0[sane], atol=1e-6)


def test_v_target_is_rotation_of_eps_and_x0():
    s = make_schedule("linear", 1000)
    x0, noise, t = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), torch.tensor([3, 30, 300, 900])
    v = target("v", s, x0, noise, t)
    a, b = s.at("sqrt_alpha_bar", t, x0), s.at("sqrt_one_minus_alpha_bar", t, x0)
    assert torch.allclose(v, a * noise - b * x0)
    # |v|^2 + |x_t|^2 = |eps|^2 + |x0|^2 since (x_t, v) is a rotation of (x0, eps).
    xt = q_sample(s, x0, t, noise)
    assert torch.allclose(v**2 + xt**2, noise**2 + x0**2, atol=1e-5)


def test_clipped_prediction_stays_consistent_with_x_t():
    s = make_schedule("cosine", 1000)
    network = lambda x, t: torch.full_like(x, 3.0)  # noqa: E731  an x0 far outside [-1, 1]
    denoiser = Denoiser(network, s, "x0", clip_denoised=True)
    xt, t = torch.randn(8, 1, 4, 4), torch.full((8,), 500)
    p = denoiser(xt, t)
    assert p.x0.max().item() == 1.0
    assert torch.allclose(s.at("sqrt_alpha_bar", t, xt) * p.x0 + s.at("sqrt_one_minus_alpha_bar", t, xt) * p.eps, xt, atol=1e-5)


def test_loss_of_a_zero_network_is_the_target_energy():
    """A network that outputs 0 pays E[eps^2] = 1 in MSE and E|eps| = sqrt(2/pi) in L1."""
    s = make_schedule("linear", 1000)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x0 = torch.zeros(256, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert training_loss(zero, s, x0, "eps", "mse", g).item() == pytest.approx(1.0, rel=0.01)
    assert training_loss(zero, s, x0, "eps", "l1", g).item() == pytest.approx((2 / torch.pi) ** 0.5, rel=0.01)
    # The same generator state gives the same timesteps and noise, hence the same loss.
    x0 = torch.randn(8, 1, 4, 4)
    a = training_loss(zero, s, x0, "v", "mse", torch.Generator().manual_seed(1))
    b = training_loss(zero, s, x0, "v", "mse", torch.Generator().manual_seed(1))
    c = training_loss(zero, s, x0, "v", "mse", torch.Generator().manual_seed(2))
    assert a.item() == b.item() != c.item()


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_weighting_is_the_clipped_x0_loss(objective):
    """Hang et al. 2023: with min-SNR-gamma every objective's loss is min(SNR_t, gamma) ||x0 - x0_hat||^2."""
    s = make_schedule("cosine", 1000)
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 200, 500, 800, 990])
    output = torch.randn_like(x0)  # any network output: the identity holds for every guess

    def network(x_t, t_):
        return output

    gamma = 5.0
    loss = training_loss(network, s, x0, objective, t=t, noise=noise, min_snr_gamma=gamma)
    x0_hat = to_prediction(objective, s, output, q_sample(s, x0, t, noise), t).x0
    snr = s.log_snr[t].exp().double()
    expected = (snr.clamp(max=gamma) * ((x0 - x0_hat) ** 2).flatten(1).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # without the weighting the loss is the plain objective's mean squared error
    plain = training_loss(network, s, x0, objective, t=t, noise=noise)
    assert plain.item() == pytest.approx(((output - target(objective, s, x0, noise, t)) ** 2).mean().item(), rel=1e-6)
    assert plain.item() != pytest.approx(loss.item(), rel=1e-3)


def test_stratified_timesteps_are_uniform_one_to_a_stratum():
    """VDM's low-discrepancy sampler: each batch of n holds exactly one t in each of n equal strata
    of {0, ..., T-1}, and over many batches every position of the batch is still uniform on them."""
    from ddpm.diffusion.process import sample_timesteps

    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    batches = torch.stack([sample_timesteps(s, 8, "stratified", g) for _ in range(20_000)])
    assert batches.min() >= 0 and batches.max() <= 999
    strata = torch.sort(batches // 125, dim=1).values
    assert torch.equal(strata, torch.arange(8).expand_as(strata))  # one in each of [0, 125), [125, 250), ...
    for position in batches.T:  # uniform: the mean and variance of U{0, ..., 999}, and all tenths hit alike
        assert position.float().mean().item() == pytest.approx(499.5, abs=5)
        assert position.float().var().item() == pytest.approx((1000**2 - 1) / 12, rel=0.03)
        tenths = torch.bincount(position // 100, minlength=10).float() / len(position)
        assert torch.allclose(tenths, torch.full((10,), 0.1), atol=0.01)
    uniform = torch.stack([sample_timesteps(s, 8, "uniform", g) for _ in range(1000)])
    assert not torch.equal(torch.sort(uniform // 125, dim=1).values, torch.arange(8).expand(1000, 8))


def test_lognormal_timesteps_follow_edm_noise_levels():
    """ln sigma_t of the drawn timesteps is N(-1.2, 1.2^2) (Karras et al. 2022) where the schedule
    reaches: its median and quartiles match, and uniform sampling gives something else entirely."""
    from ddpm.diffusion.process import sample_timesteps

    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(s, 200_000, "lognormal", g)
    assert t.min() >= 0 and t.max() <= 999
    log_sigma = (-0.5 * s.log_snr[t]).float()
    q1, median, q3 = torch.quantile(log_sigma[:100_000], torch.tensor([0.25, 0.5, 0.75])).tolist()
    assert median == pytest.approx(-1.2, abs=0.02)
    assert q3 - q1 == pytest.approx(1.2 * 1.349, rel=0.02)  # the interquartile range of a normal is 1.349 sigma
    uniform = -0.5 * s.log_snr[sample_timesteps(s, 100_000, "uniform", g)]
    assert abs(uniform.median().item() - (-1.2)) > 0.5
    with pytest.raises(InputError, match="unknown timestep sampling"):
        sample_timesteps(s, 4, "beta")
