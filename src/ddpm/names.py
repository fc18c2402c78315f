"""The names a config may use, one registry per concept, importable without torch.

Each registry is a `Literal` type: the config's dataclass fields are annotated with it, so the
same object validates a value, lists the choices in an error message and becomes a command-line
flag's `choices`. The module that implements a concept keys its own table by these names and
checks at import that the two agree (`check_registry`), so a name cannot be added in one place only.
"""

from __future__ import annotations

from typing import Literal, get_args

Schedule = Literal["linear", "cosine", "sigmoid"]
Objective = Literal["eps", "x0", "v"]
Loss = Literal["mse", "l1"]
TimestepSampling = Literal["uniform", "stratified", "lognormal"]
Sampler = Literal["ddpm", "ddim", "dpm++2m", "heun"]
Spacing = Literal["uniform", "trailing", "quadratic", "logsnr"]
Variance = Literal["small", "large"]  # DDPM's sigma_t^2: beta~_t or beta_t (Ho et al. §3.2)
Norm = Literal["group", "batch"]
Activation = Literal["silu", "relu"]
Upsample = Literal["nearest", "bilinear", "transposed"]
Skips = Literal["level", "block"]
Optimizer = Literal["adamw", "lion"]
LRSchedule = Literal["constant", "step", "cosine"]
NonFinite = Literal["stop", "skip"]
Precision = Literal["fp32", "bf16", "fp16"]

SCHEDULES = get_args(Schedule)
OBJECTIVES = get_args(Objective)
LOSSES = get_args(Loss)
TIMESTEP_SAMPLING = get_args(TimestepSampling)
SAMPLERS = get_args(Sampler)
SPACINGS = get_args(Spacing)
VARIANCES = get_args(Variance)
NORMS = get_args(Norm)
ACTIVATIONS = get_args(Activation)
UPSAMPLES = get_args(Upsample)
SKIPS = get_args(Skips)
OPTIMIZERS = get_args(Optimizer)
LR_SCHEDULES = get_args(LRSchedule)
NONFINITE = get_args(NonFinite)
PRECISIONS = get_args(Precision)

# Data sets by name; `folder:PATH` reads any folder of images.
DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "cifar10", "celeba", "stanford-cars", "emoji",
            "folder:PATH")


# What each named data set holds: 1 gray or 3 RGB channels. A folder is read as RGB (data.channels
# 1 reads it gray). The defaults a run starts from depend on it (config.defaults_for).
DATASET_CHANNELS = {"mnist5k": 1, "digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "celeba": 3,
                    "stanford-cars": 3, "emoji": 3}


def known_dataset(name: str) -> bool:
    return name in DATASETS[:-1] or name.startswith("folder:")


def check_registry(concept: str, table, names: tuple[str, ...]) -> None:
    """Raise at import if an implementation's table and its registry of names disagree."""
    if tuple(table) != names:
        raise AssertionError(f"the {concept} implemented ({', '.join(table)}) are not those named in ddpm.names "
                             f"({', '.join(names)})")
