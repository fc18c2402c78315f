"""Progressive distillation (Salimans & Ho 2022): a student that samples in K steps of DDIM.

A teacher samples with N steps of deterministic DDIM (η = 0). A student, started from the teacher's
weights, learns to take in one DDIM step from level t to t'' what the teacher takes in two, t to t'
to t''. Then the student becomes the teacher and the steps halve again: N -> N/2 -> ... -> K.

Target. For x_t = α_t x + σ_t ε (α = sqrt(ᾱ), σ = sqrt(1 - ᾱ)), one DDIM step with a prediction x̂
lands on x_t'' = α'' x̂ + σ'' (x_t - α_t x̂) / σ_t. The teacher's two steps land on some z''; the x̂
that makes the student's one step land there too is (the paper's Algorithm 2)

    x̃ = (z'' - (σ''/σ_t) x_t) / (α'' - (σ''/σ_t) α_t),            x̃ = z'' when t'' is the data,

and the student's x-prediction is trained on it with the truncated-SNR weight max(α_t²/σ_t², 1).

Grids. The teacher's N levels are the "trailing" spacing (Lin et al. 2024): T-1, T-1-T/N, ...; their
every other one is exactly the N/2-step trailing grid, so the student's levels are the teacher's,
and its first step starts from pure noise. The student samples with DDIM on its own K-step trailing
grid, unclipped (a clipped x̂ would no longer be the target); the teacher's steps clip as the
teacher run samples. A class-conditional teacher is distilled at a fixed guidance weight w: the
student's conditional output learns the guided teacher (Meng et al. 2023 also condition on w).

Each phase has its own budget (steps or minutes), a fresh Adam, a fresh EMA, and a learning rate
that warms up and decays to zero within it, as in the paper; the student's EMA becomes the next
teacher. The teacher's weights are saved in every checkpoint, so a distillation resumes exactly
across phases, and each phase's last student is kept (its meta says how many steps it samples in).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import OWN, Config
from ..diffusion.process import Denoiser, levels
from ..diffusion.schedules import spaced_timesteps
from ..factory import build_network, load_run, own_autoencoder_dir
from ..storage.atomic import file_sha256
from ..errors import InputError
from ..storage.checkpoint import RunDir, load_weights
from .ema import EMA
from .tasks import DiffusionTask


def distillation_target(x_t: Tensor, alpha: Tensor, sigma: Tensor, z: Tensor, alpha_next: Tensor,
                        sigma_next: Tensor) -> Tensor:
    """The x̃ for which one DDIM step from x_t (level alpha, sigma) lands on z (level alpha_next,
    sigma_next): Salimans & Ho 2022, Algorithm 2. At the data (sigma_next = 0) it is z itself."""
    ratio = sigma_next / sigma
    return (z - ratio * x_t) / (alpha_next - ratio * alpha)


def ddim_to(prediction, x_t: Tensor, alpha_next: Tensor, sigma_next: Tensor) -> Tensor:
    """One deterministic DDIM step (Song et al. eq. 12, η = 0) onto the level alpha_next, sigma_next."""
    return alpha_next * prediction.x0 + sigma_next * prediction.eps


def teacher_levels(timesteps: int, steps: int) -> list[int]:
    """The teacher's `steps` levels: the trailing grid, whose every other level is the student's."""
    return spaced_timesteps(timesteps, steps, "trailing")


def student_step(grid: list[int], level: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For the student's step number `level` (per image) on the teacher's `grid`: the timesteps it starts
    at, passes and ends at (t, t', t''); t'' = -1 stands for the data."""
    grid = torch.tensor(grid + [-1], device=level.device)
    return grid[2 * level], grid[2 * level + 1], grid[2 * level + 2]


def two_step_target(teacher, schedule, x_t: Tensor, t: Tensor, t_mid: Tensor, t_end: Tensor) -> Tensor:
    """The distillation target: two of the teacher's DDIM steps from x_t (t -> t' -> t''), and the x̃
    whose one DDIM step t -> t'' lands where they do. t'' = -1 is the data (alpha 1, sigma 0)."""
    alpha, sigma, _ = levels(schedule, t, x_t)
    alpha_mid, sigma_mid, _ = levels(schedule, t_mid, x_t)
    alpha_end, sigma_end, _ = levels(schedule, t_end.clamp(min=0), x_t)
    at_data = (t_end < 0).view(-1, *[1] * (x_t.ndim - 1))
    alpha_end, sigma_end = torch.where(at_data, 1.0, alpha_end), torch.where(at_data, 0.0, sigma_end)
    z = ddim_to(teacher(x_t, t), x_t, alpha_mid, sigma_mid)
    z = ddim_to(teacher(z, t_mid), z, alpha_end, sigma_end)
    return distillation_target(x_t, alpha, sigma, z, alpha_end, sigma_end)


def distillation_loss(student, teacher, schedule, grid: list[int], x0: Tensor, level: Tensor, noise: Tensor) -> Tensor:
    """The student's loss at its step number `level` (per image) on the teacher's `grid`: its x-prediction
    against the two-step target, weighted by the truncated SNR max(α_t²/σ_t², 1) (Salimans & Ho, §4)."""
    t, t_mid, t_end = student_step(grid, level)
    alpha, sigma, _ = levels(schedule, t, x0)
    x_t = alpha * x0 + sigma * noise
    with torch.no_grad():
        target = two_step_target(teacher, schedule, x_t, t, t_mid, t_end)
    weight = (alpha**2 / sigma**2).clamp(min=1.0)
    return (weight * (student(x_t, t).x0.float() - target.float()) ** 2).flatten(1).mean(1).mean()


def teacher_autoencoder(teacher: Config, teacher_path: str):
    """The autoencoder a student of a latent teacher decodes with: the teacher's, and for a teacher that
    trained its own, the one in the teacher's directory."""
    if teacher.latent.autoencoder == OWN:
        return str(own_autoencoder_dir(Path(teacher_path)))
    return teacher.latent.autoencoder


def start_from_teacher(network: nn.Module, d) -> None:
    """Load into `network` the EMA weights of the teacher that the student's `distill` section names,
    refusing any other than those it hashed when the student started."""
    loaded = load_run(d.teacher, RunDir(d.teacher).checkpoints / f"step_{d.teacher_step:06d}", "ema")
    if file_sha256(loaded.folder / "ema.safetensors") != d.teacher_sha256:
        raise InputError(f"the teacher {d.teacher}'s weights at step {d.teacher_step} are not those this "
                         f"distillation started from; start it again with ddpm distill")
    network.load_state_dict(loaded.network.state_dict())


class DistillTask(DiffusionTask):
    """Ho et al.'s loop, training a student on a teacher's two-step DDIM map; see the module's docstring."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        super().__init__(config, data, device, resume, progress, run)
        d = self.config.distill
        self.teacher = build_network(self.config).to(device).eval().requires_grad_(False)
        if not resume:  # the student and its teacher start as the teacher run's EMA weights, those it hashed
            start_from_teacher(self.network, d)
            self.teacher.load_state_dict(self.network.state_dict())
        self.phase, self.phase_start_step, self.phase_start_seconds = 0, 0, 0.0
        self.guidance = 1.0 if d.guidance is None else d.guidance
        self.trainer = None

    def attach(self, trainer) -> None:
        self.trainer = trainer  # its step and clock decide the phases and the learning rate

    # ---- the phases ----------------------------------------------------------------------------

    @property
    def teacher_steps(self) -> int:
        return self.config.distill.from_steps >> self.phase

    @property
    def student_steps(self) -> int:
        return self.teacher_steps // 2

    def phase_fraction(self, trainer) -> float:
        d = self.config.distill
        if d.phase_steps is not None:
            return (trainer.step - self.phase_start_step) / d.phase_steps
        return (trainer.clock.seconds - self.phase_start_seconds) / (60 * d.phase_minutes)

    def phase_done(self, trainer) -> bool:
        return self.phase + 1 < self.config.distill.phases and self.phase_fraction(trainer) >= 1

    def at_phase_end(self) -> bool:
        """Whether the student now is the phase's last: its budget, or the whole run's, is spent."""
        t = self.trainer
        return self.phase_fraction(t) >= 1 or t.step >= self.config.train.step_limit or t.clock.seconds >= t.clock.limit

    def next_phase(self, trainer) -> None:
        """The student's EMA becomes the teacher; the new student starts from it, with a fresh Adam and EMA."""
        self.teacher.load_state_dict(trainer.ema.model.state_dict())
        with torch.no_grad():
            trainer.network.load_state_dict(self.teacher.state_dict())
        tc = self.config.train
        trainer.ema = EMA(trainer.network, tc.ema_decay, tc.ema_warmup)
        trainer.optimizer.state.clear()
        self.phase += 1
        self.phase_start_step, self.phase_start_seconds = trainer.step, trainer.clock.seconds
        for group in trainer.optimizer.param_groups:  # the first step of the phase warms up from its start
            group["lr"] = group["initial_lr"] * self.lr_factor(trainer.step)

    def lr_factor(self, step: int) -> float:
        """Warm-up, then a cosine decay to zero within the phase (by its steps, or its minutes)."""
        d, tc = self.config.distill, self.config.train
        warmup = min(1.0, (step - self.phase_start_step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
        if d.phase_steps is not None:
            fraction = (step - self.phase_start_step) / d.phase_steps
        else:
            seconds = self.trainer.clock.seconds if self.trainer is not None else 0.0
            fraction = (seconds - self.phase_start_seconds) / (60 * d.phase_minutes)
        return warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, fraction))))

    # ---- the loss ----------------------------------------------------------------------------------

    def draws(self, x0: Tensor, classes, generator: torch.Generator, step: int) -> list:
        labels = None
        if self.config.model.num_classes:
            from ..diffusion.guidance import drop_labels

            labels = drop_labels(classes, self.config.train.label_dropout, self.config.model.num_classes, generator)
        level = torch.randint(0, self.student_steps, (len(x0),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return [labels, level, noise]

    def loss(self, model: nn.Module, x0: Tensor, labels, level: Tensor, noise: Tensor) -> Tensor:
        schedule = self.diffusion.schedule
        student = Denoiser(model, schedule, self.diffusion.objective, clip_denoised=False)
        if labels is not None:  # the student's own conditional output: guidance 1, one pass
            student = student.conditioned(labels, 1.0)
        grid = teacher_levels(schedule.timesteps, self.teacher_steps)
        return distillation_loss(student, self._teacher(labels), schedule, grid, x0, level, noise)

    def _teacher(self, labels):
        denoiser = Denoiser(self.teacher, self.diffusion.schedule, self.diffusion.objective,
                            self.config.distill.teacher_clip)
        return denoiser if labels is None else denoiser.conditioned(labels, self.guidance)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def tensors(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def meta(self, ema_model: nn.Module) -> dict:
        return {"phase": self.phase, "phase_start_step": self.phase_start_step,
                "phase_start_seconds": self.phase_start_seconds, "student_steps": self.student_steps,
                "keep": self.at_phase_end()}

    def restore(self, folder, meta: dict) -> None:
        self.teacher.load_state_dict(load_weights(folder, "teacher"))
        self.phase, self.phase_start_step = meta["phase"], meta["phase_start_step"]
        self.phase_start_seconds = meta["phase_start_seconds"]



def student_config(teacher: Config, teacher_path: str, checkpoint_step: int, teacher_sha256: str, steps: int,
                   from_steps: int, phase_steps, phase_minutes, guidance) -> Config:
    """The student's config: the teacher's network, process and data; a distill section naming the
    teacher; its own sampler, DDIM on the trailing grid of `steps` steps, unclipped; and the whole
    budget, the phases' added up."""
    config = teacher.override({
        "distill.teacher": teacher_path, "distill.teacher_step": checkpoint_step, "distill.teacher_sha256": teacher_sha256,
        "distill.method": "progressive", "distill.steps": steps, "distill.from_steps": from_steps,
        "distill.phase_steps": phase_steps, "distill.phase_minutes": phase_minutes, "distill.guidance": guidance,
        "distill.teacher_clip": teacher.sample.clip_denoised, "sample.sampler": "ddim", "sample.steps": steps,
        "sample.spacing": "trailing", "sample.eta": 0.0, "sample.clip_denoised": False,
        "sample.guidance": 1.0})
    config.latent.autoencoder = teacher_autoencoder(teacher, teacher_path)
    config.distill.check_fields("distill")  # before the budget, which it sizes
    config.distill.validate()
    phases = config.distill.phases
    if phase_steps is not None:
        config = config.override({"train.max_steps": phases * phase_steps, "train.max_minutes": None})
    else:
        config = config.override({"train.max_steps": None, "train.max_minutes": phases * phase_minutes})
    return config
