"""Consistency students (easy consistency tuning, Geng et al. 2024), checked in closed form where one
exists: the boundary condition holds exactly for every objective; on Gaussian data the exact
consistency function is the probability-flow ODE's map, one step of the sampler with it lands on the
teacher's ODE end point and two keep the data's law; ECT's loss pulls a perturbed function back to
the exact one and not elsewhere; the target shares the student's noise and dropout mask; a resumed
tuning is the uninterrupted one bit for bit; and the student is a run that every command takes."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import GaussianDenoiser, distill_refused, TINY, trained
from ddpm import Pipeline, train
from ddpm.cli import main
from ddpm.config import Config
from ddpm.diffusion.consistency import (
    ConsistencyFunction,
    consistency_sigmas,
    consistency_weights,
    ect_levels,
    ect_loss,
    ect_partner,
    sample_consistency,
)
from ddpm.diffusion.objectives import Prediction
from ddpm.diffusion.process import Denoiser
from ddpm.diffusion.samplers import sample_ddim
from ddpm.diffusion.schedules import make_schedule
from ddpm.factory import build_diffusion, build_network
from ddpm.storage.checkpoint import RunDir
from ddpm.training.consistency import ConsistencyTask, PairDraws
from ddpm.training.distill import distill
from ddpm.training.tasks import Moment

SCHEDULE = make_schedule("cosine", 1000)
SIGMA_MIN = float(SCHEDULE.sigma[0])
MU, SD = 0.3, 0.4


def exact_map(x_ve, sigma):
    """The exact consistency function of N(MU, SD^2) data: the ODE x~(sigma) - mu ∝ sqrt(SD^2 + sigma^2)
    carried down to sigma_min."""
    return MU + torch.sqrt((SD**2 + SIGMA_MIN**2) / (SD**2 + sigma**2)) * (x_ve - MU)


class ExactConsistency:
    """That function as a sampler calls it: f(x_t, t) -> Prediction(eps, x0 = f)."""

    schedule = SCHEDULE

    def __call__(self, x_t, t):
        a, s, sigma = (v.to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1)) for v in SCHEDULE.levels(t))
        f = exact_map(x_t / a, sigma)
        return Prediction(eps=(x_t - a * f) / s, x0=f)


def tiny_network(objective: str, dropout: float = 0.0):
    config = Config().override({"model.channels": [8, 16], "model.attention": [False, True], "model.time_emb_dim": 16,
                                "model.dropout": dropout, "diffusion.objective": objective, "data.image_size": 8})
    network = build_network(config)
    with torch.no_grad():  # not the zero-initialised output layers: a network whose output depends on its input
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    return network, config


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "edm"])
def test_the_boundary_condition_holds_exactly_for_every_objective(objective):
    """f(x~, sigma_min) = x~, whatever the network outputs; elsewhere f is not x~, and at high noise it is
    the network's own denoiser."""
    network, config = tiny_network(objective)
    denoiser = Denoiser(network.eval(), SCHEDULE, build_diffusion(config).objective, clip_denoised=False)
    f = ConsistencyFunction(denoiser)
    x_t = torch.randn(3, 1, 8, 8)
    x_ve = x_t / SCHEDULE.sqrt_alpha_bar[0].float()
    with torch.no_grad():
        for t in (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.float64)):
            torch.testing.assert_close(f(x_t, t).x0, x_ve, rtol=2e-7, atol=0)
        middle = torch.full((3,), 500)
        assert (f(x_t, middle).x0 - x_t / SCHEDULE.sqrt_alpha_bar[500].float()).abs().max() > 1e-2
        top = torch.full((3,), 999)
        torch.testing.assert_close(f(x_t, top).x0, denoiser(x_t, top).x0, rtol=1e-4, atol=1e-4)


def test_the_weights_are_the_consistency_parametrisation():
    """a x~ + b D, with D = c_skip' x~ + c_out' F, is Song et al.'s c_skip x~ + c_out F for any F."""
    sigma, x, F, sd = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64), 0.7, -1.3, 0.5
    a, b = consistency_weights(sigma, SIGMA_MIN, sd)
    D = sd**2 / (sigma**2 + sd**2) * x + sigma * sd / (sigma**2 + sd**2).sqrt() * F
    c_skip = sd**2 / ((sigma - SIGMA_MIN) ** 2 + sd**2)
    c_out = sd * (sigma - SIGMA_MIN) / (sigma**2 + sd**2).sqrt()
    torch.testing.assert_close(a * x + b * D, c_skip * x + c_out * F, rtol=1e-12, atol=1e-12)


def test_one_step_with_the_exact_function_is_the_teachers_ode_end_point():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 1, 1, 1, dtype=torch.float64, generator=generator)
    top = float(SCHEDULE.sigma[-1])
    one = sample_consistency(ExactConsistency(), z, SCHEDULE, [999], sigma_max=1e9)
    torch.testing.assert_close(one, exact_map(top * z, torch.tensor(top, dtype=torch.float64)), rtol=1e-9, atol=1e-9)
    # the teacher's own ODE, DDIM in all 1,000 steps from the same x_T, ends there too (at sigma = 0, not sigma_min)
    teacher = GaussianDenoiser(SCHEDULE, torch.tensor(MU, dtype=torch.float64), torch.tensor(SD, dtype=torch.float64))
    ode = sample_ddim(teacher, z * float(SCHEDULE.sqrt_one_minus_alpha_bar[-1]), SCHEDULE, list(range(999, -1, -1)))
    assert (one - ode).abs().max() < 5e-3 and (one - ode).abs().mean() < 1e-3  # DDIM's first-order error


@pytest.mark.parametrize("steps", [2, 4])
def test_several_steps_with_the_exact_function_keep_the_datas_law(steps):
    """Each step's f is an exact sample of N(MU, SD^2 + sigma_min^2), so re-noising it to the next level and
    mapping again must keep that law: a wrong re-noising scale would not."""
    generator = torch.Generator().manual_seed(2)
    x = sample_consistency(ExactConsistency(), torch.randn(40000, 1, 1, 1, dtype=torch.float64, generator=generator),
                           SCHEDULE, list(range(steps)), generator=generator)
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - math.sqrt(SD**2 + SIGMA_MIN**2)) < 0.01


def test_the_sampling_levels():
    assert consistency_sigmas(1, schedule=SCHEDULE) == [80.0]
    assert consistency_sigmas(2, schedule=SCHEDULE) == [80.0, 0.821]  # ECT's, at t = 432.2 of this schedule
    assert abs(SCHEDULE.timestep(torch.tensor([0.821])).item() - 432.18) < 0.01
    assert consistency_sigmas(3, "5,1", 10.0, SCHEDULE) == [10.0, 5.0, 1.0]
    for bad, message in [("1", "takes 2 intermediate"), ("1,5", "must descend"), ("a,b", "comma-separated numbers"),
                         ("5,0.001", "above the model's lowest level")]:
        with pytest.raises(Exception, match=message):
            consistency_sigmas(3, bad, 80.0, SCHEDULE)


def test_the_partner_level_follows_ects_mapping():
    t = torch.tensor([80.0, 1.0, 0.05], dtype=torch.float64)
    r0 = ect_partner(t, 0, 2.0, 8.0, 1.0, SIGMA_MIN)  # q^-1 (1 + 8 sigmoid(-t)): 0.5 at t = 80, > 1 at low noise
    torch.testing.assert_close(r0, torch.tensor([40.0, SIGMA_MIN, SIGMA_MIN], dtype=torch.float64))
    r3 = ect_partner(t, 3, 2.0, 8.0, 1.0, SIGMA_MIN)
    expected = t * (1 - (1 + 8 * torch.sigmoid(-t)) / 16)
    torch.testing.assert_close(r3, expected)
    drawn = ect_levels(100000, -1.1, 2.0, SCHEDULE, torch.Generator().manual_seed(0), "cpu")
    assert abs(drawn.log().median().item() + 1.1) < 0.02 and drawn.min() >= float(SCHEDULE.sigma[1])


def test_the_loss_is_ects_distance_over_the_gap():
    f_t, f_r = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)  # |f_t - f_r| = 2 for each image
    t, r = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)
    assert ect_loss(f_t, f_r, t, r, 0.0).item() == pytest.approx((2 / 0.5 + 2 / 1.0) / 2)
    assert ect_loss(f_t, f_r, t, r, 0.5).item() == pytest.approx(((4.25**0.5 - 0.5) / 0.5 + (4.25**0.5 - 0.5)) / 2)


def _task(objective: str = "x0") -> ConsistencyTask:
    """The task's loss alone, without data or a run."""
    task = ConsistencyTask.__new__(ConsistencyTask)
    task.config = Config().override({"diffusion.objective": objective, "data.image_size": 8})
    task.diffusion = build_diffusion(task.config)
    return task


class Perturbed(nn.Module):
    """An x0-predicting 'network' whose consistency function is the exact one of N(MU, SD^2) plus
    theta (sigma - sigma_min) / (1 + sigma)^2 (x~ - MU): consistent along the ODE only at theta = 0."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        a, _, sigma = (v.to(x_t.dtype).view(-1, 1, 1, 1) for v in SCHEDULE.levels(t))
        x = x_t / a
        f = exact_map(x, sigma) + self.theta * (sigma - SIGMA_MIN) / (1 + sigma) ** 2 * (x - MU)
        weight_x, weight_d = consistency_weights(sigma, SIGMA_MIN, 0.5)
        return (f - weight_x * x) / weight_d.clamp(min=1e-30)


def test_ects_loss_pulls_a_perturbed_function_back_to_the_exact_one():
    """At a late stage (a small gap t - r) the gradient of the task's loss on 1-D Gaussian data is about
    zero at the exact function and points back to it from either side. A target with fresh noise (not
    on the student's trajectory) pulls elsewhere: its gradient at the exact function is far from zero."""
    task, network = _task(), Perturbed()
    generator = torch.Generator().manual_seed(3)
    n = 200000
    x0 = MU + SD * torch.randn(n, 1, 1, 1, generator=generator)
    t = ect_levels(n, -1.1, 2.0, SCHEDULE, generator, "cpu")
    r = ect_partner(t, 7, 2.0, 8.0, 1.0, SIGMA_MIN)
    noise = torch.randn(x0.shape, generator=generator)
    gradients = {}
    for theta in (-0.3, 0.0, 0.3):
        network.theta.data.fill_(theta)
        network.zero_grad()
        task.loss(network, x0, PairDraws(None, t, r, noise)).backward()
        gradients[theta] = network.theta.grad.item()
    assert gradients[-0.3] < 0 < gradients[0.3], gradients
    assert abs(gradients[0.0]) < 0.1 * min(-gradients[-0.3], gradients[0.3]), gradients


def test_the_target_shares_the_students_noise_and_dropout_mask():
    """With r a hair below t, the same noise and the same dropout mask, f(x_r, r) is f(x_t, t) to first order
    and the loss is the bounded derivative; a fresh mask or fresh noise would make it ~1 / (t - r)."""
    task = _task("v")
    network, _ = tiny_network("v", dropout=0.5)
    network.train()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.tensor([0.05, 0.5, 3.0, 20.0], dtype=torch.float64)
    r = t * (1 - 1e-6)
    loss = task.loss(network, x0, PairDraws(None, t, r, torch.randn(x0.shape)))
    assert torch.isfinite(loss) and loss.item() < 1e3, loss.item()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return trained(tmp_path_factory, "teacher", "--max-steps", "4", "--set", "model.dropout=0.2")


def test_the_stage_follows_the_budget(teacher, tmp_path):
    student = distill(str(teacher), str(tmp_path / "s"), method="ect", progress=False,
                      overrides={"train.max_steps": 8, "consistency.stages": 4})
    task = ConsistencyTask.__new__(ConsistencyTask)
    task.config = RunDir(student.path).load_config()
    assert [task.stage(Moment(step)) for step in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    config = task.config
    assert (config.sample.sampler, config.sample.steps, config.sample.clip_denoised) == ("consistency", 2, False)
    assert config.train.lr == pytest.approx(Config().train.lr * 0.1) and config.train.max_minutes is None


def test_a_resumed_tuning_is_the_uninterrupted_one_bit_for_bit(teacher, tmp_path):
    """Stopped after step 4 of 6 (stages change at 2 and 4; dropout draws from the global generator)."""
    kwargs = dict(method="ect", progress=False, overrides={"train.max_steps": 6, "consistency.stages": 3,
                                                           "train.checkpoint_every": 2})
    straight = distill(str(teacher), str(tmp_path / "straight"), **kwargs)
    broken = distill(str(teacher), str(tmp_path / "broken"), **kwargs)
    shutil.rmtree(broken.checkpoints / "step_000006")
    (broken.checkpoints / "latest").write_text("step_000004")
    train(RunDir(broken.path).load_config(), broken.path, resume=True, progress=False)
    for key in ("model", "ema"):
        a, b = (load_file(run.latest() / f"{key}.safetensors") for run in (straight, broken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


def test_the_student_is_a_run_every_command_takes(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "student"
    assert main(["distill", "--method", "ect", "--run", str(teacher), "--out", str(student), "--max-steps", "3",
                 "--steps", "1", "--device", "cpu", "--no-progress"]) == 0
    pipe = Pipeline.from_run(student, device="cpu")
    plan = pipe.plan(2)
    assert (plan.sampler, plan.steps, plan.nfe) == ("consistency", 1, 1)
    assert isinstance(pipe.denoiser(plan), ConsistencyFunction)
    run = ["--run", str(student), "--device", "cpu"]
    assert main(["sample", *run, "--n", "3", "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png")]) == 0
    assert main(["sample", *run, "--n", "2", "--steps", "3", "--sigmas", "5,0.5", "--out", str(tmp_path / "s3.npz"),
                 "--grid", str(tmp_path / "g3.png")]) == 0
    assert main(["eval", *run, "--n", "3", "--ref-n", "4"]) == 0
    assert main(["sweep", "--run", str(teacher), "--student", str(student), "--samplers", "ddim", "--steps", "1,2",
                 "--n", "3", "--ref-n", "4", "--out", str(tmp_path / "sweep"), "--device", "cpu"]) == 0
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [["ddim", "1", "1"], ["ddim", "2", "2"], ["consistency", "1", "1"],
                                                    ["consistency", "2", "2"]]
    assert main(["show", "trajectory", "--run", str(student), "--frames", "2", "--steps", "2",
                 "--out", str(tmp_path / "t.png")]) == 0
    assert main(["edit", "img2img", *run, "--image", str(tmp_path / "s.npz"), "--strength", "0.5", "--n", "1",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert main(["report", "--run", str(student)]) == 0
    capsys.readouterr()  # diffusers' DDPMPipeline would sample it as a denoiser: refused, with why
    assert main(["export", "--run", str(student), "--out", str(tmp_path / "exported")]) == 2
    assert "a consistency student" in capsys.readouterr().err and not (tmp_path / "exported").exists()


def test_latent_and_conditional_teachers_tune(tmp_path):
    from helpers import tiny_autoencoder

    autoencoder = train(tiny_autoencoder(), tmp_path / "ae", progress=False).path
    latent = tmp_path / "latent"
    assert main(["train", "--out", str(latent), "--max-steps", "2", "--autoencoder", str(autoencoder), "--data", "digits",
                 "--image-size", "16", "--classes", "10", *TINY]) == 0
    assert main(["distill", "--method", "ect", "--run", str(latent), "--out", str(tmp_path / "student"),
                 "--max-steps", "2", "--guidance", "2", "--device", "cpu", "--no-progress"]) == 0
    pipe = Pipeline.from_run(tmp_path / "student", device="cpu")
    assert pipe.config.sample.guidance == 2.0 and pipe.codec is not None
    assert pipe(4, classes=[1, 2], progress=False).shape == (4, 1, 16, 16)  # decoded


@pytest.mark.parametrize("argv, message", [
    (["--method", "lcm"], "invalid choice: 'lcm'"),
    (["--steps", "0"], "distill.steps"),
    (["--steps", "9"], "--steps must be 1 to 8 for a consistency student"),
    (["--phase-steps", "2"], "an ect student's budget is --max-steps or --max-minutes"),
    (["--method", "progressive", "--phase-steps", "2"], "train.max_steps is for --method ect"),
    (["--set", "model.channels=[4,8]"], "--set takes train.*, consistency.*, adversarial.* and model.dropout"),
    (["--run", "{ae}"], "is an autoencoder run"),
    (["--out", "{teacher}"], "already holds a run"),
])
def test_bad_tunings_are_one_line_exit_2_and_write_nothing(argv, message, teacher, tmp_path, capsys):
    from helpers import tiny_autoencoder

    ae = train(tiny_autoencoder(**{"train.max_steps": 1}), tmp_path / "ae", progress=False).path
    distill_refused(["--method", "ect", "--max-steps", "2"], argv, message, capsys, teacher, tmp_path, ae=ae)


def test_the_page_streams_a_consistency_students_steps(teacher, tmp_path):
    """`ddpm serve` on a student: its own sampler's steps stream, the intermediate sigmas come as text,
    and the images are the pipeline's."""
    import io
    import threading

    import numpy as np
    from PIL import Image
    from helpers import events, request

    from ddpm.serve.server import Server, load_models

    student = distill(str(teacher), str(tmp_path / "s"), method="ect", progress=False, overrides={"train.max_steps": 2})
    server = Server(load_models([str(student.path)], "cpu"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        status, body = request(server, "POST", "/api/draw", {"task": "sample", "steps": 3, "seed": 1, "n": 2,
                                                             "options": {"sigmas": "5,0.5"}})
        stream = events(body)
        assert status == 200 and [name for name, _ in stream] == ["start"] + ["step"] * 3 + ["done"]
        assert [value["sigma"] for name, value in stream if name == "step"] == pytest.approx([80.0, 5.0, 0.5], rel=1e-4)
        expected = Pipeline.from_run(student.path, device="cpu")(2, None, 3, seed=1, sigmas="5,0.5", progress=False)
        for k, url in enumerate(stream[-1][1]["png"]):
            status, image = request(server, "GET", url)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), expected[k, 0].numpy())
        status, info = request(server, "GET", "/api/runs")
        options = [o for s in json.loads(info)[0]["samplers"] if s["name"] == "consistency" for o in s["options"]]
        assert {o["name"]: o["text"] for o in options} == {"sigmas": True, "sigma_max": False}
    finally:
        server.shutdown()
        server.server_close()
