"""Easy consistency tuning (Geng et al. 2024, "Consistency Models Made Easy"): a student that samples in
one or two steps, tuned from a trained run's weights.

The student's network starts as its teacher's EMA and is read as a consistency function through its
objective's denoiser (diffusion/consistency.py). Each step draws, per image, a level t with
ln t ~ N(-1.1, 2^2), its partner r = t (1 - q^-(stage+1) n(t)) (`ect_partner`) and one noise eps, and
asks f(x0 + t eps, t) to match the network's own f(x0 + r eps, r), computed again under stop-gradient
with the same dropout mask; the loss is the distance over (t - r) (`ect_loss`). The stage counts up
over the budget (`consistency.stages` equal parts of it), each halving the gap t - r (q = 2): early
stages are close to the teacher's own denoising task, the last ones ask for consistency along the
ODE's trajectories. Only the trained network is needed: no second network, no ODE solver, no LPIPS.

The student is a run like any other, trained by the loop as a task of its own (this one); resumed
by step budget it is bit for bit the uninterrupted run, since the stage follows the step. It
samples with the `consistency` sampler, in `distill.steps` steps (2 by default).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import Config
from ..diffusion.consistency import (
    ConsistencyFunction,
    SameRandomness,
    consistency_sigma_data,
    ect_levels,
    ect_loss,
    ect_partner,
)
from ..diffusion.guidance import drop_labels
from ..diffusion.process import Denoiser
from ..errors import InputError
from ..config.students import DistillConfig
from .distill import start_from_teacher, teacher_autoencoder
from .optim import budget_spent
from .tasks import DiffusionTask


def consistency_function(model: nn.Module, config: Config, diffusion, labels=None, guidance: float = 1.0):
    """`model` seen through the run's objective as the consistency function f(x_t, t), unclipped."""
    denoiser = Denoiser(model, diffusion.schedule, diffusion.objective, clip_denoised=False)
    function = ConsistencyFunction(denoiser, consistency_sigma_data(config))
    return function if labels is None else function.conditioned(labels, guidance)


class ConsistencyTask(DiffusionTask):
    """ECT's loss through the training loop; see the module's docstring."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        super().__init__(config, data, device, resume, progress, run)
        if not resume:  # the student starts as the teacher run's EMA weights, those it hashed
            start_from_teacher(self.network, self.config.distill)
        self.trainer = None

    def attach(self, trainer) -> None:
        self.trainer = trainer  # its step and clock decide the stage

    def stage(self, step: int) -> int:
        """Which of consistency.stages equal parts of the budget (steps, or minutes) the run is in."""
        stages = self.config.consistency.stages
        spent = budget_spent(step, self.config.train, self.trainer.clock.fraction() if self.trainer is not None else 0.0)
        return min(stages - 1, int(spent * stages))

    def draws(self, x0: Tensor, classes, generator: torch.Generator, step: int) -> list:
        c, schedule = self.config.consistency, self.diffusion.schedule
        labels = None
        if self.config.model.num_classes:
            labels = drop_labels(classes, self.config.train.label_dropout, self.config.model.num_classes, generator)
        t = ect_levels(len(x0), c.p_mean, c.p_std, schedule, generator, x0.device)
        r = ect_partner(t, self.stage(step), c.q, c.k, c.b, float(schedule.sigma[0]))
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return [labels, t, r, noise]

    def loss(self, model: nn.Module, x0: Tensor, labels, t: Tensor, r: Tensor, noise: Tensor) -> Tensor:
        f = consistency_function(model, self.config, self.diffusion, labels)
        replay = SameRandomness(x0.device)
        f_t = f(*self.point(x0, noise, t)).x0
        replay.replay()  # the target's pass draws the dropout mask the student's pass drew
        with torch.no_grad():
            f_r = f(*self.point(x0, noise, r)).x0
        return ect_loss(f_t, f_r, t, r, self.config.consistency.c)

    def point(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, t): the VP image of x~ = x0 + sigma noise, and its fractional timestep."""
        schedule = self.diffusion.schedule
        t = schedule.timestep(sigma)
        alpha = schedule.levels(t)[0].to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        shaped = sigma.to(x0.dtype).view_as(alpha)
        return alpha * (x0 + shaped * noise), t.to(x0.device)

    def meta(self, ema_model: nn.Module) -> dict:
        return {"stage": self.stage(self.trainer.step) if self.trainer is not None else 0}


def consistency_config(teacher: Config, teacher_path: str, checkpoint_step: int, teacher_sha256: str,
                       wanted: DistillConfig, teacher_seconds: float, overrides: dict) -> Config:
    """The student's config: the teacher's network, process and data; a distill section naming the teacher;
    the consistency sampler in `wanted.student_steps` steps, unclipped (the student learnt f unclipped);
    the `overrides` (train.*, consistency.*, model.dropout); the learning rate, by default
    consistency.lr_share of the teacher's; and the budget: --max-steps and/or --max-minutes, or by
    default consistency.share of the teacher's training time."""
    guidance = teacher.sample.guidance if wanted.guidance is None else wanted.guidance
    config = teacher.override({
        "distill.teacher": teacher_path, "distill.teacher_step": checkpoint_step, "distill.teacher_sha256": teacher_sha256,
        "distill.method": "ect", "distill.steps": wanted.steps, "distill.guidance": wanted.guidance,
        "distill.teacher_clip": teacher.sample.clip_denoised, "sample.sampler": "consistency",
        "sample.steps": wanted.student_steps, "sample.clip_denoised": False, "sample.guidance": guidance})
    config.latent.autoencoder = teacher_autoencoder(teacher, teacher_path)
    budget = {key: overrides.get(key) for key in ("train.max_steps", "train.max_minutes")}
    tuning = config.override(overrides).consistency
    if "train.lr" not in overrides:
        budget["train.lr"] = teacher.train.lr * tuning.lr_share
    if budget["train.max_steps"] is None and budget["train.max_minutes"] is None:
        share = tuning.share
        if not teacher_seconds:
            raise InputError(f"{teacher_path} records no training time to take a share of; give --max-steps or "
                             f"--max-minutes")
        budget["train.max_minutes"] = round(teacher_seconds / 60 * share, 3)
    return config.override({**overrides, **budget})
