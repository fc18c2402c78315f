"""Adversarial distillation with the teacher as the discriminator, after LADD (Sauer et al. 2024, "Fast
High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation").

A regression student (progressive, consistency) blurs where it is under-trained: the mean of the
images it cannot tell apart is its best answer to a squared error. A discriminator asks a different
question, whether an image looks like the data's, and its answer is sharp. LADD's discriminator needs
no pretrained image network: the frozen teacher already sees images at every noise level. Each image,
real or generated, is re-noised to a drawn level sigma and passed through the teacher's encoder (its
down path and neck, `encoder_features`); a small trainable head per feature level turns the features
into a logit (`Heads`; class-projected, Miyato & Koyama 2018, for a class-conditional run).

One step of the student, on a batch of real images x0:
  1. the student's level sigma_k is one of the levels its sampler visits (the consistency sampler's, in
     1 to distill.steps steps), x_k = x0 + sigma_k eps (its VP image), and the student's x0 guess is
     G(x_k);
  2. the heads take adversarial.d_steps steps of the hinge loss (`hinge_d`) on real x0 against the
     detached guess, each image flipped and shifted alike (DiffAugment, Zhao et al. 2020) and re-noised,
     with the approximate R1 penalty (`approximate_r1`, Lin et al. 2025) on the real ones; their own
     optimiser, their gradients averaged over ranks;
  3. the student's loss is adversarial_weight x `hinge_g` of its guess plus anchor_weight x the squared
     distance to the teacher's own ODE from x_k (anchor_steps DDIM steps, `teacher_ode`): the anchor
     keeps every mode the teacher covers, the adversarial term sharpens them.

The teacher never trains: its weights are loaded from the teacher run (hashed, as every student's) and
no gradient reaches them. The student samples with the `consistency` sampler: x0 = G(x), re-noised to
the next level, in 1 to 4 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..config.settings import check as require
from ..config.students import DistillConfig
from ..data.augment import augment_images, draw_augmentations
from ..diffusion.consistency import consistency_sigmas
from ..diffusion.process import Denoiser, levels
from ..factory import build_network
from ..runtime.distributed import average_gradients
from .distill import Source, StudentTask, start_from_teacher, student_of, tuning_budget
from .progressive import ddim_to
from .tasks import Draws, Moment

# ---- the losses -----------------------------------------------------------------------------------


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017): mean max(0, 1 - D(real)) + mean max(0, 1 + D(fake))."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g(fake: Tensor) -> Tensor:
    """The generator's side of the hinge loss: -mean D(fake)."""
    return -fake.mean()


def r1_penalty(discriminator: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): the mean over images of |grad_x D(x)|^2 at real images, differentiable."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


def approximate_r1(discriminator: Callable[[Tensor], Tensor], x: Tensor, sigma: float, noise: Tensor,
                   at_x: Optional[Tensor] = None) -> Tensor:
    """R1 without a second backward pass (Lin et al. 2025): mean (D(x) - D(x + sigma n))^2, which for a
    smooth D is sigma^2 |grad D|^2 in expectation over n ~ N(0, I). `at_x`: D(x), if computed already."""
    at_x = discriminator(x) if at_x is None else at_x
    return (at_x - discriminator(x + sigma * noise)).square().mean()


# ---- the discriminator's heads ---------------------------------------------------------------------


class Heads(nn.Module):
    """One head per teacher feature level: a 3x3 convolution, LeakyReLU(0.2), a 1x1 convolution to one
    logit per position, averaged over positions; with classes, plus the projection of the level's pooled
    features on the label's embedding. The logit is the levels' mean."""

    def __init__(self, channels: list[int], num_classes: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 1))
                                    for c in channels)
        self.embeddings = (nn.ModuleList(nn.Embedding(num_classes + 1, c) for c in channels) if num_classes
                           else None)  # + 1: the null class of label dropout

    def forward(self, features: list[Tensor], labels: Optional[Tensor] = None) -> Tensor:
        logits = []
        for i, (h, block) in enumerate(zip(features, self.blocks)):
            logit = block(h.float()).mean(dim=(1, 2, 3))
            if self.embeddings is not None and labels is not None:
                pooled = h.float().mean(dim=(2, 3))
                logit = logit + (self.embeddings[i](labels) * pooled).sum(1) / math.sqrt(pooled.shape[1])
            logits.append(logit)
        return torch.stack(logits).mean(0)


# ---- the task ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdversarialDraws(Draws):
    """Per image: the labels after dropout; the student's level and noise; and for each of the d_steps + 1
    passes of the discriminator (the last the generator's), its noise level, the re-noising of the real
    and the generated image, and their augmentations (all zero without DiffAugment); the R1 perturbation."""

    labels: Optional[Tensor]
    level: Tensor
    noise: Tensor
    d_sigma: Tensor  # [B, passes]
    d_noise: Tensor  # [B, passes, 2, C, H, W]
    augment: Tensor  # [B, passes, 2, 4]
    r1_noise: Tensor  # [B, C, H, W]


class AdversarialTask(StudentTask):
    """The student, the frozen teacher inside the discriminator, and the heads with their own optimiser;
    see the module's docstring."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        super().__init__(config, data, device, resume, progress, run)
        d, a = self.config.distill, self.config.adversarial
        self.teacher = build_network(self.config).to(device).eval().requires_grad_(False)
        start_from_teacher(self.teacher, d)  # its hashed weights, on resume too: it never changes
        self.guidance = 1.0 if d.guidance is None else d.guidance
        channels, size = self.config.model_input()
        with torch.no_grad():
            probe = self.teacher.encoder_features(torch.zeros(1, channels, size, size, device=device),
                                                  torch.zeros(1, device=device))
        self.heads = Heads([h.shape[1] for h in probe], self.config.model.num_classes).to(device)
        self.d_optimizer = torch.optim.AdamW(self.heads.parameters(), lr=a.d_lr or self.config.train.lr,
                                             betas=(0.0, 0.99), weight_decay=0.0)
        options = self.config.sample.options_for("consistency")
        schedule = self.diffusion.schedule
        # The levels its sampler visits in k = 1 .. distill.steps steps, each schedule drawn alike: row k - 1.
        self.table = torch.full((d.student_steps, d.student_steps), math.nan, dtype=torch.float64)
        for k in range(1, d.student_steps + 1):
            sigmas = consistency_sigmas(k, options.sigmas if k == d.student_steps else "", options.sigma_max, schedule)
            self.table[k - 1, :k] = torch.tensor(sigmas, dtype=torch.float64)
        self.table = self.table.to(device)

    # ---- the draws -------------------------------------------------------------------------------

    def draws(self, x0: Tensor, classes, generator: torch.Generator, now: Moment) -> AdversarialDraws:
        a, n, device = self.config.adversarial, len(x0), x0.device
        labels = self.labels(classes, generator)
        which = torch.randint(0, len(self.table), (n,), device=device, generator=generator)
        position = (torch.rand(n, device=device, generator=generator, dtype=torch.float64)
                    * (which + 1)).long().clamp(max=which)  # one of the chosen schedule's levels, alike
        level = self.table[which, position]
        noise = torch.randn(x0.shape, device=device, generator=generator)
        passes = a.d_steps + 1
        d_sigma = torch.exp(a.p_mean + a.p_std * torch.randn(n, passes, device=device, generator=generator,
                                                              dtype=torch.float64))
        d_noise = torch.randn((n, passes, 2, *x0.shape[1:]), device=device, generator=generator)
        size = x0.shape[-1]
        augment = (draw_augmentations(n * passes * 2, size, 0.5, 0.5, 0.0, generator, device).view(n, passes, 2, 4)
                   if a.diffaugment else torch.zeros(n, passes, 2, 4, dtype=torch.long, device=device))
        r1_noise = torch.randn(x0.shape, device=device, generator=generator)
        return AdversarialDraws(labels, level, noise, d_sigma, d_noise, augment, r1_noise)

    # ---- the loss ---------------------------------------------------------------------------------

    def loss(self, model: nn.Module, x0: Tensor, draws: AdversarialDraws) -> Tensor:
        a, labels = self.config.adversarial, draws.labels
        student = Denoiser(model, self.diffusion.schedule, self.diffusion.objective, clip_denoised=False)
        if labels is not None:
            student = student.conditioned(labels, 1.0)
        x_k, t_k = self.point(x0, draws.noise, draws.level)
        fake = student(x_k, t_k).x0
        for i in range(a.d_steps):
            self.discriminator_step(x0, fake.detach(), draws, i)
        logits = self.judge(fake, draws, a.d_steps, 1)
        loss = a.adversarial_weight * hinge_g(logits)
        if a.anchor_weight:
            target = self.teacher_ode(x_k, draws.level, labels)
            loss = loss + a.anchor_weight * (fake.float() - target.float()).square().mean()
        return loss

    def discriminator_step(self, real: Tensor, fake: Tensor, draws: AdversarialDraws, i: int) -> Tensor:
        """One step of the heads on the hinge loss, with the approximate R1 on the real images."""
        a = self.config.adversarial
        self.d_optimizer.zero_grad(set_to_none=True)
        real_logits = self.judge(real, draws, i, 0)
        loss = hinge_d(real_logits, self.judge(fake, draws, i, 1))
        if a.r1_weight:  # D(real) once for both terms
            loss = loss + a.r1_weight * approximate_r1(lambda x: self.judge(x, draws, i, 0), real, a.r1_sigma,
                                                       draws.r1_noise, real_logits)
        loss.backward()
        average_gradients(self.heads)
        self.d_optimizer.step()
        return loss.detach()

    def judge(self, x0: Tensor, draws: AdversarialDraws, i: int, side: int) -> Tensor:
        """The discriminator's logit for images x0 at pass i (side 0 real, 1 generated): augmented,
        re-noised to the pass's level, seen through the frozen teacher's encoder and the heads."""
        x0 = augment_images(x0, draws.augment[:, i, side])
        x_t, t = self.point(x0, draws.d_noise[:, i, side], draws.d_sigma[:, i])
        alpha, _, sigma = levels(self.diffusion.schedule, t, x_t)
        objective = self.diffusion.objective  # the teacher's input as its training fed it (process.training_loss)
        inputs, noise_label = objective.network_input(x_t, alpha, sigma), objective.c_noise(sigma.flatten(), t)
        return self.heads(self.teacher.encoder_features(inputs, noise_label, draws.labels), draws.labels)

    def point(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, t): the VP image of x0 + sigma noise, sigma within the schedule's, and its fractional timestep."""
        schedule = self.diffusion.schedule
        t = schedule.timestep(sigma.clamp(float(schedule.sigma[0]), float(schedule.sigma[-1]))).to(x0.device)
        alpha, s, _ = levels(schedule, t, x0)
        return alpha * x0 + s * noise, t

    @torch.no_grad()
    def teacher_ode(self, x_t: Tensor, sigma: Tensor, labels: Optional[Tensor]) -> Tensor:
        """The anchor: the teacher's deterministic DDIM from each image's level sigma to x0, in anchor_steps
        steps on Karras et al.'s rho = 7 levels down to the schedule's lowest, guided as distill.guidance."""
        schedule, steps = self.diffusion.schedule, self.config.adversarial.anchor_steps
        teacher = Denoiser(self.teacher, schedule, self.diffusion.objective, self.config.distill.teacher_clip)
        if labels is not None:
            teacher = teacher.conditioned(labels, self.guidance)
        low, shape = float(schedule.sigma[0]), (-1, *[1] * (x_t.ndim - 1))
        top = sigma.clamp(low, float(schedule.sigma[-1]))
        levels = [(top ** (1 / 7) + i / steps * (low ** (1 / 7) - top ** (1 / 7))) ** 7 for i in range(steps)]
        x = x_t
        for i, level in enumerate(levels):
            prediction = teacher(x, schedule.timestep(level))
            if i + 1 == steps:
                return prediction.x0
            alpha, s, _ = (v.to(x.device, x.dtype).view(shape) for v in schedule.levels(schedule.timestep(levels[i + 1])))
            x = ddim_to(prediction, x, alpha, s)
        raise AssertionError("anchor_steps >= 1")

    # ---- checkpoints -------------------------------------------------------------------------------

    def tensors(self) -> dict:
        return {"heads": self.heads.state_dict()}

    def state(self) -> dict:
        return {"d_optimizer": self.d_optimizer.state_dict()}

    def restore(self, folder, meta: dict) -> None:
        from ..storage.checkpoint import load_weights

        self.heads.load_state_dict(load_weights(folder, "heads"))

    def restore_state(self, state: dict) -> None:
        self.d_optimizer.load_state_dict(state["d_optimizer"])


def check(config: Config) -> None:
    """The adversarial student's rules on its config."""
    d = config.distill
    require(d.phase_steps is None and d.phase_minutes is None,
            "--phase-steps and --phase-minutes budget progressive distillation's halvings; an adversarial student's "
            "budget is --max-steps or --max-minutes")
    require(config.train.precision != "fp16", "the adversarial student's discriminator steps take no gradient "
                                              "scaler; train it in bf16 or fp32 (--precision)")


def configure(teacher: Config, source: Source, wanted: DistillConfig, overrides: dict) -> Config:
    """The student's config (`distill.student_of`): the consistency sampler in `wanted.student_steps` steps,
    unclipped; a distilled guidance weight samples at 1; the `overrides` (train.*, adversarial.*); the
    learning rate, by default adversarial.lr_share of the teacher's; and the budget, --max-steps and/or
    --max-minutes, or by default adversarial.share of the teacher's training time."""
    guidance = teacher.sample.guidance if wanted.guidance is None else 1.0
    config = student_of(teacher, source, wanted, {
        "sample.sampler": "consistency", "sample.steps": wanted.student_steps, "sample.clip_denoised": False,
        "sample.guidance": guidance})
    check(config.override(overrides))
    tuning = config.override(overrides).adversarial
    return config.override({**overrides, **tuning_budget(teacher, source, overrides, tuning.lr_share, tuning.share)})
