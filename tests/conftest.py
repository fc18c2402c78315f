"""Shared helpers: tiny configs that train in seconds on the embedded data, and an analytic denoiser."""

from __future__ import annotations

import os

from pathlib import Path

import pytest
import torch

from ddpm import Config, NoiseSchedule, Prediction

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of make test's workers, one per core (Makefile):
    torch.set_num_threads(1)  # one thread each, here
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes its tests start
# A color run's time budget sizes its network by this CPU's speed (recipe.sized_by_budget): the tests
# give every process the speed of the machine the sizes were measured on, so that none depends on the
# machine that runs it. The tests of the measure itself unset it.
os.environ["DDPM_CPU_GFLOPS"] = "171"


def tiny_config(**overrides) -> Config:
    """A config whose model trains a step in milliseconds on MNIST-5k (28x28)."""
    config = Config()
    config.model.channels = [8, 16]
    config.model.attention = [False, True]
    config.model.time_emb_dim = 16
    config.train.batch_size = 8
    config.train.max_steps = 6
    config.train.warmup_steps = 2
    config.train.log_every = 1
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.train.grid_size = 4
    config.train.device = "cpu"
    config.sample.steps = 4
    config.diffusion.timesteps = 100
    return config.override(overrides)


def trained(tmp_path_factory, name: str, *flags: str) -> Path:
    """A tiny run for a module's tests, trained by the command line with test_cli.TINY and `flags`
    (its budget, data, objective...)."""
    from test_cli import TINY

    from ddpm.cli import main

    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", "--out", str(out), *flags, *TINY]) == 0
    return out


def refused_cleanly(argv: list, message: str, capsys, kept: Path, absent: Path) -> None:
    """`ddpm argv` is bad input: exit status 2, one line on stderr holding `message`, no file under `kept`
    touched and nothing at `absent` written."""
    from ddpm.cli import main

    before = {p: p.stat().st_mtime_ns for p in kept.rglob("*")}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not absent.exists() and {p: p.stat().st_mtime_ns for p in kept.rglob("*")} == before


class GaussianDenoiser:
    """The optimal denoiser for data x0 ~ N(mu, diag(sigma^2)), in closed form.

    With x_t = a x0 + s eps (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)), x_t is Gaussian with
    variance a^2 sigma^2 + s^2, and E[eps | x_t] = s (x_t - a mu) / (a^2 sigma^2 + s^2). A sampler
    that is right must turn N(0, I) noise into samples with mean mu and standard deviation sigma.
    """

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor, sigma: torch.Tensor):
        self.schedule, self.mu, self.sigma = schedule, mu, sigma

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        # at the schedule's timesteps, or between them (fractional t: EDM's sampler)
        a, s, _ = (level.to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1)) for level in self.schedule.levels(t))
        eps = s * (x_t - a * self.mu) / (a**2 * self.sigma**2 + s**2)
        return Prediction(eps=eps, x0=(x_t - s * eps) / a)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
