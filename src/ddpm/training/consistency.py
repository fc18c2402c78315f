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

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..config import Config
from ..config.settings import check as require
from ..config.students import DistillConfig
from ..diffusion.consistency import SameRandomness, consistency_denoiser, ect_levels, ect_loss, ect_partner
from ..diffusion.process import Denoiser
from .distill import Source, StudentTask, student_of, tuning_budget
from .optim import budget_spent
from .tasks import Draws, Moment


def consistency_function(model: nn.Module, config: Config, diffusion, labels=None, guidance: float = 1.0):
    """`model` seen through the run's objective as the consistency function f(x_t, t), unclipped."""
    function = consistency_denoiser(Denoiser(model, diffusion.schedule, diffusion.objective, clip_denoised=False),
                                    config)
    return function if labels is None else function.conditioned(labels, guidance)


@dataclass(frozen=True)
class PairDraws(Draws):
    """ECT's pair per image: a level t, its partner r < t, one noise for both; the labels after dropout."""

    labels: Optional[Tensor]
    t: Tensor
    r: Tensor
    noise: Tensor


class ConsistencyTask(StudentTask):
    """ECT's loss through the training loop; see the module's docstring."""

    def stage(self, now: Moment) -> int:
        """Which of consistency.stages equal parts of the budget (steps, or minutes) the run is in."""
        stages = self.config.consistency.stages
        return min(stages - 1, int(budget_spent(now.step, self.config.train, now.time_fraction) * stages))

    def draws(self, x0: Tensor, classes, generator: torch.Generator, now: Moment) -> PairDraws:
        c, schedule = self.config.consistency, self.diffusion.schedule
        labels = self.labels(classes, generator)
        t = ect_levels(len(x0), c.p_mean, c.p_std, schedule, generator, x0.device)
        r = ect_partner(t, self.stage(now), c.q, c.k, c.b, float(schedule.sigma[0]))
        return PairDraws(labels, t, r, torch.randn(x0.shape, device=x0.device, generator=generator))

    def loss(self, model: nn.Module, x0: Tensor, draws: PairDraws) -> Tensor:
        f = consistency_function(model, self.config, self.diffusion, draws.labels)
        replay = SameRandomness(x0.device)
        f_t = f(*self.point(x0, draws.noise, draws.t)).x0
        replay.replay()  # the target's pass draws the dropout mask the student's pass drew
        with torch.no_grad():
            f_r = f(*self.point(x0, draws.noise, draws.r)).x0
        return ect_loss(f_t, f_r, draws.t, draws.r, self.config.consistency.c)

    def point(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, t): the VP image of x~ = x0 + sigma noise, and its fractional timestep."""
        schedule = self.diffusion.schedule
        t = schedule.timestep(sigma)
        alpha = schedule.levels(t)[0].to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        shaped = sigma.to(x0.dtype).view_as(alpha)
        return alpha * (x0 + shaped * noise), t.to(x0.device)

    def meta(self, ema_model: nn.Module, now: Moment) -> dict:
        return {"stage": self.stage(now)}


def check(config: Config) -> None:
    """ECT's rules on a student's config (its steps are bounded by the spec's max_steps)."""
    d = config.distill
    require(d.init is None, "--init starts an adversarial student from another student; this method starts from "
                            "the teacher")
    require(d.phase_steps is None and d.phase_minutes is None,
            "--phase-steps and --phase-minutes budget progressive distillation's halvings; an ect student's budget "
            "is --max-steps or --max-minutes")


def configure(teacher: Config, source: Source, wanted: DistillConfig, overrides: dict) -> Config:
    """The student's config (`distill.student_of`): the consistency sampler in `wanted.student_steps`
    steps, unclipped (the student learnt f unclipped); the `overrides` (train.*, consistency.*,
    model.dropout); the learning rate, by default consistency.lr_share of the teacher's; and the
    budget: --max-steps and/or --max-minutes, or by default consistency.share of the teacher's
    training time."""
    guidance = teacher.sample.guidance if wanted.guidance is None else wanted.guidance
    config = student_of(teacher, source, wanted, {
        "sample.sampler": "consistency", "sample.steps": wanted.student_steps, "sample.clip_denoised": False,
        "sample.guidance": guidance})
    check(config)  # before the budget, as progressive distillation does
    tuning = config.override(overrides).consistency
    return config.override({**overrides, **tuning_budget(teacher, source, overrides, tuning.lr_share, tuning.share)})
