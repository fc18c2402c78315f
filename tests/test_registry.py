"""The seams: a sampler, an objective, a network and a data set, each added from this file alone by
one registration, reach the config, the command line, the pipeline and the records; unknown names
are one line that lists the registered ones."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from helpers import TINY, trained
from ddpm import Config, InputError, Pipeline
from ddpm.cli import main
from ddpm.data.imagedata import ImageData
from ddpm.diffusion.objectives import Eps, Objective
from ddpm.diffusion.process import Denoiser, training_loss
from ddpm.diffusion.samplers import sample_ddim
from ddpm.diffusion.schedules import make_schedule
from ddpm.config.options import Options, option
from ddpm.registry import DATASETS, NETWORKS, OBJECTIVES, SAMPLERS, DatasetSpec, NetworkSpec, ObjectiveSpec, SamplerSpec


@dataclass(frozen=True)
class ShrinkOptions(Options):
    label = "shrink"
    factor: float = option(1.0, "multiply DDIM's sample by this", gt=0)


@torch.no_grad()
def sample_shrink(denoiser, x, schedule, timesteps, *, factor=1.0, generator=None, callback=None, progress=False):
    """A toy: DDIM, then every value multiplied by `factor`."""
    return factor * sample_ddim(denoiser, x, schedule, timesteps, callback=callback)


@pytest.fixture
def shrink():
    SAMPLERS.register(SamplerSpec("shrink", sample_shrink, "a toy sampler", ShrinkOptions, evaluations=lambda k: k))
    yield
    SAMPLERS.unregister("shrink")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained(tmp_path_factory, "registry", "--max-steps", "2")


def test_a_sampler_with_an_option_is_one_function_and_one_registration(shrink, run, tmp_path, capsys, monkeypatch):
    # the command line has its flag, sampling uses it, and the pipeline's record names it
    assert main(["sample", "--run", str(run), "--n", "3", "--sampler", "shrink", "--factor", "0.5", "--steps", "4",
                 "--out", str(tmp_path / "half.npz"), "--grid", str(tmp_path / "half.png"), "--device", "cpu"]) == 0
    pipe = Pipeline.from_run(run, device="cpu")
    ddim = pipe(3, "ddim", 4, output="float", progress=False) * 2 - 1  # in [-1, 1]
    half = pipe(3, "shrink", 4, output="float", progress=False, factor=0.5) * 2 - 1
    torch.testing.assert_close(half, 0.5 * ddim, atol=1 / 255, rtol=0)
    written = np.load(tmp_path / "half.npz")["arr_0"]
    assert np.array_equal(written, ((half.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    assert pipe.plan(3, "shrink", 4, factor=0.5).record() == {"sampler": "shrink", "steps": 4, "spacing": "uniform",
                                                              "nfe": 4, "factor": 0.5}
    # a run's config may choose it, with its option, and a bad value is one line
    config = Config().override({"sample.sampler": "shrink", "sample.factor": 0.25}).validate()
    assert config.sample.options_for("shrink").factor == 0.25 and "factor" not in config.sample.options_for("ddim").values()
    with pytest.raises(Exception, match="sample.factor must be > 0"):
        Config().override({"sample.factor": -1}).validate()
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--sampler", "ddim", "--factor", "2", "--device", "cpu"]) == 2
    assert "factor applies to the shrink sampler only, not ddim" in capsys.readouterr().err
    # eval.csv records the option
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--run", str(run), "--n", "2", "--ref-n", "4", "--sampler", "shrink", "--factor", "0.5",
                 "--steps", "3", "--device", "cpu"]) == 0
    with open(run / "eval.csv", newline="") as handle:
        assert [row["factor"] for row in csv.DictReader(handle)][-1] == "0.5"


class ScaledEps(Objective):
    """A toy: the network learns k eps. c_skip = 1, c_out = -sigma / k."""

    name = "scaled-eps"

    def __init__(self, k: float = 2.0):
        self.k = k

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return -sigma / self.k

    def network_input(self, x_t, alpha, sigma):
        return x_t


@dataclass(frozen=True)
class ScaledEpsOptions(Options):
    label = "scaled-eps"
    k: float = option(2.0, "the factor the noise is learned at")


@pytest.fixture
def scaled_eps():
    OBJECTIVES.register(ObjectiveSpec("scaled-eps", ScaledEps, "a toy objective", ScaledEpsOptions))
    yield
    OBJECTIVES.unregister("scaled-eps")


def test_an_objective_with_an_option_is_one_class_and_one_registration(scaled_eps, tmp_path):
    schedule = make_schedule("cosine", 100)
    x0, noise, t = torch.rand(16, 1, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(16, 1, 4, 4, dtype=torch.float64), \
        torch.randint(0, 100, (16,))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    # its target is k eps, whose energy a zero network pays: k^2 E[eps^2]
    loss = training_loss(zero, schedule, x0, ScaledEps(3.0), t=t, noise=noise)
    assert loss.item() == pytest.approx(9 * noise.square().mean().item(), rel=1e-6)  # the loss is taken in float32
    # a network that outputs the target is, through this objective, the exact eps network
    x_t = schedule.sqrt_alpha_bar[t].view(-1, 1, 1, 1) * x0 + schedule.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1) * noise
    toy = Denoiser(lambda x, c: 3.0 * noise, schedule, ScaledEps(3.0), clip_denoised=False)(x_t, t)
    plain = Denoiser(lambda x, c: noise, schedule, Eps(), clip_denoised=False)(x_t, t)
    torch.testing.assert_close(toy.x0, plain.x0)
    torch.testing.assert_close(toy.eps, plain.eps)
    # through the command line, with its option set from the config
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "2", "--objective", "scaled-eps",
                 "--set", "diffusion.k=3", *TINY]) == 0
    pipe = Pipeline.from_run(out, device="cpu")
    assert isinstance(pipe.diffusion.objective, ScaledEps) and pipe.diffusion.objective.k == 3.0
    assert pipe(2, progress=False).shape == (2, 1, 28, 28)


class Tiny(torch.nn.Module):
    """A toy network: one convolution that sees the noise label through a bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, t, y=None):
        return self.conv(x) + t.float().view(-1, 1, 1, 1) / 1000


def test_a_network_and_a_data_set_are_one_registration_each(tmp_path):
    gray = torch.Generator().manual_seed(0)
    NETWORKS.register(NetworkSpec("tiny", lambda config: Tiny(config.model_input()[0]), "a toy network"))
    DATASETS.register(DatasetSpec("squares", lambda root: ImageData(
        "squares", torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=gray)), "toy squares", 1, 8,
        offline=True))
    try:
        out = tmp_path / "run"
        assert main(["train", "--out", str(out), "--max-steps", "2", "--data", "squares", "--set", "model.network=tiny",
                     *TINY]) == 0
        pipe = Pipeline.from_run(out, device="cpu")
        assert isinstance(pipe.network, Tiny) and pipe(3, progress=False).shape == (3, 1, 8, 8)
    finally:
        NETWORKS.unregister("tiny")
        DATASETS.unregister("squares")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--run", "{run}", "--sampler", "euler"], "unknown sampler 'euler'; known samplers: ddpm, ddim, dpm++2m, heun, edm"),
    (["train", "--objective", "score", "--out", "{tmp}/x"], "argument --objective: invalid choice: 'score' (choose from 'eps', 'x0', 'v', 'edm')"),
    (["train", "--set", "diffusion.objective=score", "--out", "{tmp}/x"], "unknown diffusion.objective 'score'; known objectives: eps, x0, v, edm"),
    (["train", "--set", "model.network=resnet", "--out", "{tmp}/x"], "unknown model.network 'resnet'; known networks: unet"),
    (["train", "--data", "imagenet", "--out", "{tmp}/x"], "unknown data set 'imagenet'; known data sets: mnist5k, digits"),
    (["eval", "--run", "{run}", "--data", "imagenet"], "unknown data set 'imagenet'; known data sets: mnist5k"),
    (["train-autoencoder", "--set", "autoencoder.reconstruction=ssim", "--out", "{tmp}/x"],
     "unknown autoencoder.reconstruction 'ssim'; choose one of mse, l1"),
    (["train", "--set", "sample.churn=-1", "--out", "{tmp}/x"], "sample.churn must be >= 0"),
    (["train", "--set", "sample.wobble=1", "--out", "{tmp}/x"], "unknown config key sample.wobble"),
    (["distill", "--run", "{run}", "--out", "{tmp}/x", "--set", "distill.method=gan"],
     "unknown student method 'gan'; known student methods: progressive, ect"),
    (["train", "--set", "data.channels=2", "--out", "{tmp}/x"], "data.channels must be one of 1, 3 (got 2)"),
])
def test_unknown_names_are_one_line_listing_the_registered_ones(argv, message, run, tmp_path, capsys):
    assert main([a.format(run=run, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "x").exists()


def test_a_sampler_in_a_users_module_reaches_the_command_line_as_a_plugin(run, tmp_path):
    """DDPM_PLUGINS names the modules that register; `ddpm sample` then draws with their sampler."""
    import subprocess
    import sys

    (tmp_path / "my_samplers.py").write_text(
        "from dataclasses import dataclass\n"
        "from ddpm.config.options import Options, option\n"
        "from ddpm.registry import SAMPLERS, SamplerSpec\n"
        "@dataclass(frozen=True)\n"
        "class ShrinkOptions(Options):\n"
        "    factor: float = option(1.0, 'multiply DDIM\\'s sample by this')\n"
        "def sample_shrink(denoiser, x, schedule, timesteps, *, factor=1.0, generator=None, callback=None, progress=False):\n"
        "    from ddpm.diffusion.samplers import sample_ddim\n"
        "    return factor * sample_ddim(denoiser, x, schedule, timesteps)\n"
        "SAMPLERS.register(SamplerSpec('shrink', sample_shrink, 'a toy sampler', ShrinkOptions))\n")
    env = {**__import__("os").environ, "DDPM_PLUGINS": "my_samplers", "PYTHONPATH": str(tmp_path)}
    argv = [sys.executable, "-m", "ddpm", "sample", "--run", str(run), "--n", "2", "--steps", "3", "--sampler", "shrink",
            "--factor", "0.5", "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"), "--device", "cpu"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (2, 28, 28, 1)
    env["DDPM_PLUGINS"] = "no_such_module"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "cannot load the ddpm plugin 'no_such_module'" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_the_version_answers(capsys):
    from ddpm import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ddpm {__version__}"


def test_a_registered_name_cannot_be_taken_twice_nor_an_option_retyped():
    with pytest.raises(ValueError, match="already registered"):
        SAMPLERS.register(SamplerSpec("ddim", sample_ddim, "again"))

    @dataclass(frozen=True)
    class Clash(Options):
        eta: int = option(0, "an eta of another type")

    with pytest.raises(ValueError, match="another type"):
        SAMPLERS.register(SamplerSpec("clash", sample_ddim, "clash", Clash))
    assert "clash" not in SAMPLERS.names()


def test_an_objectives_spec_says_what_its_objective_is_continuous_or_not():
    """The torch-free config asks the spec (a continuous objective draws its own noise levels, so
    diffusion.timestep_sampling is refused with it); the spec must agree with the objective it builds."""
    for spec in OBJECTIVES:
        assert spec.continuous == spec.build().continuous, spec.name
    with pytest.raises(InputError, match="the edm objective draws its own noise levels"):
        Config().override({"diffusion.objective": "edm", "diffusion.timestep_sampling": "stratified"}).validate()


def test_every_samplers_function_takes_its_options_defaults_from_its_spec():
    """A sampler's option defaults are written once, in its spec's option set: the function called alone
    (k-diffusion's way) defaults to the same values as a run that names no option."""
    import inspect

    from ddpm.registry import resolve

    for spec in SAMPLERS:
        signature = inspect.signature(resolve(spec.function))
        for name, field in spec.options.fields().items():
            assert signature.parameters[name].default == field.default, (spec.name, name)


@dataclass(frozen=True)
class _Fresh:
    """The plainest student: the teacher trained on with its own loss, sampled in its own few DDIM steps."""

    @staticmethod
    def configure(teacher, source, wanted, overrides):
        from ddpm.training.distill import student_of

        config = student_of(teacher, source, wanted, {"sample.sampler": "ddim", "sample.steps": wanted.student_steps})
        return config.override({"train.max_steps": 2, **overrides})

    @staticmethod
    def check(config):
        if config.distill.student_steps > 4:
            raise InputError("a student trained on takes at most 4 steps")


@pytest.fixture
def trained_on():
    from ddpm.registry import STUDENTS, StudentSpec
    from ddpm.training.distill import StudentTask

    STUDENTS.register(StudentSpec("trained-on", StudentTask, _Fresh.configure, _Fresh.check, "the teacher, trained on",
                                  "a student trained on", "ddim", 3, export="a toy"))
    yield
    STUDENTS.unregister("trained-on")


def test_a_student_method_is_one_module_and_one_registration(trained_on, run, tmp_path, capsys, monkeypatch):
    """Registered, it is a --method of `ddpm distill`; its check and its spec's facts reach every command:
    its default steps, the warning for steps it was not trained for, sweep's row, export's refusal."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "student"
    base = ["distill", "--method", "trained-on", "--run", str(run), "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "five"), "--steps", "5"]) == 2  # its own check, one line
    assert capsys.readouterr().err.strip() == "ddpm: error: a student trained on takes at most 4 steps"
    assert main([*base, "--out", str(student)]) == 0
    pipe = Pipeline.from_run(student, device="cpu")
    assert (pipe.config.student, pipe.config.sample.sampler, pipe.config.sample.steps) == ("trained-on", "ddim", 3)
    with pytest.warns(UserWarning, match="distilled to sample in 3 steps of ddim; 6 steps"):
        pipe.plan(2, steps=6)
    assert main(["sweep", "--run", str(run), "--student", str(student), "--samplers", "ddim", "--steps", "2",
                 "--n", "3", "--ref-n", "4", "--out", str(tmp_path / "sweep"), "--device", "cpu"]) == 0
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["ddim", "2"], ["student", "3"]]
    capsys.readouterr()
    assert main(["export", "--run", str(student), "--out", str(tmp_path / "exported")]) == 2
    assert "a student trained on (a toy) has no diffusers counterpart" in capsys.readouterr().err
    assert not (tmp_path / "exported").exists()
