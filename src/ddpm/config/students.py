"""The schema of a student run: a network that learns from a teacher run to sample in a few steps.

How it learns is `distill.method`, a name of the student registry (ddpm.registry.STUDENTS), whose
spec names the module that holds the method: its training task, its config builder and its rules.
The `distill` section is what every student records (its teacher, hashed; its steps; its guidance)
and the budget of progressive distillation's phases; `consistency` is easy consistency tuning's own.

Part of the schema (schema.py imports these sections): plain data, no torch, no measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..registry import DEFAULT_STUDENT, FEW_STEP_STUDENT, STUDENTS
from .settings import Section, check, setting


def student_sections() -> tuple[str, ...]:
    """The config sections a student run's settings live in: `distill`, and each method's own."""
    return ("distill",) + tuple(spec.section for spec in STUDENTS if spec.section)


@dataclass
class DistillConfig(Section):
    """Set for a student run: its teacher (named and hashed here), how it learns, and in how many steps it
    samples. Progressive distillation's student learns to take in one DDIM step what its teacher takes
    in two, halving from_steps to steps, and carries the teacher's weights in its checkpoints."""

    teacher: Optional[str] = setting(None, "the teacher run directory", null="for a run that is no student")
    teacher_sha256: Optional[str] = setting(None, "of the teacher's EMA weights, written when distillation starts")
    teacher_step: Optional[int] = setting(None, "the teacher's step")
    method: str = setting(DEFAULT_STUDENT, "how the student learns, a method of the student registry (ddpm distill "
                                           f"without it: {FEW_STEP_STUDENT} for --steps 1 or 2, else {DEFAULT_STUDENT})",
                          names=STUDENTS, what="student method", flag=True)
    from_steps: int = setting(64, "progressive: the teacher's DDIM steps at the start, a power of two",
                              flag="--from-steps")
    steps: Optional[int] = setting(None, "the student's sampling steps", ge=1, flag="--steps",
                                   null="for the method's own (progressive: 4, a power of two; ect: 2, of 1 to 8)")
    guidance: Optional[float] = setting(None, "a class-conditional teacher's guidance weight: fixed in a progressive "
                                              "student, an ect student's sampling default", ge=0, flag="--guidance")
    teacher_clip: bool = setting(True, "whether the teacher's steps clip x0, as the teacher run samples")
    init: Optional[str] = setting(None, "adversarial: the student run (progressive or ect, of the same network) whose "
                                        "EMA the student starts from", flag="--init", null="for the teacher's weights")
    init_sha256: Optional[str] = setting(None, "of --init's EMA weights, written when distillation starts")
    phase_steps: Optional[int] = setting(None, "progressive: each halving's optimiser steps", ge=1,
                                         flag="--phase-steps")
    phase_minutes: Optional[float] = setting(None, "progressive: each halving's minutes (default: the teacher's "
                                                   "training time shared out over the halvings)", gt=0,
                                             flag="--phase-minutes")

    @property
    def student_steps(self) -> int:
        return STUDENTS.get(self.method).default_steps if self.steps is None else self.steps

    @property
    def phases(self) -> int:
        """Progressive distillation's halvings from from_steps to the student's steps."""
        return max(0, self.from_steps.bit_length() - self.student_steps.bit_length())

    def validate(self) -> None:
        """The rules every method shares; the method's own are its spec's `check`, on the whole config."""
        if self.teacher is None:
            return
        spec = STUDENTS.get(self.method)
        check(spec.max_steps is None or self.student_steps <= spec.max_steps,
              f"--steps must be 1 to {spec.max_steps} for {spec.called} (got {self.student_steps})")


@dataclass
class ConsistencyConfig(Section):
    """Easy consistency tuning (Geng et al. 2024, training/consistency.py), for distill.method ect. The
    defaults are ECT's for CIFAR-10 (their code's ECMLoss): noise levels t with ln t ~ N(-1.1, 2^2), the
    partner level r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), and the loss's pseudo-Huber c."""

    p_mean: float = setting(-1.1, "ln(t) ~ N(p_mean, p_std^2): the noise levels tuned", finite=True)
    p_std: float = setting(2.0, "ln(t) ~ N(p_mean, p_std^2): the noise levels tuned", gt=0)
    q: float = setting(2.0, "the gap t - r shrinks by this factor from one stage to the next", gt=1)
    k: float = setting(8.0, "the gap's factor n(t) = 1 + k sigmoid(-b t): wider at low noise", ge=0)
    b: float = setting(1.0, "the gap's factor n(t) = 1 + k sigmoid(-b t)", finite=True)
    stages: int = setting(4, "stages of the gap over the student's budget (the last: t - r ~ t q^-stages)", ge=1,
                          flag="--stages")
    c: float = setting(0.0, "the loss sqrt(|f_t - f_r|^2 + c^2) - c (0: ECT's default, the distance itself)", ge=0)
    sigma_data: Optional[float] = setting(None, "the data's std in the consistency function's c_skip", gt=0,
                                          null="for 0.5 (images in [-1, 1]) or 1 (a latent run's latents)")
    lr_share: float = setting(0.1, "without --lr, the learning rate: this share of the teacher's (ECT tunes CIFAR-10 at "
                                   "1e-4, a tenth of EDM's training rate)", gt=0)
    share: float = setting(0.25, "without --max-steps or --max-minutes, the budget: this share of the teacher's "
                                 "training time", gt=0, flag="--share")


@dataclass
class AdversarialConfig(Section):
    """Adversarial distillation with the teacher as the discriminator (training/adversarial.py), for
    distill.method adversarial, after LADD (Sauer et al. 2024): the frozen teacher's encoder features of
    re-noised images, with small trainable heads; a hinge loss with an approximate R1 penalty; and a
    regression anchor on the teacher's own few-step ODE, which keeps the student's modes covered."""

    adversarial_weight: float = setting(0.1, "the generator's hinge term, beside the anchor's", ge=0)
    anchor_weight: float = setting(1.0, "the regression anchor: |x0 - the teacher's ODE from the same x_t|^2", ge=0)
    anchor_steps: int = setting(4, "the teacher's DDIM steps from the student's level to its x0, for the anchor", ge=1)
    d_lr: Optional[float] = setting(None, "the discriminator heads' learning rate", gt=0,
                                    null="for the teacher's own learning rate")
    d_steps: int = setting(1, "discriminator steps per generator step", ge=1)
    r1_weight: float = setting(100.0, "the approximate R1 penalty: weight x |D(x) - D(x + r1_sigma n)|^2 on real "
                                      "images (Lin et al. 2025)", ge=0)
    r1_sigma: float = setting(0.01, "the approximate R1 penalty's perturbation", gt=0)
    p_mean: float = setting(-0.4, "the discriminator's noise levels: ln(sigma) ~ N(p_mean, p_std^2)", finite=True)
    p_std: float = setting(1.0, "the discriminator's noise levels: ln(sigma) ~ N(p_mean, p_std^2)", gt=0)
    diffaugment: bool = setting(True, "flip and translate real and generated images alike before the discriminator "
                                      "(DiffAugment, Zhao et al. 2020), for small data sets")
    lr_share: float = setting(0.1, "without --lr, the student's learning rate: this share of the teacher's", gt=0)
    share: float = setting(0.25, "without --max-steps or --max-minutes, the budget: this share of the teacher's "
                                 "training time", gt=0)
