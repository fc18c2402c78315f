"""An exponential moving average of the weights (Polyak averaging), the model used for sampling.

Ho et al. 2020 (App. B) sample from an EMA with decay 0.9999. Over a short run such a slow average
still remembers the random initialisation, so by default the decay warms up as
min(decay, (1 + n) / (10 + n)) after n updates: early on the average follows the model closely.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * weights; buffers are copied as they are."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)
