"""The closed sets of names a config may use, importable without torch.

Each is a `Literal` type: the config's dataclass fields are annotated with it, so the same object
validates a value, lists the choices in an error message and becomes a command-line flag's
`choices`. The module that implements a concept keys its own table by these names and checks at
import that the two agree (`check_registry`), so a name cannot be added in one place only.

The open sets, where users add their own (samplers, objectives, networks, data sets), are the
registries of specs in ddpm.registry.
"""

from __future__ import annotations

from typing import Literal, get_args

Schedule = Literal["linear", "cosine", "sigmoid"]
Loss = Literal["mse", "l1"]
TimestepSampling = Literal["uniform", "stratified", "lognormal"]
Spacing = Literal["uniform", "trailing", "leading", "quadratic", "logsnr"]
Norm = Literal["group", "batch"]
Activation = Literal["silu", "relu"]
Upsample = Literal["nearest", "bilinear", "transposed"]
Skips = Literal["level", "block"]
DownsamplePadding = Literal["both", "after"]
Optimizer = Literal["adamw", "lion"]
LRSchedule = Literal["constant", "step", "cosine", "rsqrt"]
NonFinite = Literal["stop", "skip"]
Precision = Literal["fp32", "bf16", "fp16"]

SCHEDULES = get_args(Schedule)
LOSSES = get_args(Loss)
TIMESTEP_SAMPLING = get_args(TimestepSampling)
SPACINGS = get_args(Spacing)
NORMS = get_args(Norm)
ACTIVATIONS = get_args(Activation)
UPSAMPLES = get_args(Upsample)
SKIPS = get_args(Skips)
DOWNSAMPLE_PADDINGS = get_args(DownsamplePadding)
OPTIMIZERS = get_args(Optimizer)
LR_SCHEDULES = get_args(LRSchedule)
NONFINITE = get_args(NonFinite)
PRECISIONS = get_args(Precision)


def element_loss(name: str):
    """torch's per-element loss called `name` (one of LOSSES): F.mse_loss or F.l1_loss."""
    if name not in LOSSES:
        from ..errors import InputError

        raise InputError(f"unknown loss {name!r}; choose {' or '.join(LOSSES)}")
    import torch.nn.functional as F  # here, not at the top: this module is imported without torch

    return {"mse": F.mse_loss, "l1": F.l1_loss}[name]


def check_registry(concept: str, table, names: tuple[str, ...]) -> None:
    """Raise at import if an implementation's table and its registry of names disagree."""
    if tuple(table) != names:
        raise AssertionError(f"the {concept} implemented ({', '.join(table)}) are not those named in ddpm.config.names "
                             f"({', '.join(names)})")
