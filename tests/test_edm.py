"""EDM (Karras et al. 2022) checked in closed form: its preconditioning, loss weight and sampler on
Gaussian data, where the optimal denoiser and the probability-flow ODE's end point are known; the
Heun sampler's few-step failure that clipping caused; and an EDM-trained run with every sampler,
editing, guidance and latents."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import GaussianDenoiser, TINY, trained
from ddpm import Config, Diffusion, Editor, Pipeline
from ddpm.cli import main
from ddpm.diffusion.objectives import EDM, Eps, V, X0
from ddpm.diffusion.process import Denoiser, training_loss
from ddpm.diffusion.samplers import edm_sigmas, sample_edm
from ddpm.diffusion.schedules import make_schedule, spaced_timesteps
from ddpm.registry import SAMPLERS

MU = torch.tensor([0.3, -0.5, 0.0, 0.8], dtype=torch.float64).reshape(1, 1, 2, 2)
S = torch.tensor([0.5, 0.2, 1.0, 0.7], dtype=torch.float64).reshape(1, 1, 2, 2)
SCHEDULE = make_schedule("cosine", 1000)
# The samplers of a diffusion model's denoiser; `consistency` samples a consistency function (a student of
# distill.method ect): with a denoiser it re-noises posterior means, which shrinks the spread (test_consistency.py).
DIFFUSION_SAMPLERS = [name for name in SAMPLERS.names() if name != "consistency"]


def posterior_mean(x_ve, sigma):
    """E[x0 | x~] for x0 ~ N(MU, S^2), x~ = x0 + sigma eps: MU + S^2 / (S^2 + sigma^2) (x~ - MU)."""
    return MU + S**2 / (S**2 + sigma**2) * (x_ve - MU)


# The paper's formulas, written here apart from the code under test (EDM Table 1).
def paper(objective, sigma):
    """(c_skip, c_out, c_in) of `objective` at sigma, as Karras et al. and Salimans & Ho write them."""
    if isinstance(objective, EDM):
        sd = objective.sigma_data
        return sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), 1 / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + 1).sqrt()
    return {"eps": (1, -sigma, c_in), "x0": (0, 1, c_in), "v": (1 / (sigma**2 + 1), -sigma * c_in, c_in)}[objective.name]


class OptimalNetwork(torch.nn.Module):
    """The network that minimises `objective`'s loss for Gaussian data: F* = (E[x0 | x~] - c_skip x~) / c_out,
    read from what it is given: c_in x~ and the noise label (the timestep, or EDM's ln(sigma) / 4)."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def forward(self, x_in, label):
        if isinstance(self.objective, EDM):
            sigma = torch.exp(4 * label.double()).view(-1, 1, 1, 1)
        else:
            sigma = SCHEDULE.levels(label)[2].view(-1, 1, 1, 1)
        c_skip, c_out, c_in = paper(self.objective, sigma)
        x_ve = x_in / c_in
        return (posterior_mean(x_ve, sigma) - c_skip * x_ve) / c_out


OBJECTIVES = [Eps(), X0(), V(), EDM(0.5), EDM(1.0)]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: f"{o.name}{getattr(o, 'sigma_data', '')}")
def test_the_preconditioned_optimal_denoiser_is_the_exact_one(objective):
    """Through each preconditioning, the loss-minimising network is the exact denoiser of Gaussian
    data, at integer and at fractional timesteps (EDM's sampler asks between the grid's)."""
    for t in (torch.tensor([0, 10, 300, 600, 900, 999]), torch.tensor([0.5, 10.25, 333.3, 998.9], dtype=torch.float64)):
        x_t = torch.randn(len(t), 1, 2, 2, dtype=torch.float64)
        got = Denoiser(OptimalNetwork(objective), SCHEDULE, objective, clip_denoised=False)(x_t, t)
        exact = GaussianDenoiser(SCHEDULE, MU, S)(x_t, t)
        torch.testing.assert_close(got.x0, exact.x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got.eps, exact.eps, rtol=1e-7, atol=1e-7)


def test_edms_preconditioning_at_no_noise_and_at_infinite_noise():
    """sigma = 0: D(x; 0) = x, c_in = 1 / sigma_data. sigma -> oo: D ignores x~ (c_skip -> 0),
    c_out -> sigma_data, and c_in x~ has unit scale (c_in sigma -> 1). At sigma = sigma_data the
    skip and the network share the work: c_skip = 1/2, c_out = sigma_data / sqrt 2."""
    edm = EDM(0.5)
    zero, big, sd = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1e8, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert edm.c_skip(zero) == 1 and edm.c_out(zero) == 0 and edm.c_in(zero) == pytest.approx(2.0)
    assert edm.c_skip(big) == pytest.approx(0, abs=1e-15) and edm.c_out(big) == pytest.approx(0.5)
    assert (edm.c_in(big) * big).item() == pytest.approx(1.0)
    assert edm.c_skip(sd) == pytest.approx(0.5) and edm.c_out(sd) == pytest.approx(0.5 / math.sqrt(2))


def test_edms_loss_is_the_papers_weighted_denoising_loss():
    """Unit weight on F is lambda(sigma) ||D - x0||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2 (eq. 8),
    for any network output, at log-normal sigmas; and the objective reports that lambda."""
    edm = EDM(0.5)
    x0 = torch.rand(64, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise, output = torch.randn_like(x0), torch.randn_like(x0)
    sigma = edm.sample_sigma(64, torch.Generator().manual_seed(0), "cpu")
    loss = training_loss(lambda x, c: output, SCHEDULE, x0, edm, t=sigma, noise=noise)
    s = sigma.view(-1, 1, 1, 1)
    c_skip, c_out, _ = paper(edm, s)
    denoised = c_skip * (x0 + s * noise) + c_out * output
    lam = (s**2 + 0.25) / (s * 0.5) ** 2
    expected = (lam * (denoised - x0) ** 2).flatten(1).mean(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the loss is taken in float32
    torch.testing.assert_close(edm.weight(sigma), lam.flatten())


def test_edm_draws_its_training_noise_levels_log_normally():
    sigma = EDM(0.5, p_mean=-1.2, p_std=1.2).sample_sigma(100_000, torch.Generator().manual_seed(0), "cpu")
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.02) and sigma.log().std().item() == pytest.approx(1.2, rel=0.02)


def exact_ode_end(x_ve, sigma):
    """Where the probability-flow ODE dx~/dsigma = (x~ - D) / sigma carries x~ at sigma to sigma = 0, for
    Gaussian data: x~ - MU grows as sqrt(S^2 + sigma^2), so x~(0) = MU + (x~ - MU) S / sqrt(S^2 + sigma^2)."""
    return MU + (x_ve - MU) * S / (S**2 + sigma**2).sqrt()


def _edm_error(steps, **options):
    """Mean distance of EDM's sampler's output from the ODE's exact end point, exact denoiser, float64."""
    x = torch.randn((512, 1, 2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    timesteps = spaced_timesteps(1000, steps)
    sigma_start = edm_sigmas(steps, SCHEDULE, timesteps)[0]
    out = sample_edm(GaussianDenoiser(SCHEDULE, MU, S), x, SCHEDULE, timesteps, **options)
    return (out - exact_ode_end(x * math.sqrt(1 + sigma_start**2), torch.tensor(sigma_start))).abs().mean().item()


def test_edms_heun_converges_at_second_order_to_the_odes_end_point():
    errors = [_edm_error(steps) for steps in (8, 16, 32, 64)]
    assert all(a / b > 3.5 for a, b in zip(errors, errors[1:])), errors  # 2^2; a first-order slip gives 2
    assert errors[-1] < 2e-3, errors  # 0.15, 0.029, 0.0062, 0.0014 when written


def test_edms_noise_levels_are_equation_5():
    sigmas = edm_sigmas(10, SCHEDULE, spaced_timesteps(1000, 10), rho=7.0)
    assert sigmas[0] == 80.0 and sigmas[-1] == 0.0 and sigmas[-2] == pytest.approx(SCHEDULE.sigma[0].item())
    roots = torch.tensor(sigmas[:-1], dtype=torch.float64) ** (1 / 7)
    torch.testing.assert_close(roots.diff(), torch.full((9,), (roots[-1] - roots[0]).item() / 9, dtype=torch.float64))


def _heun_gain(sigma, sigma_next):
    """A with y_next = A y for y = x~ - MU: Heun's step on dy/dsigma = k(sigma) y, k = sigma / (S^2 + sigma^2)."""
    k = lambda s: s / (S**2 + s**2)  # noqa: E731
    h = sigma_next - sigma
    if sigma_next == 0:
        return 1 + h * k(sigma)  # Euler's last step
    return 1 + h * (k(sigma) + k(sigma_next) * (1 + h * k(sigma))) / 2


@pytest.mark.parametrize("steps", [16, 64])
def test_the_churned_samplers_marginals_stay_within_the_derived_bound(steps):
    """Churn adds noise to go from sigma_i to sigma^_i = (1 + gamma) sigma_i, then Heun integrates to
    sigma_{i+1}. Derivation, for Gaussian data and the exact denoiser: every step is linear in
    y = x~ - MU, so the output is Gaussian, and with e_i = Var(x~_i) / (S^2 + sigma_i^2) (1 when the
    marginal is exact) and A_i, r_i the gains of Heun's step and of the exact ODE,
        e_{i+1} = (A_i / r_i)^2 * (e_i (S^2 + sigma_i^2) + Delta_i) / (S^2 + sigma_i^2 + Delta_i),
    Delta_i = sigma^_i^2 - sigma_i^2, exactly. The second factor is a convex mix of e_i and 1, no
    further from 1 than e_i, so |log e_K| <= |log e_0| + 2 sum_i |log(A_i / r_i)|: churn can only pull
    the variance back towards the truth. The samples must match the exact recursion within sampling
    error, and so lie within the bound."""
    churn, n = 40.0, 40_000
    timesteps = spaced_timesteps(1000, steps)
    sigmas = edm_sigmas(steps, SCHEDULE, timesteps)
    gamma = min(churn / steps, math.sqrt(2) - 1)
    sigma0 = torch.tensor(sigmas[0], dtype=torch.float64)
    e = (1 + sigma0**2) / (S**2 + sigma0**2)  # x_T ~ N(0, I) in the VP view: Var(x~) = 1 + sigma^2
    bound = e.log().abs()
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        sigma, sigma_hat = torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma * (1 + gamma), dtype=torch.float64)
        gain = _heun_gain(sigma_hat, sigma_next) / ((S**2 + sigma_next**2) / (S**2 + sigma_hat**2)).sqrt()
        delta = sigma_hat**2 - sigma**2
        e = gain**2 * (e * (S**2 + sigma**2) + delta) / (S**2 + sigma**2 + delta)
        bound = bound + 2 * gain.log().abs()
    assert torch.all(e.log().abs() <= bound)
    g = torch.Generator().manual_seed(1)
    x = sample_edm(GaussianDenoiser(SCHEDULE, MU, S), torch.randn((n, 1, 2, 2), generator=g, dtype=torch.float64),
                   SCHEDULE, timesteps, churn=churn, generator=g)
    log_e = (x.var(0, keepdim=True) / S**2).log()
    sampling = 4 * math.sqrt(2 / n)  # the std of a log sample variance is sqrt(2 / n); allow four
    assert torch.all((log_e - e.log()).abs() <= sampling), (log_e, e.log())
    assert torch.all(log_e.abs() <= bound + sampling), (log_e, bound)
    assert torch.all((x.mean(0, keepdim=True) - MU).abs() <= 4 * S / math.sqrt(n) + 0.01 * MU.abs()), x.mean(0)
    if steps == 64:
        assert torch.all(log_e.abs() < 0.05), log_e  # the std within 2.5 % (1.7-2.0 % when written)


class Background(torch.nn.Module):
    """The exact eps network of 'background' data at the edge of the range, N(-0.97, 0.05^2), like
    MNIST's black. Sampled with clipping (every pixel run's default), the denoiser is no longer exact."""

    def forward(self, x, t):
        return GaussianDenoiser(SCHEDULE, torch.tensor(-0.97), torch.tensor(0.05))(x.double(), t).eps.float()


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_keeps_a_clipped_background_dark_in_five_steps(sampler):
    """The report: Heun at 5 steps (9 evaluations) turned MNIST's black backgrounds bright. Its
    corrector, at the last level, divides the gap between x and the clipped x0 by sin(phi) ~ 0.013 on
    the uniform grid: 64 % of pixels came out above 0. On its own spacing (quadratic) it does not."""
    config = Config().override({"data.image_size": 2, "data.channels": 1, "sample.steps": 5})
    pipe = Pipeline(Background(), Diffusion(SCHEDULE, "eps"), config)
    x = pipe(4000, sampler, 5, output="float", progress=False) * 2 - 1
    assert abs(x.mean().item() + 0.97) < 0.06 and (x > 0).float().mean().item() == 0, (x.mean(), (x > 0).float().mean())


@pytest.mark.parametrize("objective", [EDM(0.5), V()], ids=["edm", "v"])
@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_an_edm_network_works_with_every_sampler(objective, sampler):
    """The optimal EDM network, seen through its preconditioning at the schedule's timesteps,
    samples the Gaussian data with every sampler (and the same holds for a v network)."""
    mu, s = MU[0, 0, 0, 1].item(), S[0, 0, 0, 1].item()

    class Network(torch.nn.Module):
        def forward(self, x_in, label):
            return OptimalNetwork(objective)(x_in.double(), label).float()

    config = Config().override({"data.image_size": 2, "data.channels": 1, "sample.clip_denoised": False})
    pipe = Pipeline(Network(), Diffusion(SCHEDULE, objective), config)
    steps = 1000 if sampler == "ddpm" else 50
    # the pixel whose N(-0.5, 0.2^2) the output's clamp to [-1, 1] leaves alone
    x = pipe(2000, sampler, steps, output="float", progress=False, batch_size=2000)[:, 0, 0, 1] * 2 - 1
    assert abs(x.mean().item() - mu) < 0.05 and abs(x.std().item() / s - 1) < 0.06, (x.mean(), x.std())


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    return trained(tmp_path_factory, "edm", "--max-steps", "3", "--objective", "edm", "--classes", "10")


def test_an_edm_run_samples_with_every_sampler_edits_and_guides(edm_run, tmp_path):
    pipe = Pipeline.from_run(edm_run, device="cpu")
    assert isinstance(pipe.diffusion.objective, EDM) and pipe.diffusion.objective.sigma_data == 0.5
    for name in SAMPLERS.names():
        images = pipe(4, name, 4, guidance=2.0, classes=[1, 2], progress=False)
        assert images.shape == (4, 1, 28, 28)
    digit = pipe(1, progress=False)[0]
    edit, mask = Editor(pipe), torch.zeros(28, 28)
    mask[:, 14:] = 1
    filled = edit.inpaint(digit, mask, n=2, steps=4)
    assert torch.equal(filled[:, :, :, :14], digit[None, :, :, :14].expand(2, -1, -1, -1))
    assert torch.equal(edit.img2img(digit, 0.0, steps=4), digit[None])
    assert edit.reconstruct(edit.invert(digit, steps=4), steps=4).shape == (1, 1, 28, 28)
    assert main(["sample", "--run", str(edm_run), "--n", "2", "--sampler", "edm", "--steps", "3", "--churn", "5",
                 "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"), "--device", "cpu"]) == 0


def test_an_edm_latent_run_trains_and_samples(tmp_path):
    from helpers import tiny_autoencoder

    from ddpm.training.loop import train

    autoencoder = train(tiny_autoencoder(), tmp_path / "ae", progress=False).path
    out = tmp_path / "latent"
    assert main(["train", "--out", str(out), "--max-steps", "2", "--objective", "edm", "--autoencoder", str(autoencoder),
                 "--data", "digits", "--image-size", "16", *TINY]) == 0
    pipe = Pipeline.from_run(out, device="cpu")
    assert pipe.diffusion.objective.sigma_data == 1.0  # unit-variance latents
    assert pipe(2, "edm", 3, progress=False).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("flags, message", [
    (["--objective", "edm", "--set", "diffusion.p_std=0"], "diffusion.p_std must be > 0"),
    (["--objective", "edm", "--set", "diffusion.sigma_data=-1"], "diffusion.sigma_data must be > 0"),
    (["--set", "sample.rho=0"], "sample.rho must be > 0"),
    (["--set", "sample.churn=-1"], "sample.churn must be >= 0"),
    (["--objective", "edm", "--set", "diffusion.timestep_sampling=lognormal"], "the edm objective draws its own"),
])
def test_bad_edm_values_are_one_line_and_exit_2(flags, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), *flags, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "x").exists()


def test_bad_sampler_values_are_refused_before_sampling(edm_run, capsys):
    for flags, message in ((["--rho", "0"], "EDM's rho must be > 0"), (["--churn", "-1"], "EDM's churn must be >= 0")):
        assert main(["sample", "--run", str(edm_run), "--sampler", "edm", *flags, "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


def test_a_learning_rate_that_diverges_exits_3(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--lr", "1e30", "--max-steps", "30", "--objective", "edm", *TINY]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the loss became" in err and "is intact" in err, err
