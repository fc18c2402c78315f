"""Classifier-free guidance (Ho & Salimans 2022).

One network learns both the class-conditional model and the unconditional one: during training
each label is replaced by a "null" class with probability p (their Algorithm 1). At sampling the
two predictions are mixed,

    eps_hat = eps_uncond + w (eps_cond - eps_uncond),

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1 trades diversity for
samples that look more like their class. (Ho & Salimans write the same mix as (1 + w') eps_cond -
w' eps_uncond, with w' = w - 1.)

The mix is an affine combination (its weights 1 - w and w sum to one), and every objective's
denoised image is affine in the network's output for fixed x_t and t (D = c_skip x~ + c_out F,
objectives.py), as is the eps that goes with it. So mixing the network's own outputs, whatever it
predicts, gives exactly the mixed eps and x0: guidance works the same for eps, x0, v and EDM models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_labels(labels: Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by `null_class` with probability p (Ho & Salimans, Algorithm 1, line 3)."""
    if p <= 0:
        return labels
    dropped = torch.rand(labels.shape, device=labels.device, generator=generator) < p
    return torch.where(dropped, torch.full_like(labels, null_class), labels)


def guided_output(network: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """The network's output for `labels`, guided with weight w = `guidance` (Ho & Salimans eq. 6).
    x_t and t are what the network is given (its objective's input and noise label).

    w = 1 and w = 0 need one pass (conditional, resp. null labels); any other w runs the
    conditional and unconditional halves as one batch of twice the size.
    """
    null = torch.full_like(labels, network.num_classes)
    if guidance == 1:
        return network(x_t, t, labels)
    if guidance == 0:
        return network(x_t, t, null)
    conditional, unconditional = network(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
    return unconditional + guidance * (conditional - unconditional)
