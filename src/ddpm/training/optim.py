"""The learning-rate schedule: linear warm-up, then constant, step or cosine (the optimiser itself is
built by factory.build_optimizer).

Cosine decays to zero at the end of the budget: at train.max_steps, or at train.max_minutes of
training when that comes first, so a 10-minute run ends its 10 minutes at a learning rate of zero.
"""

from __future__ import annotations

import math
from ..config import TrainConfig


def budget_spent(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """How much of the run's budget is spent at `step`, from 0 to 1: of train.max_steps, or of the time
    budget (`time_fraction` of train.max_minutes), whichever runs out first."""
    return min(1.0, max(step / config.max_steps if config.max_steps else 0.0, time_fraction))


def lr_factor(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """The multiplier of the base learning rate at `step` (0-based), when `time_fraction` of the
    time budget (train.max_minutes) is spent: the run's budget is one span (`span_factor`)."""
    return span_factor(step, budget_spent(step, config, time_fraction), config)


def span_factor(step: int, spent: float, config: TrainConfig, schedule: str = "") -> float:
    """The multiplier `step` steps into a span of training of which `spent` (0 to 1) is gone: a linear
    warm-up over train.warmup_steps, then `schedule` (by default train.lr_schedule). A run's budget is
    one span; progressive distillation's phases are one each."""
    schedule = schedule or config.lr_schedule
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if schedule == "constant":
        decay = 1.0
    elif schedule == "step":
        decay = config.lr_gamma ** (step // config.lr_step_size)
    elif schedule == "cosine":  # Loshchilov & Hutter 2017, to zero when the span ends
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, spent))))
    elif schedule == "rsqrt":  # EDM2 (Karras et al. 2024, eq. 121): constant to t_ref, then 1 / sqrt(t / t_ref)
        decay = 1.0 / math.sqrt(max(step / config.lr_step_size, 1.0))
    else:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    return warmup * decay
