"""The schema of a run: every setting declared once, with its default, help, range and flag.

A run is fully described by one `Config`. It is validated once, at the edge (the command line or
`ddpm.train`), and written into the run directory, so that directory alone is enough to resume,
sample or evaluate the run. Each field is a `settings.setting`: what it is, its range and its
command-line flag live in the declaration, and a section's `validate()` keeps only the rules
between fields. The `sample` and `diffusion` sections also hold the options of the samplers and
objectives (`sample.eta`, `diffusion.sigma_data`): each applies when its spec is used.

The defaults here are the digits' (28x28 gray). What a new run starts from beyond them (color
data, the time budget on a CPU) is measured policy, and lives in `recipe.py`. This module is a leaf
of plain data: it imports neither torch nor any measurement, so reading a config file is cheap.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..errors import InputError

AUGMENT_LABEL_DIM = 5  # data/augment.py's label: mirrored; shift x, y; 1 - cos and sin of the turn
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
from ..registry import DATASETS, NETWORKS, OBJECTIVES, SAMPLERS, STUDENTS, OptionRegistry, option_fields, resolve
from .settings import Section, Sections, check, checked, coerce, hints, setting
from .students import AdversarialConfig, ConsistencyConfig, DistillConfig

OWN = "own"  # latent.autoencoder of a run that trains its own autoencoder first


@dataclass
class ModelConfig(Section):
    """The network: by default the UNet, one entry of `channels` and `attention` per resolution level."""

    network: str = setting("unet", "the network", names=NETWORKS)
    channels: list[int] = setting([16, 32, 64], "the widths of the levels (sized for 2 CPU cores: README, "
                                  "'The CPU default')", ge=1, length=1)
    attention: list[bool] = setting([False, False, True], "self-attention at each level")
    num_res: int = setting(1, "residual blocks per level", ge=1)
    neck_length: int = setting(1, "residual blocks at the lowest resolution", ge=0)
    time_emb_dim: int = setting(64, "the time embedding's width (an even number)", ge=2)
    dropout: float = setting(0.0, "dropout in the residual blocks", ge=0, lt=1)
    num_classes: int = setting(0, "class-conditional on the data set's K labels, with classifier-free guidance "
                                  "(0: unconditional)", ge=0, flag="--classes", metavar="K")
    norm: Norm = setting("group", "the normalisation")
    activation: Activation = setting("silu", "the activation")
    upsample: Upsample = setting("nearest", "nearest or bilinear, then a 3x3 conv; or transposed (a transposed conv)")
    skips: Skips = setting("level", "one skip per level; or block: one per residual block, as in Ho et al.'s UNet")
    neck_attention: bool = setting(False, "self-attention between the first two neck blocks (Ho et al.'s middle)")
    patch_size: int = setting(1, "> 1: fold p x p pixels into channels first, so every level runs at 1/p "
                                 "resolution (1 for none)", ge=1)
    # What Ho et al.'s converted models need (storage/diffusers.py); the defaults are ddpm's own.
    time_freq_shift: int = setting(0, "the time embedding's frequencies are 10000^(-k / (dim/2 - shift)); Ho et "
                                      "al.'s: 1", ge=0)
    time_cos_first: bool = setting(False, "cosines before sines in the time embedding (diffusers' flip_sin_to_cos)")
    downsample_padding: DownsamplePadding = setting("both", "or after: one row and column after, as TensorFlow's SAME")
    norm_groups: Optional[int] = setting(None, "every GroupNorm's groups", ge=1,
                                         null="for up to 32 of >= 4 channels, per layer")
    norm_eps: float = setting(1e-5, "every norm's epsilon; Ho et al.'s: 1e-6", gt=0)
    attention_head_dim: Optional[int] = setting(64, "channels per attention head", ge=1, null="for one head")

    def validate(self) -> None:
        check(len(self.attention) == len(self.channels),
              f"model.attention has {len(self.attention)} entries but model.channels has "
              f"{len(self.channels)}; give one true/false per level")
        check(self.time_emb_dim % 2 == 0, f"model.time_emb_dim must be an even number >= 2 (got {self.time_emb_dim})")
        check(self.time_freq_shift < self.time_emb_dim // 2,
              f"model.time_freq_shift must be in [0, time_emb_dim / 2) (got {self.time_freq_shift})")

    def check_image_size(self, image_size: int) -> None:
        check_unet_size(image_size, len(self.channels), self.patch_size)


def check_unet_size(size: int, levels: int, patch_size: int) -> None:
    """Refuse a size the UNet cannot halve at every level (the skips would not line up)."""
    factor = patch_size * 2 ** (levels - 1)
    if size % factor:
        nearest = min(range(factor, 4 * max(size, factor), factor), key=lambda s: abs(s - size))
        raise InputError(f"image size {size} is not divisible by {factor}, which a UNet with {levels} levels and "
                         f"patch size {patch_size} needs; use --image-size {nearest} or fewer levels")


class OpenSection(Section):
    """A section whose keys are its own fields and the options of every spec of one registry: the
    samplers' for `sample` (eta, variance, ...), the objectives' for `diffusion` (sigma_data, ...).
    An option applies when the spec that takes it is used: a ddpm run's `sample.eta` is the eta it
    samples with when asked for ddim. The values set live in `options` (a plain dict); `options_for`
    gives a spec's option set with them, its other options at their defaults."""

    _registry: typing.ClassVar[OptionRegistry]
    _selector: typing.ClassVar[str]  # the field that names the spec: "sampler", "objective"

    def keys(self) -> dict[str, object]:
        return {**super().keys(), **{name: None for name in option_fields(self._registry)}}

    def assign(self, key: str, value: object, name: str) -> None:
        declared = option_fields(self._registry)
        if key in declared:
            self.options[key] = coerce(value, hints(declared[key][0])[key], f"{name}.{key}")
        else:
            super().assign(key, value, name)

    def options_for(self, spec_name: str, section: str = ""):
        """The option set of spec `spec_name` with this run's values of its options, checked."""
        section = section or self._section
        spec = self._registry.get(spec_name, f"{section}.{self._selector}")
        own = {key: value for key, value in self.options.items() if key in spec.options.fields()}
        return spec.options.build(own, f"{section}.")

    def check_fields(self, name: str) -> None:
        """The section's own fields, then each option's type and range, by the option set that declares
        it, whatever spec is chosen."""
        super().check_fields(name)
        declared = option_fields(self._registry)
        for key in list(self.options):
            if key not in declared:
                raise InputError(f"unknown config key {name}.{key}; no {self._registry.kind} takes it")
            self.options[key] = checked(self.options[key], hints(declared[key][0])[key], f"{name}.{key}")
        for spec in self._registry:
            taken = {k: v for k, v in self.options.items() if k in spec.options.fields()}
            if taken:
                spec.options.build(taken, f"{name}.")


@dataclass
class DiffusionConfig(OpenSection):
    """The forward process and what the network learns to predict, with that objective's options."""

    _registry = OBJECTIVES
    _selector = "objective"
    _section = "diffusion"

    timesteps: int = setting(1000, "T, the number of diffusion steps", ge=1, flag=True)
    schedule: Schedule = setting("cosine", "noise schedule", flag=True)
    beta_start: float = setting(1e-4, "the linear schedule's first beta, at T = 1000 (Ho et al. 2020)", gt=0, lt=1)
    beta_end: float = setting(0.02, "the linear schedule's last beta, at T = 1000", gt=0, lt=1)
    log_snr_shift: float = setting(0.0, "added to the schedule's log SNR at every step: > 0 less noise, < 0 more "
                                        "(Hoogeboom et al. 2023 shift the cosine by 2 log(64 / d) for d x d images; "
                                        "0 for none)", finite=True)
    objective: str = setting("v", "what the network predicts (v measured best: docs/cpu-default.md)", names=OBJECTIVES,
                             flag=True)
    loss: Loss = setting("mse", "how the error is measured", flag=True)
    min_snr_gamma: Optional[float] = setting(None, "weight the loss by min(SNR, gamma) (Hang et al. 2023; 5 in the "
                                                   "paper)", gt=0, null="for the unweighted loss")
    loss_weighting: typing.Literal["fixed", "learned"] = setting("fixed", "or learned: EDM2's u(sigma) balances the "
                                                                 "noise levels (diffusion/weighting.py)")
    timestep_sampling: TimestepSampling = setting("uniform", "or stratified (VDM's low-discrepancy draws), or "
                                                             "lognormal (EDM's noise levels)")
    options: dict = field(default_factory=dict)  # the objectives' own (diffusion.sigma_data, ...): see OpenSection

    def validate(self) -> None:
        check(not OBJECTIVES.get(self.objective, "objective").continuous or self.timestep_sampling == "uniform",
              f"the {self.objective} objective draws its own noise levels (EDM: ln(sigma) ~ N(diffusion.p_mean, "
              f"diffusion.p_std^2)); drop diffusion.timestep_sampling")
        check(self.beta_start <= self.beta_end,
              f"diffusion.beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})")
        if self.schedule == "linear":
            scaled_end = self.beta_end * 1000 / self.timesteps
            check(scaled_end < 1.0, f"the linear schedule scaled to T={self.timesteps} reaches beta={scaled_end:g} >= 1; "
                                    f"use more timesteps or --schedule cosine")


@dataclass
class DataConfig(Section):
    """Which images to train on. `image_size` and `channels` None keep the data set's own; training
    writes the resolved values into the run's config."""

    name: str = setting("mnist5k", "the data set", names=DATASETS, what="data set", flag="--data", metavar="NAME")
    root: str = setting("data", "where data sets live and are downloaded to", flag="--data-root")
    image_size: Optional[int] = setting(None, "resize images to N x N", ge=1, null="for the data set's size",
                                        flag=True, metavar="N")
    channels: Optional[int] = setting(None, "1 grayscale or 3 RGB, converted when the data differs",
                                      null="for the data's", flag=True, choices=(1, 3))
    crop: Optional[int] = setting(None, "center-crop to N x N before resizing (celeba: 140)", ge=1, flag=True,
                                  metavar="N")
    flip: bool = setting(False, "random horizontal flips during training", flag=True)
    # Non-leaking augmentation (EDM App. F.2, data/augment.py): each kind's probability per image; the
    # network is told what was done, and samples with nothing done.
    augment_xflip: float = setting(0.0, "non-leaking augmentation: P(mirrored)", ge=0, le=1)
    augment_translate: float = setting(0.0, "non-leaking augmentation: P(shifted by up to 1/8 of the size, wrapping)",
                                       ge=0, le=1)
    augment_rotate90: float = setting(0.0, "non-leaking augmentation: P(turned by 90, 180 or 270 degrees)", ge=0, le=1)
    workers: int = setting(2, "DataLoader workers for folders too large to hold in memory", ge=0)

    @property
    def augment_dim(self) -> int:
        """The width of the networks' augmentation label (data/augment.py): 0 without augmentation."""
        return AUGMENT_LABEL_DIM if max(self.augment_xflip, self.augment_translate, self.augment_rotate90) > 0 else 0

    def validate(self) -> None:
        check(bool(self.name), "data.name must not be empty")


@dataclass
class TrainConfig(Section):
    """Optimisation, budgets, and how often to log, sample and checkpoint."""

    batch_size: int = setting(32, "the global batch", ge=1, flag=True)
    lr: float = setting(1.5e-3, "peak learning rate", gt=0, flag=True)
    optimizer: Optimizer = setting("adamw", "the optimiser", flag=True)
    weight_decay: float = setting(0.0, "the optimiser's weight decay", ge=0)
    # beta2 0.99, as EDM2 (Karras et al. 2024), not Adam's 0.999: 24.4 against 26.0 FID, docs/cpu-default.md
    betas: list[float] = setting([0.9, 0.99], "Adam's or Lion's (beta1, beta2)", ge=0, lt=1, length=(2, 2))
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up", ge=0)
    lr_schedule: LRSchedule = setting("cosine", "to zero at the end of the budget, steps or minutes (measured best: "
                                                "docs/cpu-default.md); rsqrt: EDM2's lr / sqrt(max(step / "
                                                "lr_step_size, 1))")
    lr_step_size: int = setting(10_000, "the step schedule multiplies by lr_gamma every this many steps; the rsqrt "
                                        "schedule's reference step (EDM2's t_ref)", ge=1)
    lr_gamma: float = setting(0.5, "the step schedule's factor", gt=0, le=1)
    grad_clip: float = setting(1.0, "the gradient norm's clip (0 turns clipping off)", ge=0)
    nonfinite: NonFinite = setting("stop", "a NaN/inf loss or gradient: stop, or skip the update (up to 10 in a row)")
    ema_decay: float = setting(0.999, "the EMA's decay", ge=0, lt=1)
    label_dropout: float = setting(0.1, "class-conditional models: P(label -> null class), Ho & Salimans 2022",
                                   ge=0, lt=1)
    ema_warmup: bool = setting(True, "decay min(ema_decay, (1 + n) / (10 + n)): short runs see progress")
    posthoc_ema: list[float] = setting([], "post-hoc EMA (Karras et al. 2024): the lengths sigma_rel of the power "
                                           "EMAs whose snapshots the run keeps, for 'ddpm ema' (EDM2: [0.05, 0.1]); "
                                           "[] for none", gt=0, lt=0.2886)
    snapshot_every: int = setting(500, "steps between post-hoc EMA snapshots (and one at the end)", ge=1,
                                  resumable=True)
    keep_snapshots: int = setting(32, "post-hoc EMA snapshots kept: past it every other older one goes", ge=2,
                                  resumable=True)
    max_steps: Optional[int] = setting(20_000, "stop after this many optimiser steps", ge=1,
                                       null="for no step cap (the minutes alone)", flag=True, resumable=True)
    max_minutes: Optional[float] = setting(None, "stop after this many minutes of training in all (a resumed run counts "
                                                 "its earlier time); the cosine learning rate reaches zero then", gt=0,
                                           flag=True, resumable=True)
    seed: int = setting(0, "the random seed", flag=True)
    log_every: int = setting(10, "steps between log lines", ge=1, resumable=True)
    sample_every: int = setting(500, "steps between sample grids", ge=1, resumable=True)
    checkpoint_every: int = setting(1000, "steps between checkpoints", ge=1, resumable=True)
    keep_checkpoints: int = setting(3, "checkpoints kept", ge=1, resumable=True)
    grid_size: int = setting(64, "images in each sample grid written during training", ge=1)
    tensorboard: bool = setting(True, "also write the logged scalars and sample grids to RUN/tensorboard")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank)", flag=True,
                          resumable=True)
    precision: Precision = setting("fp32", "fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler); CPUs "
                                           "without bf16 units are slower", flag=True, resumable=True)
    compile: bool = setting(False, "torch.compile the UNet", flag=True, resumable=True)
    channels_last: bool = setting(True, "NHWC memory format: 9 % more images/s on 2 AVX2 cores "
                                        "(benchmarks/throughput.py), faster on GPUs (on by default; --set "
                                        "train.channels_last=false turns it off)", flag=True, resumable=True)
    grad_accum: int = setting(1, "split each batch into K micro-batches (the gradient is the same)", ge=1, flag=True,
                              metavar="K", resumable=True)

    @property
    def step_limit(self) -> float:
        """max_steps, or infinity where null means no cap."""
        return math.inf if self.max_steps is None else self.max_steps

    def validate(self) -> None:
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
    _section = "sample"

    # stochastic: forgives a short run's errors that ODE samplers turn into blobs
    sampler: str = setting("ddpm", "the sampler", names=SAMPLERS)
    steps: int = setting(50, "timesteps to visit", ge=1)
    spacing: Spacing = setting("uniform", "how the timesteps are chosen")
    clip_denoised: bool = setting(True, "clip each step's x0 to [-1, 1]")
    guidance: float = setting(1.0, "class-conditional models: 0 unconditional, 1 conditional, > 1 guided", ge=0)
    options: dict = field(default_factory=dict)


@dataclass
class LatentConfig(Section):
    """Latent diffusion (Rombach et al. 2022): the UNet denoises an autoencoder's scaled latents.
    Training records which autoencoder (its weights' hash and latent scale); sampling refuses another."""

    autoencoder: Optional[str] = setting(
        None, "latent diffusion: denoise the latents of this autoencoder (a run of ddpm train-autoencoder, "
              "diffusers:PATH, or own: train one first in RUN/autoencoder, for latent.own_share of --max-minutes)",
        null="for pixel space", flag="--autoencoder", metavar="RUN")
    sha256: Optional[str] = setting(None, "of the autoencoder's weights, written when training starts")
    scale: Optional[float] = setting(None, "its latent scale (1 / std of the latents), written with the hash", gt=0)
    channels: Optional[int] = setting(None, "the latents' channels (written with the hash)")
    factor: Optional[int] = setting(None, "how many times smaller than the image each side is (written with the hash)")
    posterior: typing.Literal["mean", "sample"] = setting(
        "mean", "latent runs denoise each image's posterior mean (cached once), or a latent drawn from its posterior "
                "at every step", flag=True)
    # The autoencoder an "own" run trains: recipe.own_autoencoder
    own_widths: Optional[list[int]] = setting(None, "the own autoencoder's level widths", ge=1, length=1,
                                              null="for [64, 128, ...] down to 16x16 latents")
    own_share: Optional[float] = setting(None, "the own autoencoder's share of train.max_minutes", gt=0, lt=1,
                                         null="for the share measured at the run's image size")
    own_steps: Optional[int] = setting(None, "at most this many steps of the own autoencoder", ge=1)

    def validate(self) -> None:
        check(self.autoencoder is None or bool(self.autoencoder),
              "latent.autoencoder must name an autoencoder run, diffusers:PATH or own, or be null")
        check(self.posterior == "mean" or self.autoencoder is not None,
              "latent.posterior=sample draws latents of an autoencoder; name one with --autoencoder RUN")


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
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def validate(self) -> "Config":
        super().validate()
        if self.student is not None:  # the method's own rules, in its own module
            resolve(STUDENTS.get(self.student).check)(self)
        check(self.sample.steps <= self.diffusion.timesteps,
              f"sample.steps ({self.sample.steps}) cannot exceed diffusion.timesteps ({self.diffusion.timesteps})")
        if self.data.image_size is not None and (self.latent.autoencoder is None or self.latent.factor):
            self.model.check_image_size(self.model_input()[1])
        if self.latent.autoencoder == OWN:
            check(self.train.max_minutes is not None or self.latent.own_steps is not None,
                  "a run that trains its own autoencoder gives it a share of --max-minutes; give --max-minutes, "
                  "or --set latent.own_steps=N for the autoencoder's steps")
        return self

    @property
    def kind(self) -> str:
        """What the run trains, decided here alone: "student" (distilled from a teacher run), "latent"
        (a diffusion model on an autoencoder's latents) or "pixels"; an autoencoder run is "autoencoder"."""
        if self.student is not None:
            return "student"
        return "pixels" if self.latent.autoencoder is None else "latent"

    @property
    def student(self) -> Optional[str]:
        """How a student run learns from its teacher (distill.method, a name of registry.STUDENTS); None
        for a run that is no student."""
        return self.distill.method if self.distill.teacher is not None else None

    def sigma_data(self, given: Optional[float] = None) -> float:
        """The data's standard deviation that EDM's preconditioning and the consistency function take:
        `given` (diffusion.sigma_data, consistency.sigma_data), or 0.5 for images in [-1, 1] (Karras et
        al.) and 1 for a latent run's latents, which are scaled to unit std. Resolved here alone."""
        if given is not None:
            return given
        return 1.0 if self.latent.autoencoder else 0.5

    def model_input(self) -> tuple[int, int]:
        """(channels, size) of what the UNet denoises: the images, or a latent run's latents."""
        if self.latent.autoencoder is None:
            return self.data.channels or 1, self.data.image_size
        return self.latent.channels, self.data.image_size // self.latent.factor


@dataclass
class AutoencoderConfig(Section):
    """The autoencoder of latent diffusion (models/autoencoder.py), trained by `ddpm train-autoencoder`."""

    channels: list[int] = setting([64, 128, 128], "widths of the levels; f = 2^(levels - 1), e.g. [64,128,128] for "
                                                  "f = 4", ge=1, length=1, flag="--widths", metavar="[C,...]")
    z_channels: int = setting(4, "channels of the latent", ge=1, flag=True)
    num_res: int = setting(1, "residual blocks per level", ge=1)
    norm: Norm = setting("group", "the normalisation")
    activation: Activation = setting("silu", "the activation")
    upsample: Upsample = setting("nearest", "how the decoder upsamples")
    reconstruction: Loss = setting("l1", "the reconstruction loss (Rombach et al.'s pixel term; they add LPIPS, whose "
                                         "VGG weights cannot be had offline)", flag=True)
    kl_weight: float = setting(1e-6, "weight of the KL term (as in Rombach et al.'s KL configs)", ge=0, flag=True)
    # The adversarial term (a patch discriminator, hinge loss): off unless disc_weight > 0. Rombach et al.
    # use 0.5, starting at step 50,001; a CPU budget has a few thousand steps in all.
    disc_weight: float = setting(0.0, "weight of the adversarial term of a patch discriminator (0: none)", ge=0,
                                 flag=True)
    disc_start: int = setting(2000, "the step from which the discriminator trains and the decoder is judged by it",
                              ge=0, flag=True)
    disc_layers: int = setting(3, "the discriminator's strided 4x4 convolutions: patches of about 70x70 pixels at 3",
                               ge=1)
    disc_channels: int = setting(64, "the discriminator's first width", ge=1)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

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

    kind = "autoencoder"

    def validate(self) -> "AutoencoderRun":
        super().validate()
        if self.data.image_size is not None:
            self.autoencoder.check_image_size(self.data.image_size)
        return self


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
