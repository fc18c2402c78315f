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

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..config import Config
from ..config.settings import check as require
from ..config.students import DistillConfig
from ..diffusion.process import Denoiser, levels
from ..diffusion.schedules import spaced_timesteps
from ..errors import InputError
from ..factory import build_network
from ..storage.checkpoint import load_weights
from .distill import Source, StudentTask, student_of
from .ema import EMA
from .optim import span_factor
from .tasks import Draws, Moment


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


@dataclass(frozen=True)
class LevelDraws(Draws):
    """The student's step number per image (which of its K steps it learns), a noise per image, and the
    labels after dropout."""

    labels: Optional[Tensor]
    level: Tensor
    noise: Tensor


class ProgressiveTask(StudentTask):
    """Ho et al.'s loop, training a student on a teacher's two-step DDIM map; see the module's docstring."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        super().__init__(config, data, device, resume, progress, run)
        self.teacher = build_network(self.config).to(device).eval().requires_grad_(False)
        if not resume:  # the teacher starts as the student does: the teacher run's EMA weights
            self.teacher.load_state_dict(self.network.state_dict())
        self.phase, self.phase_start_step, self.phase_start_seconds = 0, 0, 0.0
        d = self.config.distill
        self.guidance = 1.0 if d.guidance is None else d.guidance

    # ---- the phases ----------------------------------------------------------------------------

    @property
    def teacher_steps(self) -> int:
        return self.config.distill.from_steps >> self.phase

    @property
    def student_steps(self) -> int:
        return self.teacher_steps // 2

    def phase_fraction(self, now: Moment) -> float:
        d = self.config.distill
        if d.phase_steps is not None:
            return (now.step - self.phase_start_step) / d.phase_steps
        return (now.seconds - self.phase_start_seconds) / (60 * d.phase_minutes)

    def phase_done(self, now: Moment) -> bool:
        return self.phase + 1 < self.config.distill.phases and self.phase_fraction(now) >= 1

    def at_phase_end(self, now: Moment) -> bool:
        """Whether the student now is the phase's last: its budget, or the whole run's, is spent."""
        return self.phase_fraction(now) >= 1 or now.step >= self.config.train.step_limit or now.time_fraction >= 1

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
            group["lr"] = group["initial_lr"] * self.lr_factor(trainer.moment())

    def lr_factor(self, now: Moment) -> float:
        """Each phase is a span of its own: warm-up from its start, then a cosine to zero at its end (by
        its steps, or its minutes), as in the paper."""
        return span_factor(now.step - self.phase_start_step, self.phase_fraction(now), self.config.train, "cosine")

    # ---- the loss ----------------------------------------------------------------------------------

    def draws(self, x0: Tensor, classes, generator: torch.Generator, now: Moment) -> LevelDraws:
        labels = self.labels(classes, generator)
        level = torch.randint(0, self.student_steps, (len(x0),), device=x0.device, generator=generator)
        return LevelDraws(labels, level, torch.randn(x0.shape, device=x0.device, generator=generator))

    def loss(self, model: nn.Module, x0: Tensor, draws: LevelDraws) -> Tensor:
        schedule, labels = self.diffusion.schedule, draws.labels
        student = Denoiser(model, schedule, self.diffusion.objective, clip_denoised=False)
        if labels is not None:  # the student's own conditional output: guidance 1, one pass
            student = student.conditioned(labels, 1.0)
        grid = teacher_levels(schedule.timesteps, self.teacher_steps)
        return distillation_loss(student, self._teacher(labels), schedule, grid, x0, draws.level, draws.noise)

    def _teacher(self, labels):
        denoiser = Denoiser(self.teacher, self.diffusion.schedule, self.diffusion.objective,
                            self.config.distill.teacher_clip)
        return denoiser if labels is None else denoiser.conditioned(labels, self.guidance)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def tensors(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def meta(self, ema_model: nn.Module, now: Moment) -> dict:
        return {"phase": self.phase, "phase_start_step": self.phase_start_step,
                "phase_start_seconds": self.phase_start_seconds, "student_steps": self.student_steps,
                "keep": self.at_phase_end(now)}

    def restore(self, folder, meta: dict) -> None:
        self.teacher.load_state_dict(load_weights(folder, "teacher"))
        self.phase, self.phase_start_step = meta["phase"], meta["phase_start_step"]
        self.phase_start_seconds = meta["phase_start_seconds"]


def check(config: Config) -> None:
    """Progressive distillation's rules on a student's config: halvings of a power of two, within T,
    each phase budgeted by steps or by minutes."""
    d = config.distill
    require(d.init is None, "--init starts an adversarial student from another student; this method starts from "
                            "the teacher")
    power = lambda n: n >= 1 and n & (n - 1) == 0  # noqa: E731
    require(power(d.from_steps), f"--from-steps must be a power of two (got {d.from_steps})")
    require(power(d.student_steps), f"--steps must be a power of two: 1, 2, 4, 8, ... (got {d.student_steps})")
    require(d.student_steps < d.from_steps, f"--steps ({d.student_steps}) must be fewer than --from-steps "
                                            f"({d.from_steps}), each phase halving the teacher's steps")
    require(d.from_steps <= config.diffusion.timesteps,
            f"--from-steps ({d.from_steps}) cannot exceed the teacher's T = {config.diffusion.timesteps}")
    require((d.phase_steps is None) != (d.phase_minutes is None),
            "give a distillation phase's budget as --phase-steps or --phase-minutes, one of them")


def configure(teacher: Config, source: Source, wanted: DistillConfig, overrides: dict) -> Config:
    """The student's config (`distill.student_of`): its own sampler, DDIM on the trailing grid of its
    steps, unclipped; each phase's budget, by default an equal share of the teacher's training time
    (distilling costs no more than training did); and the whole budget, the phases' added up. Its
    `overrides` are train.* keys but the budget, and model.dropout."""
    spent = sorted(key for key in overrides if key in ("train.max_steps", "train.max_minutes"))
    if spent:
        raise InputError(f"{spent[0]} is for --method ect; progressive distillation's budget is --phase-steps or "
                         f"--phase-minutes")
    phase_minutes = wanted.phase_minutes
    if wanted.phase_steps is None and phase_minutes is None:
        if not source.seconds:
            raise InputError(f"{source.path} records no training time to share out; give --phase-steps or "
                             f"--phase-minutes")
        phase_minutes = round(source.seconds / 60 / max(1, wanted.phases), 3)
    steps = wanted.student_steps
    config = student_of(teacher, source, wanted, {
        "distill.steps": steps, "distill.phase_minutes": phase_minutes, "sample.sampler": "ddim",
        "sample.steps": steps, "sample.spacing": "trailing", "sample.eta": 0.0, "sample.clip_denoised": False,
        "sample.guidance": 1.0})
    check(config)  # before the budget, which it sizes
    phases = config.distill.phases
    if wanted.phase_steps is not None:
        budget = {"train.max_steps": phases * wanted.phase_steps, "train.max_minutes": None}
    else:
        budget = {"train.max_steps": None, "train.max_minutes": phases * phase_minutes}
    return config.override(budget).override(overrides)
