"""EDM2's learned loss weighting u(sigma) (diffusion/weighting.py).

Closed form: for each noise level, lambda / exp(u) * L + u is smallest at exp(u) = lambda * L, so u
trained alone on losses fixed per level learns the log of each level's loss.
"""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file

from helpers import tiny_config
from ddpm import train
from ddpm.diffusion.process import training_loss
from ddpm.diffusion.schedules import make_schedule
from ddpm.diffusion.weighting import LossWeighting, uncertainty_weighted
from ddpm.storage.checkpoint import RunDir


def test_u_alone_learns_the_log_of_each_levels_loss():
    torch.manual_seed(0)
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    losses = torch.tensor([0.002, 0.05, 0.4, 0.9, 1.5])  # a loss that grows with the noise, as a denoiser's does
    u = LossWeighting()
    optimizer = torch.optim.Adam(u.parameters(), lr=0.02)
    for _ in range(600):
        optimizer.zero_grad()
        uncertainty_weighted(losses, u(sigmas)).mean().backward()
        optimizer.step()
        u.normalize_weights()
    assert torch.allclose(u(sigmas).exp(), losses, rtol=0.05), (u(sigmas).exp(), losses)


def test_the_weighted_loss_is_the_plain_one_over_exp_u_plus_u():
    torch.manual_seed(0)
    network = lambda x, t: 0.9 * x  # noqa: E731
    schedule = make_schedule("cosine", 100)
    x0, t, noise = torch.randn(6, 1, 4, 4), torch.randint(0, 100, (6,)), torch.randn(6, 1, 4, 4)
    u = LossWeighting()
    per_level = [training_loss(network, schedule, x0[i:i + 1], "v", t=t[i:i + 1], noise=noise[i:i + 1])
                 for i in range(6)]
    sigma = (schedule.levels(t)[1] / schedule.levels(t)[0]).float()
    expected = torch.stack([loss / u(sigma[i:i + 1]).exp() + u(sigma[i:i + 1]) for i, loss in enumerate(per_level)])
    got = training_loss(network, schedule, x0, "v", t=t, noise=noise, weighting=u)
    assert torch.allclose(got, expected.mean(), rtol=1e-5)


def test_a_run_trains_u_keeps_it_normalised_and_resumes_it_bit_exactly(tmp_path):
    config = tiny_config(**{"diffusion.loss_weighting": "learned", "train.checkpoint_every": 2, "train.max_steps": 4})
    straight = train(config, tmp_path / "straight", progress=False)
    first = LossWeighting().state_dict()["linear.weight"]
    trained = load_file(straight.latest() / "loss_weighting.safetensors")["linear.weight"]
    assert not torch.equal(trained, first)  # the optimiser holds it
    assert torch.allclose(trained.norm(dim=1), torch.tensor(trained.shape[1] ** 0.5), rtol=1e-4)  # forced: unit RMS
    broken = train(config, tmp_path / "broken", progress=False)
    shutil.rmtree(broken.checkpoints / "step_000004")
    (broken.checkpoints / "latest").write_text("step_000002")
    train(config, broken.path, resume=True, progress=False)
    for name in ("model", "loss_weighting"):
        a, b = (load_file(run.latest() / f"{name}.safetensors") for run in (straight, RunDir(broken.path)))
        assert all(torch.equal(a[k], b[k]) for k in a), name
