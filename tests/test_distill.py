"""Progressive distillation, checked exactly: the target makes one student DDIM step land where two
teacher steps land, for any network; on Gaussian data it is the analytic two-step map; a halving swaps
the teacher; a resumed distillation is the uninterrupted one bit for bit; and the student is a run
that every command takes, latent and class-conditional ones too."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import GaussianDenoiser, distill_refused, TINY, trained
from ddpm import Pipeline, UNet, train
from ddpm.cli import main
from ddpm.diffusion.objectives import Prediction
from ddpm.diffusion.process import Denoiser
from ddpm.diffusion.schedules import make_schedule
from ddpm.storage.checkpoint import RunDir, load_meta
from ddpm.training.distill import distill
from ddpm.training.progressive import ddim_to, distillation_loss, student_step, teacher_levels, two_step_target

SCHEDULE = make_schedule("cosine", 1000)


def _levels(t):
    if int(t) < 0:  # the data
        return torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    return SCHEDULE.sqrt_alpha_bar[t], SCHEDULE.sqrt_one_minus_alpha_bar[t]


@pytest.mark.parametrize("level", [0, 3, 7])  # the first step (pure noise), one in the middle, the last (onto the data)
def test_one_student_step_on_the_target_lands_where_two_teacher_steps_do(level):
    """For any network: the student's DDIM step from t to t'', predicting x0 = x̃, reaches the teacher's z''."""
    torch.manual_seed(0)
    network = UNet(1, [8, 16], [False, True], time_emb_dim=16).double().eval()
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.1)
    teacher = Denoiser(network, SCHEDULE, "v", clip_denoised=True)
    grid = teacher_levels(1000, 16)
    t, t_mid, t_end = student_step(grid, torch.full((4,), level))
    x_t = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        target = two_step_target(teacher, SCHEDULE, x_t, t, t_mid, t_end)
        (a, s), (a1, s1), (a2, s2) = _levels(t[0]), _levels(t_mid[0]), _levels(t_end[0])
        z = ddim_to(teacher(x_t, t), x_t, a1, s1)
        z = ddim_to(teacher(z, t_mid), z, a2, s2)  # the teacher's two steps
    one_step = ddim_to(Prediction(eps=(x_t - a * target) / s, x0=target), x_t, a2, s2)  # the student's one
    torch.testing.assert_close(one_step, z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("level", [0, 7])  # SNR ≈ 1e-7 at the top, where the weight is 1; SNR ≫ 1 at the last step
def test_the_loss_weighs_each_image_by_the_truncated_snr(level):
    torch.manual_seed(0)
    network = UNet(1, [8, 16], [False, True], time_emb_dim=16).double().eval()
    student = Denoiser(network, SCHEDULE, "v", clip_denoised=False)
    teacher = GaussianDenoiser(SCHEDULE, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64))
    grid, level = teacher_levels(1000, 16), torch.full((3,), level)
    x0, noise = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t, t_mid, t_end = student_step(grid, level)
    a, s = _levels(t[0])
    x_t = a * x0 + s * noise
    with torch.no_grad():
        error = (student(x_t, t).x0 - two_step_target(teacher, SCHEDULE, x_t, t, t_mid, t_end)) ** 2
        loss = distillation_loss(student, teacher, SCHEDULE, grid, x0, level, noise)
    torch.testing.assert_close(loss, max(a**2 / s**2, 1.0) * error.mean(), rtol=1e-6, atol=0, check_dtype=False)


def test_on_gaussian_data_the_target_is_the_analytic_two_step_map():
    """With the exact denoiser of N(mu, s^2), a DDIM step is affine: z' = (s'/s) z + (a' - a s'/s) x̂0(z),
    x̂0(z) = mu + a s^2 / (a^2 s^2 + s_t^2) (z - a mu). Two of them, solved for x̃, in closed form."""
    mu, sd = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    teacher = GaussianDenoiser(SCHEDULE, mu, sd)
    grid = teacher_levels(1000, 8)
    for level in range(4):
        t, t_mid, t_end = student_step(grid, torch.full((5,), level))
        x_t = torch.randn(5, 1, 1, 1, dtype=torch.float64)
        target = two_step_target(teacher, SCHEDULE, x_t, t, t_mid, t_end)
        (a, s), (a1, s1), (a2, s2) = _levels(t[0]), _levels(t_mid[0]), _levels(t_end[0])

        def step(z, a, s, a_next, s_next):
            x0 = mu + a * sd**2 / (a**2 * sd**2 + s**2) * (z - a * mu)
            return s_next / s * z + (a_next - a * s_next / s) * x0

        z2 = step(step(x_t, a, s, a1, s1), a1, s1, a2, s2)
        torch.testing.assert_close(target, (z2 - s2 / s * x_t) / (a2 - s2 / s * a), rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return trained(tmp_path_factory, "teacher", "--max-steps", "4")


def test_a_halving_makes_the_students_ema_the_next_teacher(teacher, tmp_path):
    student = distill(str(teacher), str(tmp_path / "student"), steps=2, from_steps=8, phase_steps=3, progress=False,
                      overrides={"train.checkpoint_every": 1000})
    first, second = RunDir(student.path).all_checkpoints()
    assert (load_meta(first)["student_steps"], load_meta(second)["student_steps"]) == (4, 2)
    assert load_meta(first)["keep"] and load_meta(second)["keep"]
    phase_one_student = load_file(first / "ema.safetensors")
    teacher_of_phase_two = load_file(second / "teacher.safetensors")
    assert all(torch.equal(phase_one_student[k], teacher_of_phase_two[k]) for k in phase_one_student)
    teacher_weights = load_file(RunDir(teacher).latest() / "ema.safetensors")
    assert all(torch.equal(teacher_weights[k], load_file(first / "teacher.safetensors")[k]) for k in teacher_weights)
    pipe = Pipeline.from_run(student.path, device="cpu")
    plan = pipe.plan(2)
    assert (plan.sampler, plan.steps, plan.spacing, plan.clip_denoised) == ("ddim", 2, "trailing", False)
    assert Pipeline.from_run(student.path, checkpoint=first, device="cpu").plan(2).steps == 4


def test_a_resumed_distillation_is_the_uninterrupted_one_bit_for_bit(teacher, tmp_path):
    """Stopped after step 4 (inside the second phase, past the halving at step 3) and resumed."""
    kwargs = dict(steps=2, from_steps=8, phase_steps=3, progress=False, overrides={"train.checkpoint_every": 2})
    straight = distill(str(teacher), str(tmp_path / "straight"), **kwargs)
    broken = distill(str(teacher), str(tmp_path / "broken"), **kwargs)
    shutil.rmtree(broken.checkpoints / "step_000006")
    (broken.checkpoints / "latest").write_text("step_000004")
    train(RunDir(broken.path).load_config(), broken.path, resume=True, progress=False)
    for key in ("model", "ema", "teacher"):
        a, b = (load_file(run.latest() / f"{key}.safetensors") for run in (straight, broken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


def test_the_student_is_a_run_every_command_takes(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "student"
    assert main(["distill", "--run", str(teacher), "--out", str(student), "--steps", "2", "--from-steps", "4",
                 "--phase-steps", "2", "--device", "cpu", "--no-progress"]) == 0
    run = ["--run", str(student), "--device", "cpu"]
    assert main(["sample", *run, "--n", "3", "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png")]) == 0
    assert main(["eval", *run, "--n", "3", "--ref-n", "4"]) == 0
    assert main(["sweep", "--run", str(teacher), "--student", str(student), "--samplers", "ddim", "--steps", "2",
                 "--n", "3", "--ref-n", "4", "--out", str(tmp_path / "sweep"), "--device", "cpu"]) == 0
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [["ddim", "2", "2"], ["student", "2", "2"]]
    assert main(["show", "trajectory", "--run", str(student), "--frames", "2", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["edit", "img2img", *run, "--image", str(tmp_path / "s.npz"), "--strength", "0.5", "--n", "1",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert main(["report", "--run", str(student)]) == 0
    capsys.readouterr()
    assert main(["sample", *run, "--n", "2", "--steps", "8", "--out", str(tmp_path / "s8.npz"),
                 "--grid", str(tmp_path / "g8.png")]) == 0  # more steps than it learnt: warned, not refused
    assert "distilled to sample in 2 steps of ddim; 8 steps of ddim" in capsys.readouterr().err


def test_latent_and_guided_teachers_distil(tmp_path):
    from helpers import tiny_autoencoder

    autoencoder = train(tiny_autoencoder(), tmp_path / "ae", progress=False).path
    latent = tmp_path / "latent"
    assert main(["train", "--out", str(latent), "--max-steps", "2", "--autoencoder", str(autoencoder), "--data", "digits",
                 "--image-size", "16", "--classes", "10", *TINY]) == 0
    assert main(["distill", "--run", str(latent), "--out", str(tmp_path / "student"), "--steps", "1", "--from-steps", "4",
                 "--phase-steps", "2", "--guidance", "2", "--device", "cpu", "--no-progress"]) == 0
    pipe = Pipeline.from_run(tmp_path / "student", device="cpu")
    assert pipe.config.distill.guidance == 2.0 and pipe.codec is not None
    assert pipe(4, classes=[1, 2], progress=False).shape == (4, 1, 16, 16)  # decoded; one network call each


@pytest.mark.parametrize("argv, message", [
    (["--steps", "3"], "--steps must be a power of two"),
    (["--steps", "8", "--from-steps", "8"], "--steps (8) must be fewer than --from-steps (8)"),
    (["--from-steps", "48"], "--from-steps must be a power of two"),
    (["--from-steps", "128"], "--from-steps (128) cannot exceed the teacher's T = 100"),
    (["--guidance", "2"], "--guidance needs a class-conditional teacher"),
    (["--run", "{ae}"], "is an autoencoder run"),
    (["--run", "{empty}"], "has no checkpoint yet"),
    (["--out", "{teacher}"], "already holds a run"),
])
def test_bad_distillations_are_one_line_exit_2_and_write_nothing(argv, message, teacher, tmp_path, capsys):
    from helpers import tiny_autoencoder

    ae = train(tiny_autoencoder(**{"train.max_steps": 1}), tmp_path / "ae", progress=False).path
    empty = tmp_path / "empty"
    shutil.copytree(teacher, empty)
    shutil.rmtree(empty / "checkpoints")
    distill_refused(["--phase-steps", "2"], argv, message, capsys, teacher, tmp_path, ae=ae, empty=empty)
