"""Configuration as plain dataclasses: defaults, YAML round trip, overrides, validation.

A run is fully described by one `Config`. It is validated once, at the edge (the command line or
`ddpm.train`), and written into the run directory, so that directory alone is enough to resume,
sample or evaluate the run. This module is a leaf: it imports neither torch nor the model, so
reading a config file is cheap. Every field's type is checked against its annotation (the names a
field accepts are the `Literal` types of `ddpm.names`, or a registry of `ddpm.registry`); `validate`
adds the ranges. The `sample` and `diffusion` sections also hold the options of the samplers and
objectives (`sample.eta`, `diffusion.sigma_data`): each applies when its spec is used.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError
from .names import (
    Activation,
    DownsamplePadding,
    Loss,
    LRSchedule,
    NonFinite,
    Norm,
    Optimizer,
    Precision,
    Schedule,
    Skips,
    Spacing,
    TimestepSampling,
    Upsample,
)
from .options import check, checked, coerce, hints
from .registry import DATASETS, NETWORKS, OBJECTIVES, SAMPLERS, OptionRegistry, option_fields
from .folders import planned
from .speed import CPU_GFLOPS_VARIABLE, cpu_gflops


def cache_dir() -> Path:
    """Where ddpm keeps what it derives once (reference features, rendered data sets): $DDPM_CACHE,
    default ~/.cache/ddpm."""
    return Path(os.environ.get("DDPM_CACHE", Path.home() / ".cache" / "ddpm"))


# `ddpm train --resume` continues a run with its own config; only these keys (the budget, logging
# and how the same computation is carried out) may change.
RESUMABLE = ("train.max_steps", "train.max_minutes", "train.device", "train.log_every", "train.sample_every",
             "train.checkpoint_every", "train.keep_checkpoints", "train.precision", "train.compile",
             "train.channels_last", "train.grad_accum")


@dataclass
class ModelConfig:
    """The network: by default the UNet, one entry of `channels` and `attention` per resolution level."""

    network: str = "unet"  # a name of ddpm.registry.NETWORKS
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # sized for 2 CPU cores: README, "The CPU default"
    attention: list[bool] = field(default_factory=lambda: [False, False, True])
    num_res: int = 1
    neck_length: int = 1
    time_emb_dim: int = 64
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional on the data set's labels (classifier-free guidance)
    norm: Norm = "group"
    activation: Activation = "silu"
    upsample: Upsample = "nearest"  # nearest or bilinear, then a 3x3 conv; or transposed (a transposed conv)
    skips: Skips = "level"  # one skip per level; or block: one per residual block, as in Ho et al.'s UNet
    neck_attention: bool = False  # self-attention between the first two neck blocks (Ho et al.'s middle)
    patch_size: int = 1  # > 1: fold p x p pixels into channels first, so every level runs at 1/p resolution
    # What Ho et al.'s converted models need (storage/diffusers.py); the defaults are ddpm's own.
    time_freq_shift: int = 0  # the time embedding's frequencies are 10000^(-k / (dim/2 - shift)); theirs: 1
    time_cos_first: bool = False  # cosines before sines in the time embedding (diffusers' flip_sin_to_cos)
    downsample_padding: DownsamplePadding = "both"  # or "after": one row and column after, as TensorFlow's SAME
    norm_groups: typing.Optional[int] = None  # every GroupNorm's groups; null: up to 32 of >= 4 channels, per layer
    norm_eps: float = 1e-5  # every norm's epsilon; theirs: 1e-6
    attention_head_dim: typing.Optional[int] = 64  # channels per attention head; null: one head

    def validate(self) -> None:
        NETWORKS.get(self.network, "model.network")
        check(len(self.channels) >= 1, "model.channels needs at least one level")
        check(all(c >= 1 for c in self.channels), f"model.channels must be positive (got {self.channels})")
        check(
            len(self.attention) == len(self.channels),
            f"model.attention has {len(self.attention)} entries but model.channels has "
            f"{len(self.channels)}; give one true/false per level",
        )
        check(self.patch_size >= 1, f"model.patch_size must be >= 1, 1 for none (got {self.patch_size})")
        check(self.num_res >= 1, f"model.num_res must be >= 1 (got {self.num_res})")
        check(self.neck_length >= 0, f"model.neck_length must be >= 0 (got {self.neck_length})")
        check(self.time_emb_dim >= 2 and self.time_emb_dim % 2 == 0,
               f"model.time_emb_dim must be an even number >= 2 (got {self.time_emb_dim})")
        check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1) (got {self.dropout})")
        check(self.norm_groups is None or self.norm_groups >= 1, f"model.norm_groups must be >= 1 (got {self.norm_groups})")
        check(self.norm_eps > 0, f"model.norm_eps must be > 0 (got {self.norm_eps})")
        check(self.attention_head_dim is None or self.attention_head_dim >= 1,
              f"model.attention_head_dim must be >= 1, or null for one head (got {self.attention_head_dim})")
        check(0 <= self.time_freq_shift < self.time_emb_dim // 2,
              f"model.time_freq_shift must be in [0, time_emb_dim / 2) (got {self.time_freq_shift})")
        check(self.num_classes >= 0, f"model.num_classes must be >= 0, 0 for an unconditional model (got {self.num_classes})")

    def check_image_size(self, image_size: int) -> None:
        check_unet_size(image_size, len(self.channels), self.patch_size)


def check_unet_size(size: int, levels: int, patch_size: int) -> None:
    """Refuse a size the UNet cannot halve at every level (the skips would not line up)."""
    factor = patch_size * 2 ** (levels - 1)
    if size % factor:
        nearest = min(range(factor, 4 * max(size, factor), factor), key=lambda s: abs(s - size))
        raise InputError(f"image size {size} is not divisible by {factor}, which a UNet with {levels} levels and "
                         f"patch size {patch_size} needs; use --image-size {nearest} or fewer levels")


class OpenSection:
    """A section whose keys are its own fields and the options of every spec of one registry: the
    samplers' for `sample` (eta, variance, ...), the objectives' for `diffusion` (sigma_data, ...).
    An option applies when the spec that takes it is used: a ddpm run's `sample.eta` is the eta it
    samples with when asked for ddim. Options live in `options` and read and write as attributes;
    one never set reads as its default."""

    _registry: typing.ClassVar[OptionRegistry]
    _selector: typing.ClassVar[str]  # the field that names the spec: "sampler", "objective"

    def __getattr__(self, name: str):  # only reached for names that are not fields
        if name.startswith("_") or name == "options" or name not in option_fields(self._registry):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self.options.get(name, self._default(name))

    def __setattr__(self, name: str, value) -> None:
        if name in getattr(self, "__dataclass_fields__", {}) or name not in option_fields(self._registry):
            object.__setattr__(self, name, value)
        else:
            self.options[name] = value

    def _default(self, name: str):
        own = self._registry.get(getattr(self, self._selector))
        options, field = (own.options, own.options.fields()[name]) if name in own.options.fields() \
            else option_fields(self._registry)[name]
        return field.default

    def option_for(self, spec_name: str, name: str):
        """Option `name` when this run uses spec `spec_name`: the run's value if that spec takes the
        option, else its default (what every other spec accepts)."""
        spec = self._registry.get(spec_name)
        if name in spec.options.fields():
            return self.options.get(name, spec.options.fields()[name].default)
        return option_fields(self._registry)[name][1].default

    def options_for(self, spec_name: str, section: str):
        """The option set of spec `spec_name` with this run's values of its options, checked."""
        spec = self._registry.get(spec_name, f"{section}.{self._selector}")
        own = {key: value for key, value in self.options.items() if key in spec.options.fields()}
        return spec.options.build(own, f"{section}.")

    def _validate_options(self, section: str) -> None:
        """Each option's type and range, by the option set that declares it, whatever spec is chosen."""
        declared = option_fields(self._registry)
        for key in list(self.options):
            if key not in declared:
                raise InputError(f"unknown config key {section}.{key}; no {self._registry.kind} takes it")
            options = declared[key][0]
            self.options[key] = checked(self.options[key], hints(options)[key], f"{section}.{key}")
        for spec in self._registry:
            taken = {k: v for k, v in self.options.items() if k in spec.options.fields()}
            if taken:
                spec.options.build(taken, f"{section}.")


@dataclass
class DiffusionConfig(OpenSection):
    """The forward process and what the network learns to predict, with that objective's options."""

    _registry = OBJECTIVES
    _selector = "objective"

    timesteps: int = 1000
    schedule: Schedule = "cosine"
    beta_start: float = 1e-4  # linear schedule only, at T = 1000 (Ho et al. 2020)
    beta_end: float = 0.02
    # added to the schedule's log SNR at every step: > 0 less noise, < 0 more (Hoogeboom et al.
    # 2023 shift the cosine by 2 log(64 / d) for d x d images)
    log_snr_shift: float = 0.0
    objective: str = "v"  # a name of ddpm.registry.OBJECTIVES. v: FID 46.6 vs 74.3 for eps at equal budget (32/64/128 UNet)
    loss: Loss = "mse"
    min_snr_gamma: typing.Optional[float] = None  # weight the loss by min(SNR, gamma) (Hang et al. 2023); 5 in the paper
    timestep_sampling: TimestepSampling = "uniform"  # or stratified (VDM's low-discrepancy draws), or lognormal (EDM's noise levels)
    options: dict = field(default_factory=dict)  # the objectives' own (diffusion.sigma_data, ...): see OpenSection

    def validate(self) -> None:
        OBJECTIVES.get(self.objective, "diffusion.objective")
        self._validate_options("diffusion")
        check(self.objective != "edm" or self.timestep_sampling == "uniform",
               "the edm objective draws its own noise levels, ln(sigma) ~ N(diffusion.p_mean, diffusion.p_std^2); "
               "drop diffusion.timestep_sampling")
        check(self.min_snr_gamma is None or self.min_snr_gamma > 0,
               f"diffusion.min_snr_gamma must be > 0, or null for the unweighted loss (got {self.min_snr_gamma})")
        check(self.timesteps >= 1, f"diffusion.timesteps must be >= 1 (got {self.timesteps})")
        check(math.isfinite(self.log_snr_shift),
               f"diffusion.log_snr_shift must be a finite number, 0 for none (got {self.log_snr_shift})")
        check(0.0 < self.beta_start < 1.0 and 0.0 < self.beta_end < 1.0,
               f"diffusion.beta_start and beta_end must lie in (0, 1) "
               f"(got {self.beta_start}, {self.beta_end})")
        check(self.beta_start <= self.beta_end,
               f"diffusion.beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})")
        if self.schedule == "linear":
            scaled_end = self.beta_end * 1000 / self.timesteps
            check(scaled_end < 1.0,
                   f"the linear schedule scaled to T={self.timesteps} reaches beta={scaled_end:g} >= 1; "
                   f"use more timesteps or --schedule cosine")


@dataclass
class DataConfig:
    """Which images to train on. `image_size` and `channels` None keep the data set's own; training
    writes the resolved values into the run's config."""

    name: str = "mnist5k"  # or digits, mnist, fashion-mnist, cifar10, celeba, stanford-cars, folder:PATH
    root: str = "data"
    image_size: typing.Optional[int] = None
    channels: typing.Optional[int] = None  # 1 grayscale or 3 RGB, converted when the data differs
    crop: typing.Optional[int] = None  # center crop to crop x crop before resizing (celeba: 140)
    flip: bool = False  # random horizontal flips during training
    workers: int = 2  # DataLoader workers for folders too large to hold in memory (datasets.STREAM_ABOVE)

    def validate(self) -> None:
        check(bool(self.name), "data.name must not be empty")
        DATASETS.get(self.name, "data set")
        check(self.image_size is None or self.image_size >= 1,
               f"data.image_size must be >= 1 (got {self.image_size})")
        check(self.channels in (None, 1, 3), f"data.channels must be 1 or 3 (got {self.channels})")
        check(self.crop is None or self.crop >= 1, f"data.crop must be >= 1 (got {self.crop})")
        check(self.workers >= 0, f"data.workers must be >= 0 (got {self.workers})")


@dataclass
class TrainConfig:
    """Optimisation, budgets, and how often to log, sample and checkpoint."""

    batch_size: int = 32
    lr: float = 1.5e-3
    optimizer: Optimizer = "adamw"
    weight_decay: float = 0.0
    # Adam's or Lion's (beta1, beta2). beta2 0.99 rather than Adam's 0.999 (as EDM2, Karras et al.
    # 2024): FID 24.4 against 26.0 after 1,905 steps of the CPU default, benchmarks/cpu_budget.py
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    lr_schedule: LRSchedule = "cosine"  # to zero at the end of the budget, steps or minutes: FID 19.6 vs 22.1 constant
    lr_step_size: int = 10_000  # step schedule: multiply by lr_gamma every this many steps
    lr_gamma: float = 0.5
    grad_clip: float = 1.0  # 0 turns clipping off
    nonfinite: NonFinite = "stop"  # a NaN/inf loss or gradient: stop, or skip the update (up to 10 in a row)
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # class-conditional models: P(label -> null class), Ho & Salimans 2022
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)): short runs see progress
    max_steps: int = 20_000
    max_minutes: typing.Optional[float] = None  # of training in all: a resumed run counts the time it already trained
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    grid_size: int = 64  # images in each sample grid written during training
    tensorboard: bool = True  # also write the logged scalars and sample grids to RUN/tensorboard
    device: str = "auto"
    precision: Precision = "fp32"  # or bf16 / fp16 autocast (fp16 with a gradient scaler); CPUs without bf16 units are slower
    compile: bool = False  # torch.compile the UNet for training
    channels_last: bool = True  # NHWC memory format: 9 % more images/s on 2 AVX2 cores (benchmarks/throughput.py), faster on GPUs
    grad_accum: int = 1  # micro-batches per step: the batch is split, the gradient is the same

    def validate(self) -> None:
        check(self.batch_size >= 1, f"train.batch_size must be >= 1 (got {self.batch_size})")
        check(self.lr > 0, f"train.lr must be > 0 (got {self.lr})")
        check(self.weight_decay >= 0, f"train.weight_decay must be >= 0 (got {self.weight_decay})")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"train.betas must be two numbers in [0, 1) (got {self.betas})")
        check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0 (got {self.warmup_steps})")
        check(self.lr_step_size >= 1, f"train.lr_step_size must be >= 1 (got {self.lr_step_size})")
        check(0 < self.lr_gamma <= 1, f"train.lr_gamma must be in (0, 1] (got {self.lr_gamma})")
        check(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (got {self.grad_clip})")
        check(0 <= self.label_dropout < 1, f"train.label_dropout must be in [0, 1) (got {self.label_dropout})")
        check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1) (got {self.ema_decay})")
        check(self.max_steps >= 1, f"train.max_steps must be >= 1 (got {self.max_steps})")
        check(self.max_minutes is None or self.max_minutes > 0,
               f"train.max_minutes must be > 0 (got {self.max_minutes})")
        for name in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "grid_size"):
            value = getattr(self, name)
            check(value >= 1, f"train.{name} must be >= 1 (got {value})")
        check(self.grad_accum >= 1, f"train.grad_accum must be >= 1 (got {self.grad_accum})")
        check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               f"train.device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")


@dataclass
class SampleConfig(OpenSection):
    """The sampler used for grids during training and as `ddpm sample`'s default, with the samplers'
    own options (sample.eta for ddim, sample.variance for ddpm, ...: see OpenSection)."""

    _registry = SAMPLERS
    _selector = "sampler"

    sampler: str = "ddpm"  # a name of ddpm.registry.SAMPLERS. Stochastic: forgives a short run's errors that ODE samplers turn into blobs
    steps: int = 50
    spacing: Spacing = "uniform"
    clip_denoised: bool = True
    guidance: float = 1.0  # class-conditional models: 0 unconditional, 1 conditional, > 1 guided
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        SAMPLERS.get(self.sampler, "sample.sampler")
        self._validate_options("sample")
        check(self.steps >= 1, f"sample.steps must be >= 1 (got {self.steps})")
        check(self.guidance >= 0, f"sample.guidance must be >= 0 (got {self.guidance})")


@dataclass
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): the UNet denoises an autoencoder's scaled latents.
    Training records which autoencoder (its weights' hash and latent scale); sampling refuses another."""

    # an autoencoder run directory, diffusers:PATH, or "own": one this run trains first, in RUN/autoencoder,
    # under the same clock (own_autoencoder); None: pixel space
    autoencoder: typing.Optional[str] = None
    sha256: typing.Optional[str] = None  # of the autoencoder's weights, written when training starts
    scale: typing.Optional[float] = None  # its latent scale (1 / std of the latents), written with the hash
    channels: typing.Optional[int] = None  # the latents' channels and how many times smaller than the image
    factor: typing.Optional[int] = None  # each side is (written with the hash)
    # What the UNet learns to denoise: the posterior mean of each image (cached once), or a latent
    # drawn from its posterior anew each time the image is seen (its mean and std cached once).
    posterior: typing.Literal["mean", "sample"] = "mean"
    # The autoencoder an "own" run trains: its level widths (null: [64, 128, ...] down to 16x16
    # latents, f = image size / 16), its share of train.max_minutes, and at most own_steps steps.
    own_widths: typing.Optional[list[int]] = None
    own_share: typing.Optional[float] = None  # null: OWN_SHARES by the image size, as measured
    own_steps: typing.Optional[int] = None

    def validate(self) -> None:
        check(self.autoencoder is None or bool(self.autoencoder),
               "latent.autoencoder must name an autoencoder run, diffusers:PATH or own, or be null")
        check(self.own_share is None or 0 < self.own_share < 1,
              f"latent.own_share must be in (0, 1), the autoencoder's share of the budget (got {self.own_share})")
        check(self.own_steps is None or self.own_steps >= 1, f"latent.own_steps must be >= 1 (got {self.own_steps})")
        check(self.own_widths is None or (len(self.own_widths) >= 1 and all(c >= 1 for c in self.own_widths)),
              f"latent.own_widths needs at least one positive width (got {self.own_widths})")
        check(self.scale is None or self.scale > 0, f"latent.scale must be > 0 (got {self.scale})")
        check(self.posterior == "mean" or self.autoencoder is not None,
               "latent.posterior=sample draws latents of an autoencoder; name one with --autoencoder RUN")


@dataclass
class DistillConfig:
    """Progressive distillation (Salimans & Ho 2022, training/distill.py): set for a student run, whose
    network learns to take in one DDIM step what its teacher takes in two, halving from_steps to
    steps. The teacher is named and hashed here; its weights travel in the student's checkpoints."""

    teacher: typing.Optional[str] = None  # the teacher run directory; None: this run is no student
    teacher_sha256: typing.Optional[str] = None  # of the teacher's EMA weights, written when distillation starts
    teacher_step: typing.Optional[int] = None
    from_steps: int = 64  # the teacher's DDIM steps in the first phase (a power of two)
    steps: int = 4  # the student's DDIM steps at the end (a power of two below from_steps)
    guidance: typing.Optional[float] = None  # a class-conditional teacher's guidance weight, fixed in the student
    teacher_clip: bool = True  # whether the teacher's steps clip x0, as the teacher run samples
    phase_steps: typing.Optional[int] = None  # each halving's budget: optimiser steps ...
    phase_minutes: typing.Optional[float] = None  # ... or minutes of training

    @property
    def phases(self) -> int:
        return max(0, self.from_steps.bit_length() - self.steps.bit_length())

    def validate(self) -> None:
        if self.teacher is None:
            return
        power = lambda n: n >= 1 and n & (n - 1) == 0  # noqa: E731
        check(power(self.from_steps), f"--from-steps must be a power of two (got {self.from_steps})")
        check(power(self.steps), f"--steps must be a power of two: 1, 2, 4, 8, ... (got {self.steps})")
        check(self.steps < self.from_steps, f"--steps ({self.steps}) must be fewer than --from-steps ({self.from_steps}), "
                                            f"each phase halving the teacher's steps")
        check((self.phase_steps is None) != (self.phase_minutes is None),
              "give a distillation phase's budget as --phase-steps or --phase-minutes, one of them")
        check(self.phase_steps is None or self.phase_steps >= 1, f"--phase-steps must be >= 1 (got {self.phase_steps})")
        check(self.phase_minutes is None or self.phase_minutes > 0,
              f"--phase-minutes must be > 0 (got {self.phase_minutes})")
        check(self.guidance is None or self.guidance >= 0, f"--guidance must be >= 0 (got {self.guidance})")


class Sections:
    """What every config shares: typed sections, validation, YAML round trip and dotted overrides."""

    # settings that the defaults chose for a reason beyond the data's channels ({"model.channels":
    # why}): presets.compose_config says why, config.yaml keeps it as comments above the settings
    chosen: typing.ClassVar[typing.Mapping[str, str]] = types.MappingProxyType({})

    def validate(self):
        for section_name in self.section_names():
            section = getattr(self, section_name)
            for key, hint in hints(type(section)).items():  # types and the names of Literal types
                if key != "options":
                    setattr(section, key, checked(getattr(section, key), hint, f"{section_name}.{key}"))
            section.validate()  # ranges, registry names and options
        return self

    @classmethod
    def section_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def resumed(self, overrides: dict[str, object], run: str):
        """This run's config with `overrides` applied for `--resume`: only the RESUMABLE keys may change."""
        fixed = sorted(key for key in overrides if key not in RESUMABLE)
        if fixed:
            raise InputError(f"--resume continues {run} with its own config; it cannot change {', '.join(fixed)} "
                             f"(only the budget, e.g. --max-steps or --max-minutes)")
        return self.override(overrides)

    def requeued(self, given, run: str):
        """This run's config for a command that would start it anew with `given` (a requeued job's
        `--resume-if-exists`): the two must agree, but in the budget (RESUMABLE, which `given` sets)
        and in what training resolved where `given` left it unset (sizes, the autoencoder's hash). A
        network sized by the time budget (sized_by_budget) stays the run's when the budget changes."""
        mine, theirs = _flat(self.to_dict()), _flat(given.to_dict())
        latent = bool(getattr(getattr(self, "latent", None), "autoencoder", None))
        differ = [key for key in sorted(mine.keys() | theirs.keys())
                  if mine.get(key) != theirs.get(key) and key not in RESUMABLE
                  and not (key in RESOLVED and theirs.get(key) is None)
                  and not self._sized_by_budget(key, mine.get(key), given, theirs.get(key))
                  and not (key == "sample.clip_denoised" and latent)]
        if differ:
            raise InputError(f"{run} holds a run whose config differs from this command's in {', '.join(differ[:4])}"
                             + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                             + "; give the run's settings (only the budget may change), or another --out")
        return self.override({key: theirs[key] for key in RESUMABLE if key in theirs})

    def _sized_by_budget(self, key: str, mine: object, given, theirs: object) -> bool:
        """Whether `key` differs between this run (`mine`) and `given` (`theirs`) only because their
        time budgets sized the network (Config's runs; no other kind of run is sized by its budget)."""
        return False

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain nested dicts, as config.yaml holds them: an open section's options are its keys."""
        values = {}
        for section_name in self.section_names():
            section = dataclasses.asdict(getattr(self, section_name))
            options = section.pop("options", {})
            values[section_name] = {**section, **options}
        return values

    @classmethod
    def from_dict(cls, values: dict, base=None):
        """Build a config from nested dicts (as read from YAML), over `base` or the defaults."""
        config = copy.deepcopy(base) if base is not None else cls()
        if not isinstance(values, dict):
            raise InputError("a config file must hold a mapping of sections (model, data, train, ...)")
        for section_name, section_values in values.items():
            section = _section(config, section_name)
            if not isinstance(section_values, dict):
                raise InputError(f"config section {section_name!r} must be a mapping of keys to values")
            for key, value in section_values.items():
                _assign(section, section_name, key, value)
        return config

    def to_yaml(self, path: Path) -> None:
        from .atomic import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        text = "".join(f"# {key}: {why}\n" for key, why in self.chosen.items()) + text
        atomic_write(Path(path), lambda tmp: tmp.write_text(text))

    @classmethod
    def from_yaml(cls, path: Path, base=None):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            first_line = str(error).splitlines()[0]
            raise InputError(f"config file {path} is not valid YAML: {first_line}") from None
        return cls.from_dict(values, base)

    def override(self, dotted: dict[str, object]):
        """Apply {"train.lr": 1e-3, ...}; string values are parsed as YAML scalars or lists."""
        config = copy.deepcopy(self)
        for key, value in dotted.items():
            section_name, _, name = key.partition(".")
            if not name:
                raise InputError(f"override {key!r} must look like section.key=value, e.g. train.lr=1e-3")
            if isinstance(value, str):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise InputError(f"cannot parse the value of override {key}={value!r}") from None
            _assign(_section(config, section_name), section_name, name, value)
        return config



@dataclass
class Config(Sections):
    """A diffusion run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> "Config":
        super().validate()
        if self.distill.teacher is not None:
            check(self.distill.from_steps <= self.diffusion.timesteps,
                  f"--from-steps ({self.distill.from_steps}) cannot exceed the teacher's T = {self.diffusion.timesteps}")
        check(self.sample.steps <= self.diffusion.timesteps,
               f"sample.steps ({self.sample.steps}) cannot exceed diffusion.timesteps "
               f"({self.diffusion.timesteps})")
        if self.data.image_size is not None and (self.latent.autoencoder is None or self.latent.factor):
            self.model.check_image_size(self.model_input()[1])
        if self.latent.autoencoder == OWN:
            check(self.train.max_minutes is not None or self.latent.own_steps is not None,
                  "a run that trains its own autoencoder gives it a share of --max-minutes; give --max-minutes, "
                  "or --set latent.own_steps=N for the autoencoder's steps")
            if self.data.image_size is not None:
                own_widths(self)
        return self

    def _sized_by_budget(self, key: str, mine: object, given: "Config", theirs: object) -> bool:
        """Whether `key` differs between this run (`mine`) and `given` (`theirs`) only because their
        time budgets sized the network: `given`'s value came from its budget, or a budget chose this
        run's (on whatever machine it started) and `given` holds its own budget's default."""
        if key in given.chosen:
            return True
        unsized = self.override({"latent.autoencoder": None}) if self.latent.autoencoder == OWN else self
        by_a_budget = _sized(unsized) and any(mine == settings.get(key) for _, settings in COLOR_CPU_BUDGET_SIZES)
        return by_a_budget and theirs == _flat(defaults_for(given).to_dict())[key]

    def model_input(self) -> tuple[int, int]:
        """(channels, size) of what the UNet denoises: the images, or a latent run's latents."""
        if self.latent.autoencoder is None:
            return self.data.channels or 1, self.data.image_size
        return self.latent.channels, self.data.image_size // self.latent.factor


@dataclass
class AutoencoderConfig:
    """The autoencoder of latent diffusion (models/autoencoder.py), trained by `ddpm train-autoencoder`."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 128])  # 3 levels: f = 4
    z_channels: int = 4
    num_res: int = 1
    norm: Norm = "group"
    activation: Activation = "silu"
    upsample: Upsample = "nearest"
    reconstruction: Loss = "l1"  # Rombach et al.'s pixel term (they add LPIPS, whose VGG weights cannot be had offline)
    kl_weight: float = 1e-6  # as in Rombach et al.'s KL configs
    # The adversarial term (a patch discriminator, hinge loss): off unless disc_weight > 0. Rombach et al.
    # use 0.5, starting at step 50,001; a CPU budget has a few thousand steps in all.
    disc_weight: float = 0.0
    disc_start: int = 2000  # the step from which the discriminator trains and the decoder is judged by it
    disc_layers: int = 3  # strided 4x4 convolutions: patches of about 70x70 pixels at 3
    disc_channels: int = 64

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def validate(self) -> None:
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
               f"autoencoder.channels needs at least one positive width (got {self.channels})")
        check(self.z_channels >= 1, f"autoencoder.z_channels must be >= 1 (got {self.z_channels})")
        check(self.num_res >= 1, f"autoencoder.num_res must be >= 1 (got {self.num_res})")
        check(self.kl_weight >= 0, f"autoencoder.kl_weight must be >= 0 (got {self.kl_weight})")
        check(self.disc_weight >= 0, f"autoencoder.disc_weight must be >= 0 (got {self.disc_weight})")
        check(self.disc_start >= 0, f"autoencoder.disc_start must be >= 0 (got {self.disc_start})")
        check(self.disc_layers >= 1 and self.disc_channels >= 1,
               f"autoencoder.disc_layers and disc_channels must be >= 1 (got {self.disc_layers}, {self.disc_channels})")

    def check_image_size(self, image_size: int) -> None:
        if image_size % self.factor:
            raise InputError(f"image size {image_size} is not divisible by the autoencoder's factor {self.factor} "
                             f"({len(self.channels)} levels); use --image-size {max(self.factor, image_size // self.factor * self.factor)}")
        smallest = 3 * 2 ** self.disc_layers  # the discriminator's map of patches is image_size / 2^layers - 2 wide
        if self.disc_weight > 0 and image_size < smallest:
            raise InputError(f"image size {image_size} is too small for a discriminator of {self.disc_layers} layers "
                             f"(it needs {smallest}); set autoencoder.disc_layers lower or use a larger --image-size")


@dataclass
class AutoencoderRun(Sections):
    """An autoencoder run: what it is, what it trains on and how (the diffusion run's data and train sections)."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="emoji", flip=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=4.5e-4, warmup_steps=0, lr_schedule="constant",
                                                                   grid_size=16))

    def validate(self) -> "AutoencoderRun":
        super().validate()
        if self.data.image_size is not None:
            self.autoencoder.check_image_size(self.data.image_size)
        return self


OWN = "own"  # latent.autoencoder of a run that trains its own autoencoder first


def own_widths(config: Config) -> list[int]:
    """The level widths of the autoencoder an own-autoencoder run trains: latent.own_widths, or
    [64, 128, 128, ...] with as many levels as bring the images down to 16x16 latents (f = 2 at
    32x32, 4 at 64x64), the sizes measured (docs/latent.md)."""
    if config.latent.own_widths:
        return list(config.latent.own_widths)
    size = config.data.image_size
    factor = size // 16
    if size % 16 or factor < 2 or factor & (factor - 1):
        raise InputError(f"a run that trains its own autoencoder chooses its factor for 16x16 latents, which "
                         f"{size}x{size} images do not give; set latent.own_widths, e.g. [64,128] for f = 2")
    return [64] + [128] * (factor.bit_length() - 1)


# The autoencoder's share of an own-autoencoder run's --max-minutes, by image size; a third elsewhere.
# At 32x32 (f = 2) a fifth, since the UNet's steps bound the samples and the autoencoder's rFID after
# 120 s (about 30) sits far below them. On all emoji (DDPM 100 steps) two 10-minute runs scored FID
# 88.3 and 87.6 against a third's 91.3-96.5 over four, and 30 minutes 72.1 against 75.2; on emoji
# group B, 99.3 and 102.4 on two seeds against 103.8 and 105.6 (a tenth: 101.9 and 104.8). At 64x64
# (f = 4) a third of 30 minutes left the autoencoder at rFID 82, the bound there: not cut unmeasured.
OWN_SHARES = {32: 0.2}


def own_share(config: Config) -> float:
    """The share of train.max_minutes that a run's own autoencoder trains for: latent.own_share, or
    OWN_SHARES at the run's resolved image size, or a third."""
    return config.latent.own_share or OWN_SHARES.get(config.data.image_size, 1 / 3)


def own_autoencoder(config: Config) -> "AutoencoderRun":
    """The autoencoder run that a diffusion run with latent.autoencoder: own trains first, into
    RUN/autoencoder: the default autoencoder at own_widths, on the same data (with flips, as
    train-autoencoder's default) at the resolved image size, for own_share(config) of the run's minutes
    (and at most own_steps), with the run's seed, device and bookkeeping."""
    latent, t = config.latent, config.train
    run = AutoencoderRun(data=dataclasses.replace(config.data, flip=True))
    for key in ("seed", "device", "precision", "channels_last", "log_every", "checkpoint_every", "keep_checkpoints",
                "tensorboard"):
        setattr(run.train, key, getattr(t, key))
    run.train.max_minutes = t.max_minutes * own_share(config) if t.max_minutes else None
    run.train.max_steps = latent.own_steps or run.train.max_steps
    run.autoencoder.channels = own_widths(config)
    return run


def read_config(path: Path) -> "Config | AutoencoderRun":
    """A run's config.yaml: an autoencoder run's when it has an `autoencoder` section, else a diffusion run's."""
    path = Path(path)
    kind = Config
    if path.is_file():
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            values = None  # from_yaml names the error
        if isinstance(values, dict) and "autoencoder" in values:
            kind = AutoencoderRun
    return kind.from_yaml(path)

# The dataclass defaults above were measured on 28x28 gray digits. Data with 3 channels (emoji,
# cifar10, celeba, a folder of the user's own pictures) starts from these instead, measured on 32x32
# emoji groups at the same budget: docs/cpu-default.md, "Defaults for color" and "The recipe study".
COLOR_DEFAULTS: dict[str, object] = {
    "model.channels": [32, 64, 128],
    "model.attention": [False, False, True],
    # measured with v, the default objective, and only there: a run that chooses another objective
    # (a paper's preset, EDM with its own weight) keeps that objective's unweighted loss
    "diffusion.min_snr_gamma": 5.0,
}


# Model size by the time budget, for color images on a CPU: a short --max-minutes buys more from the
# steps of a narrower UNet than from the color default's width. On emoji group A, 16/32/64 against
# 32/64/128 scored FID 233 against 284 in 5 minutes and 185 against 190 in 10, and sampled 2.3x as
# fast; in 30 minutes 32/64/128 won, 135 against 154. What decides is the steps a budget buys: the
# curves cross where 32/64/128 makes about 1,130 steps, and on a machine twice as fast 32/64/128 won
# in 10 minutes too (127 against 150). So a budget counts in minutes of the machine the sizes were
# measured on (BUDGET_SIZES_GFLOPS, where the 10-minute rows ran): --max-minutes scaled by this CPU's
# matrix-multiply rate over that one (docs/cpu-default.md, "Model size by the budget"). Rows of (most
# such minutes, settings): the first whose minutes cover the run's budget. Measured in pixel space
# on the CPU only: a GPU's minute, or a latent run's, buys other sizes.
BUDGET_SIZES_GFLOPS = 171.0
#
# Above that, latent diffusion: part of the budget (OWN_SHARES) trains an autoencoder to 16x16x4
# latents, the rest the color default's UNet on them, each step 3.4x cheaper than in pixels. With a
# third, on emoji at 32x32 in 10 minutes (about 24 of these minutes) it scored FID 82.5 and 107.0 on
# groups A and B, where pixels scored 127.2 and 170-172; at 64x64 (f = 4) in 30 minutes (27 of
# these), 136.4 against 217.2 (docs/latent.md); on all emoji in 30 minutes at 432 GFLOP/s (76 of
# these), 81.8 against 93.1, and with a fifth for its autoencoder 72.1 at 434 GFLOP/s (76.1 of
# these) against 90.8 for pixels. It is chosen where it was measured: up to 80 such minutes (the
# last point and 5 % more, above the 429-436 GFLOP/s that runs on that machine measured that day,
# so that the rule does not flip on the machine it was measured on: at 76 a 30-minute run there
# chose pixels and scored 90.8), 32x32 and 64x64 images held in memory. In 60 minutes (153) it
# scored 69.1, where the pixel curve predicts 71.4: too close to choose on a prediction
# (docs/cpu-default.md).
#
# A run that trains its own autoencoder samples in 100 DDPM steps rather than 50: the three 10-minute
# emoji defaults went from FID 101.0, 97.9 and 97.7 to 95.3, 92.5 and 91.3 (the last 89.2 in 200), the
# 30-minute one from 78.5 to 75.2. Sampling 1,000 takes about 63 s instead of 35, under half of what
# the pixel model takes in 50; the digits' pixel model gained nothing from 100.
OWN_SAMPLE_STEPS = 100
# With --max-minutes the minutes are the budget: the defaults' step cap (train.max_steps, 20,000)
# would end the run early wherever it takes more steps than that in its minutes (the 30-minute emoji
# default took 20,000 in 29.4 of its minutes at 434 GFLOP/s; a GPU, or a faster CPU, in far fewer).
# A --max-steps, a preset's or a config file's still bounds it as well.
UNCAPPED_STEPS = 10**9
COLOR_CPU_BUDGET_SIZES: tuple[tuple[float, dict[str, object]], ...] = (
    (11.0, {"model.channels": [16, 32, 64]}),
    (80.0, {"latent.autoencoder": OWN, "sample.steps": OWN_SAMPLE_STEPS}),
)
OWN_SIZES = (32, 64)


def _on_cpu(device: str) -> bool:
    """Whether a run on `device` (train.device) trains on the CPU: cpu, or auto without CUDA."""
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device.split(":")[0] == "cpu"


def _sized(chosen: Config) -> bool:
    """Whether the time budget sizes this run's network: a pixel-space color run on the CPU, with
    --max-minutes."""
    return (chosen.train.max_minutes is not None and data_channels(chosen.data) == 3
            and chosen.latent.autoencoder is None and _on_cpu(chosen.train.device))


def budget_gflops() -> float:
    """The matrix-multiply rate that scales a time budget: this CPU's (speed.cpu_gflops),
    but under torchrun the study's own unless DDPM_CPU_GFLOPS gives one, since every rank must
    choose the same network and ranks that share a machine's cores measure different rates."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and CPU_GFLOPS_VARIABLE not in os.environ:
        return BUDGET_SIZES_GFLOPS
    return cpu_gflops()


def sized_by_budget(chosen: Config, pixels: bool = False) -> dict[str, object]:
    """The settings that a color run's time budget (train.max_minutes) chooses over COLOR_DEFAULTS:
    those of the first COLOR_CPU_BUDGET_SIZES row that covers it, in minutes of the study's machine,
    for a pixel-space color run on the CPU; none for any other run. With `pixels` (a flag kept the
    run in pixels) the rows that choose an autoencoder are passed over, with all they set."""
    if not _sized(chosen):
        return {}
    rows = [(most, settings) for most, settings in COLOR_CPU_BUDGET_SIZES
            if "latent.autoencoder" not in settings or (not pixels and _own_fits(chosen.data))]
    return next((dict(settings) for most, settings in rows if budget_minutes(chosen) <= most), {})


def _own_fits(data: DataConfig) -> bool:
    """Whether a run on `data` may train its own autoencoder by default: images of a size it was
    measured at (OWN_SIZES) that are held in memory, as encoding the training set once needs."""
    size, in_memory = planned(data.name, data.image_size, data.crop)
    return in_memory and size in OWN_SIZES


def budget_minutes(chosen: Config) -> float:
    """A run's --max-minutes in minutes of the CPU the sizes were measured on: scaled by this
    CPU's matrix-multiply rate over BUDGET_SIZES_GFLOPS."""
    return chosen.train.max_minutes * budget_gflops() / BUDGET_SIZES_GFLOPS


def chosen_by_budget(first: Config, config: Config) -> dict[str, str]:
    """Why each setting that the time budget of `first` (the layers above the defaults) chose is in
    `config` (those layers over the defaults): {"model.channels": "[16, 32, 64], chosen by ..."}, for
    the settings no layer overrode."""
    settings = sized_by_budget(first)
    if not settings:
        return {}
    flat = _flat(config.to_dict())
    why = (f"chosen by the time budget: --max-minutes {first.train.max_minutes:g} on a CPU at {budget_gflops():.0f} "
           f"GFLOP/s, {budget_minutes(first):.1f} minutes of the {BUDGET_SIZES_GFLOPS:.0f} GFLOP/s CPU the sizes "
           f"were measured on (config.COLOR_CPU_BUDGET_SIZES; docs/cpu-default.md)")
    return {key: f"{value}, {why}" for key, value in settings.items() if flat[key] == value}


def data_channels(data: DataConfig) -> int:
    """How many channels the data set of `data` holds as the model will see it: data.channels when
    set, else the named set's own (its spec in ddpm.registry.DATASETS; 3 for a folder, read as RGB)."""
    return data.channels or DATASETS.get(data.name, "data set").channels


def defaults_for(chosen: Config, pixels: bool = False) -> Config:
    """The config a run starts from, given what the layers above the defaults chose (`chosen`): the
    gray defaults, or COLOR_DEFAULTS over them for 3-channel data. Chosen by what the data is, not
    its name, so a user's own folder of color images gets what emoji and CIFAR-10 get. The color
    loss weight goes with the objective it was measured with: a run on another objective keeps
    that objective's own loss. A short time budget on the CPU chooses a narrower network, a longer
    one latent diffusion (sized_by_budget, which `pixels` passes to). A run that trains its own
    autoencoder samples in OWN_SAMPLE_STEPS. A run with --max-minutes has no step cap of its own
    (UNCAPPED_STEPS)."""
    own = {"sample.steps": OWN_SAMPLE_STEPS} if chosen.latent.autoencoder == OWN else {}
    uncapped = {"train.max_steps": UNCAPPED_STEPS} if chosen.train.max_minutes is not None else {}
    if data_channels(chosen.data) != 3:
        return Config().override({**own, **uncapped})
    color = dict(COLOR_DEFAULTS)
    if chosen.diffusion.objective != Config().diffusion.objective:
        del color["diffusion.min_snr_gamma"]
    return Config().override({**color, **own, **uncapped, **sized_by_budget(chosen, pixels)})


# ---- helpers ---------------------------------------------------------------------------------


# What training resolves and writes into the run's config (from the data and the autoencoder).
RESOLVED = ("data.image_size", "data.channels", "latent.sha256", "latent.scale", "latent.channels", "latent.factor")


def _flat(values: dict) -> dict:
    """{"section.key": value} of a config's nested dicts."""
    return {f"{section}.{key}": value for section, keys in values.items() for key, value in keys.items()}




def _section(config: Sections, name: str):
    sections = config.section_names()
    if name not in sections:
        raise InputError(f"unknown config section {name!r}; the sections are {', '.join(sections)}")
    return getattr(config, name)


def _assign(section, section_name: str, key: str, value: object) -> None:
    types = {k: v for k, v in hints(type(section)).items() if k != "options"}
    if isinstance(section, OpenSection):
        declared = option_fields(section._registry)
        if key in declared:
            section.options[key] = coerce(value, hints(declared[key][0])[key], f"{section_name}.{key}")
            return
        types.update({name: None for name in declared})
    if key not in types:
        raise InputError(f"unknown config key {section_name}.{key}; {section_name} has {', '.join(types)}")
    setattr(section, key, coerce(value, types[key], f"{section_name}.{key}"))
