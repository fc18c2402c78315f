"""The adversarial student (training/adversarial.py): its losses against hand values and closed forms,
a tiny GAN on 1-D Gaussian data, the frozen teacher inside the discriminator, the two optimisers each
moving only their own weights, a bit-exact resume across both, and the student as a run every command
takes."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import TINY, distill_refused, refused_cleanly, trained
from ddpm import Pipeline, train
from ddpm.cli import main
from ddpm.data.datasets import load_data
from ddpm.diffusion.process import Denoiser
from ddpm.storage.checkpoint import RunDir, load_state
from ddpm.training.adversarial import AdversarialTask, approximate_r1, hinge_d, hinge_g, r1_penalty
from ddpm.training.loop import make_task
from ddpm.training.tasks import Moment


def test_the_hinge_losses_against_hand_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # max(0, 1 - real) = 0, 0.5, 2 and max(0, 1 + fake) = 0, 1, 2.5: means 5/6 and 7/6
    assert hinge_d(real, fake).item() == pytest.approx(2.0)
    assert hinge_g(fake).item() == pytest.approx(-(-0.5 / 3))


def test_r1_on_a_linear_discriminator_is_its_weights_squared_norm():
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64)
    linear = lambda x: x @ w  # noqa: E731  (|grad D|^2 = |w|^2 at every x)
    x = torch.randn(64, 5, dtype=torch.float64)
    assert r1_penalty(linear, x).item() == pytest.approx(w.square().sum().item(), rel=1e-12)
    # the approximate one: E (sigma w.n)^2 = sigma^2 |w|^2
    noise = torch.randn(200_000, 5, dtype=torch.float64)
    x = torch.randn(200_000, 5, dtype=torch.float64)
    assert approximate_r1(linear, x, 0.01, noise).item() == pytest.approx(1e-4 * w.square().sum().item(), rel=0.02)


def test_the_adversarial_term_alone_moves_a_generator_to_the_datas_gaussian():
    """G(z) = a z + b against a discriminator that sees the first two moments: hinge losses alone carry
    b and |a| from N(0, 1) to the data's N(2, 0.5^2)."""
    torch.manual_seed(0)
    generator = nn.Linear(1, 1)
    nn.init.ones_(generator.weight), nn.init.zeros_(generator.bias)
    features = lambda x: torch.cat([x, x.square()], dim=1)  # noqa: E731
    discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    d = lambda x: discriminator(features(x)).squeeze(1)  # noqa: E731
    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-2, betas=(0.5, 0.99))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-2, betas=(0.5, 0.99))
    for _ in range(600):
        real = 2.0 + 0.5 * torch.randn(256, 1)
        fake = generator(torch.randn(256, 1))
        d_opt.zero_grad()
        (hinge_d(d(real), d(fake.detach())) + 1.0 * approximate_r1(d, real, 0.05, torch.randn_like(real))).backward()
        d_opt.step()
        g_opt.zero_grad()
        hinge_g(d(generator(torch.randn(256, 1)))).backward()
        g_opt.step()
    with torch.no_grad():
        samples = generator(torch.randn(20_000, 1))
    assert abs(samples.mean().item() - 2.0) < 0.2 and abs(samples.std().item() - 0.5) < 0.15, \
        (samples.mean().item(), samples.std().item())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return trained(tmp_path_factory, "adversarial-teacher", "--max-steps", "4")


def _student(teacher, out, *flags):
    assert main(["distill", "--method", "adversarial", "--run", str(teacher), "--out", str(out), "--device", "cpu",
                 "--no-progress", *flags]) == 0
    return RunDir(out)


def test_each_optimiser_moves_only_its_own_weights_and_the_teacher_none(teacher, tmp_path):
    student = _student(teacher, tmp_path / "student", "--max-steps", "1")
    moments = load_state(student.latest())["optimizer"]["state"]  # the loop's optimiser holds the student alone
    assert len(moments) == len(list(Pipeline.from_run(student.path, device="cpu").network.parameters()))
    config = student.load_config()
    task: AdversarialTask = make_task(config, load_data(config.data), torch.device("cpu"), False, False, student.path)
    generator = torch.Generator().manual_seed(0)
    x0 = task.batch(task.data.images[:8], generator)
    draws = task.draws(x0, None, generator, Moment(0))
    snapshot = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    teacher_before, student_before, heads_before = snapshot(task.teacher), snapshot(task.network), snapshot(task.heads)
    student = Denoiser(task.network, task.diffusion.schedule, task.diffusion.objective, clip_denoised=False)
    fake = student(*task.point(x0, draws.noise, draws.level)).x0.detach()
    task.discriminator_step(x0, fake, draws, 0)
    assert any(not torch.equal(heads_before[k], v) for k, v in task.heads.state_dict().items())  # the heads moved
    assert all(torch.equal(student_before[k], v) for k, v in task.network.state_dict().items())
    # The generator's step: the loss reaches the student through the teacher, and only the student moves.
    optimizer = torch.optim.SGD(task.network.parameters(), lr=0.1)
    loss = task.loss(task.network.train(), x0, draws)
    heads_after_d = snapshot(task.heads)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in task.teacher.parameters())  # no gradient reaches the teacher
    assert all(torch.equal(teacher_before[k], v) for k, v in task.teacher.state_dict().items())
    assert all(torch.equal(heads_after_d[k], v) for k, v in task.heads.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in task.network.state_dict().items())


def test_a_resumed_student_is_the_uninterrupted_one_bit_for_bit(teacher, tmp_path):
    flags = ["--max-steps", "4", "--set", "train.checkpoint_every=2"]
    straight = _student(teacher, tmp_path / "straight", *flags)
    broken = _student(teacher, tmp_path / "broken", *flags)
    shutil.rmtree(broken.checkpoints / "step_000004")
    (broken.checkpoints / "latest").write_text("step_000002")
    train(broken.load_config(), broken.path, resume=True, progress=False)
    for key in ("model", "ema", "heads"):
        a, b = (load_file(run.latest() / f"{key}.safetensors") for run in (straight, broken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    a, b = (load_state(run.latest())["task"]["d_optimizer"]["state"] for run in (straight, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i] if torch.is_tensor(a[i][k]))


def test_the_student_samples_in_1_to_4_steps_and_every_command_takes_it(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    student = _student(teacher, tmp_path / "student", "--max-steps", "2", "--steps", "4")
    pipe = Pipeline.from_run(student.path, device="cpu")
    for steps in (1, 2, 4):
        plan = pipe.plan(2, steps=steps)
        assert (plan.sampler, plan.nfe) == ("consistency", steps)
        assert pipe.draw(plan, 0).shape == (2, 1, 28, 28)
    assert main(["sweep", "--run", str(teacher), "--student", str(student.path), "--samplers", "ddim", "--steps", "1,2",
                 "--n", "3", "--ref-n", "4", "--out", str(tmp_path / "sweep"), "--device", "cpu"]) == 0
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[3:]] == [["consistency", "1"], ["consistency", "2"]]
    assert main(["report", "--run", str(student.path)]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(student.path), "--out", str(tmp_path / "exported")]) == 2
    assert "an adversarial student" in capsys.readouterr().err and not (tmp_path / "exported").exists()


def test_without_method_1_or_2_steps_get_the_adversarial_student_and_others_progressive(teacher, tmp_path, capsys):
    from ddpm.training.distill import method_for

    assert [method_for({"steps": k}) for k in (None, 1, 2, 3, 4, 8)] == [
        "progressive", "adversarial", "adversarial", "progressive", "progressive", "progressive"]
    assert method_for({"steps": 2, "from_steps": 8}) == "progressive"  # its own options choose it
    assert method_for({"steps": 1, "method": "ect"}) == "ect"
    capsys.readouterr()
    assert main(["distill", "--run", str(teacher), "--out", str(tmp_path / "student"), "--steps", "1", "--max-steps", "1",
                 "--device", "cpu", "--no-progress"]) == 0
    assert RunDir(tmp_path / "student").load_config().distill.method == "adversarial"
    assert "--steps 1 without --method: an adversarial student" in capsys.readouterr().err


def test_a_conditional_teacher_with_guidance_distilled_in(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "--out", str(teacher), "--max-steps", "2", "--classes", "10", *TINY]) == 0
    student = _student(teacher, tmp_path / "student", "--max-steps", "2", "--guidance", "2", "--steps", "1")
    pipe = Pipeline.from_run(student.path, device="cpu")
    assert pipe.config.sample.guidance == 1.0  # the guided teacher is the anchor: the student samples at 1
    assert pipe(4, classes=[1, 2], progress=False).shape == (4, 1, 28, 28)


def test_it_starts_from_another_student_with_init(teacher, tmp_path, capsys):
    ect = tmp_path / "ect"
    assert main(["distill", "--method", "ect", "--run", str(teacher), "--out", str(ect), "--max-steps", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    student = _student(teacher, tmp_path / "adversarial", "--max-steps", "1", "--init", str(ect))
    config = student.load_config()
    assert config.distill.init == str(ect) and config.distill.init_sha256
    task = make_task(config, load_data(config.data), torch.device("cpu"), False, False, student.path)
    start, first = (load_file(RunDir(run).latest() / "ema.safetensors") for run in (ect, teacher))
    assert any(not torch.equal(start[k], first[k]) for k in start)  # the two differ: which one it took shows
    assert all(torch.equal(task.network.state_dict()[k], v) for k, v in start.items())
    assert all(torch.equal(task.teacher.state_dict()[k], v) for k, v in first.items())
    refused_cleanly(["distill", "--method", "ect", "--run", str(teacher), "--out", str(tmp_path / "other"), "--init",
                     str(ect), "--max-steps", "2", "--device", "cpu"], "--init starts an adversarial student from "
                    "another student", capsys, teacher, tmp_path / "other")


@pytest.mark.parametrize("argv, message", [
    (["--method", "gan"], "invalid choice: 'gan'"),
    (["--steps", "0"], "distill.steps"),
    (["--steps", "9"], "--steps must be 1 to 4 for an adversarial student"),
    (["--phase-steps", "2"], "an adversarial student's budget is --max-steps or --max-minutes"),
    (["--set", "consistency.stages=2"], "consistency.stages is a setting of another student method"),
    (["--share", "0.3"], "--method adversarial does not take it (its own: --set adversarial.share=...)"),
    (["--run", "{ae}"], "is an autoencoder run"),
    (["--out", "{teacher}"], "already holds a run"),
    (["--init", "{teacher}"], "--init takes a student run of the teacher's network (ddpm distill)"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, teacher, tmp_path, capsys):
    from helpers import tiny_autoencoder

    ae = train(tiny_autoencoder(**{"train.max_steps": 1}), tmp_path / "ae", progress=False).path
    distill_refused(["--method", "adversarial", "--max-steps", "2"], argv, message, capsys, teacher, tmp_path, ae=ae)
