"""What the training loop trains: the diffusion model, or the autoencoder of latent diffusion.

The loop (loop.py) owns everything a long run needs: budgets, checkpoints, exact resume, signals,
the NaN guard, logging. A task (`Task`, below) supplies the rest: its network and data, the batch
and the random numbers of a step (its `Draws`, named), the loss, the picture, the checkpoint's
extras. The loop tells a task where the run stands (`Moment`); no task holds the trainer. The
diffusion model's task is here with the autoencoder's; a student method's is in its own module
(distill.py lists them).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..config import AutoencoderRun, Config
from ..data.augment import augment_images, augment_labels, draw_augmentations
from ..data.imagedata import to_model_range, to_uint8
from ..data.latents import LatentData, encode_data, latent_std
from ..diffusion.guidance import drop_labels
from ..diffusion.weighting import LossWeighting
from ..errors import InputError
from ..factory import autoencoder_from_run, build_diffusion, build_network, load_codec
from ..models.autoencoder import autoencoder_loss
from ..pipeline import Pipeline
from ..storage.checkpoint import RunDir
from ..storage.files import save_class_grid, save_grid
from .optim import lr_factor


@dataclass(frozen=True)
class Moment:
    """Where the run stands when the loop asks a task: its step, its training seconds over the run's
    life, and how much of the time budget (train.max_minutes) they are (0 without one, 1 at its end)."""

    step: int
    seconds: float = 0.0
    time_fraction: float = 0.0


@dataclass(frozen=True)
class Draws:
    """A step's random numbers, drawn from the shared generator (so every rank draws the same): named
    tensors whose first dimension is the batch, or None. Each task names its own in a subclass."""

    def split(self, cut: Callable[[Tensor], tuple[Tensor, ...]], count: int) -> list["Draws"]:
        """`count` Draws, the i-th holding part i of what `cut` makes of each tensor (a micro-batch)."""
        parts = {f.name: cut(value) for f in dataclasses.fields(self) if (value := getattr(self, f.name)) is not None}
        return [dataclasses.replace(self, **{name: part[i] for name, part in parts.items()}) for i in range(count)]


@dataclass(frozen=True)
class DenoisingDraws(Draws):
    """Ho et al.'s Algorithm 1: a level t and a noise per image, and the labels after dropout (or None)."""

    labels: Optional[Tensor]
    t: Tensor
    noise: Tensor
    augment: Optional[Tensor] = None  # what non-leaking augmentation does to each image (data/augment.py)


class Task(abc.ABC):
    """What the loop trains. Every task has:

        config   the run's config resolved against its data (sizes, channels, the autoencoder's hash)
        network  the module to optimise (its EMA is what pictures and checkpoints use)
        data     what batches are drawn from: images, or an autoencoder's cached latents

    and the abstract methods below. A task that changes as it trains (progressive distillation's
    phases) overrides the hooks, which by default do nothing."""

    config: "Config | AutoencoderRun"
    network: nn.Module
    data: object

    @abc.abstractmethod
    def batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The model-space batch of one step (with its random flips) from the loader's uint8 images."""

    @abc.abstractmethod
    def draws(self, x0: Tensor, classes: Optional[Tensor], generator: torch.Generator, now: Moment) -> Draws:
        """The step's random numbers for the global batch x0; the loop cuts them into micro-batches."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, x0: Tensor, draws: Draws) -> Tensor:
        """The mean loss of a micro-batch."""

    @abc.abstractmethod
    def picture(self, run: RunDir, ema_model: nn.Module, step: int) -> Tensor:
        """The grid written every train.sample_every steps (and saved as a PNG in the run)."""

    def meta(self, ema_model: nn.Module, now: Moment) -> dict:
        """What each checkpoint records beside the weights."""
        return {}

    def lr_factor(self, now: Moment) -> float:
        """The base learning rate's multiplier: by default train.lr_schedule over the run's budget."""
        return lr_factor(now.step, self.config.train, now.time_fraction)

    def phase_done(self, now: Moment) -> bool:
        """Whether the loop should checkpoint now and move to the next phase (`next_phase`)."""
        return False

    def next_phase(self, trainer) -> None:
        """Start the next phase: the loop hands over the trainable state for the task to reset."""

    def trained(self) -> dict[str, nn.Module]:
        """Modules the task trains beside the network, by the same optimiser, and which each checkpoint
        keeps under their names (a learned loss weighting); sampling never reads them."""
        return {}

    def tensors(self) -> dict:
        """Tensors a checkpoint keeps beside the model and its EMA: {name: state_dict}."""
        return {}

    def restore(self, folder, meta: dict) -> None:
        """Take back from a checkpoint what `tensors` and `meta` saved."""

    def state(self) -> dict:
        """What else the task keeps in a checkpoint's state.pt: plain data and tensors (an optimiser of its
        own), loadable with weights_only."""
        return {}

    def restore_state(self, state: dict) -> None:
        """Take back what `state` saved."""


def flip_images(x0: Tensor, flipped: Tensor) -> Tensor:
    return torch.where(flipped[:, None, None, None], x0.flip(-1), x0)


class DiffusionTask(Task):
    """Ho et al.'s denoising objective, on images or on an autoencoder's latents."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        num_classes = config.model.num_classes
        if num_classes:
            _check_labels(data, num_classes)
        self.codec = None
        latent = config.latent
        if latent.autoencoder:
            # A new run records the autoencoder's newest weights; a resumed one insists on those it recorded.
            codec = self.codec = load_codec(latent.autoencoder, latent.sha256 if resume else None, device, run)
            config = config.override({"latent.sha256": codec.sha256, "latent.scale": codec.scale,
                                      "latent.channels": codec.channels, "latent.factor": codec.factor,
                                      "sample.clip_denoised": False})  # latents are not bounded by [-1, 1]
            data = encode_data(codec, data, config.data.flip, device, progress, moments=latent.posterior == "sample")
        self.config = config
        config.model.check_image_size(config.model_input()[1])
        self.data = data
        self.network = build_network(config)
        self.diffusion = build_diffusion(config).to(device)
        learned = config.diffusion.loss_weighting == "learned"
        self.weighting = LossWeighting().to(device) if learned else None  # EDM2's u(sigma) (diffusion/weighting.py)

    def batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        flips = self.config.data.flip
        flipped = torch.rand(len(images), device=images.device, generator=generator) < 0.5 if flips else None
        if isinstance(self.data, LatentData):  # the cached latents of the image, or of its mirror image
            z = images[:, 0]
            if flips:
                z = torch.where(flipped.view(-1, *[1] * (z.dim() - 1)), images[:, 1], z)
            if self.config.latent.posterior == "sample":  # z ~ q(z | x): its mean and std are cached
                mean, std = z.unbind(1)
                z = mean + std * torch.randn(mean.shape, device=mean.device, generator=generator)
            return z
        x0 = to_model_range(images)
        return flip_images(x0, flipped) if flips else x0

    def labels(self, classes: Optional[Tensor], generator: torch.Generator) -> Optional[Tensor]:
        """The step's class labels, a random train.label_dropout of them the null class, which trains the
        unconditional model guidance needs (guidance.py); None for an unconditional run. Drawn first,
        by every diffusion task and student alike."""
        if not self.config.model.num_classes:
            return None
        return drop_labels(classes, self.config.train.label_dropout, self.config.model.num_classes, generator)

    def draws(self, x0: Tensor, classes, generator: torch.Generator, now: Moment) -> DenoisingDraws:
        labels = self.labels(classes, generator)
        t = self.diffusion.noise_levels(len(x0), generator, x0.device)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        d = self.config.data  # drawn last: a run without augmentation draws what it always drew
        augment = (draw_augmentations(len(x0), x0.shape[-1], d.augment_xflip, d.augment_translate, d.augment_rotate90,
                                      generator, x0.device) if d.augment_dim else None)
        return DenoisingDraws(labels, t, noise, augment)

    def loss(self, model: nn.Module, x0: Tensor, draws: DenoisingDraws) -> Tensor:
        if draws.augment is not None:  # the images as augmented, the network told how (data/augment.py)
            x0 = augment_images(x0, draws.augment)
            model = functools.partial(model, augment=augment_labels(draws.augment, x0.shape[-1]).to(x0.device))
        return self.diffusion.loss(model, x0, draws.labels, t=draws.t, noise=draws.noise, weighting=self.weighting)

    def trained(self) -> dict[str, nn.Module]:
        return {"loss_weighting": self.weighting} if self.weighting is not None else {}

    def picture(self, run: RunDir, ema_model: nn.Module, step: int) -> Tensor:
        """A grid from the EMA model with the run's own sampling options, always from the same noise,
        so grids compare across steps. A class-conditional model shows one row per class."""
        pipe = Pipeline(ema_model, self.diffusion, self.config, codec=self.codec)
        n = self.config.train.grid_size
        plan = pipe.plan(n)
        images, labels = pipe.draw(plan, self.config.train.seed, progress=False), plan.labels
        if labels is None:
            save_grid(images, run.sample_grid_path(step))
        else:
            save_class_grid(images, labels, run.sample_grid_path(step), n)
        return images



@dataclass(frozen=True)
class AutoencoderDraws(Draws):
    """A latent sample's noise per image, and the weight of the adversarial term (the same for all)."""

    noise: Tensor
    disc_weight: Tensor


class AutoencoderTask(Task):
    """Rombach et al.'s KL autoencoder: reconstruct each image from a sample of its posterior."""

    def __init__(self, config: AutoencoderRun, data):
        if not hasattr(data, "images"):
            raise InputError(f"an autoencoder trains on a data set held in memory; {data.name} has {len(data)} images")
        config.autoencoder.check_image_size(data.image_size)
        if config.autoencoder.disc_weight and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # Its weights train outside DDP's forward, which DDP's gradient averaging does not allow.
            raise InputError("the autoencoder's discriminator (autoencoder.disc_weight > 0) trains on one process; "
                             "run train-autoencoder without torchrun, or set autoencoder.disc_weight=0")
        self.config, self.data = config, data
        self.network = autoencoder_from_run(config)
        factor = self.network.factor
        self.latent_shape = (config.autoencoder.z_channels, data.image_size // factor, data.image_size // factor)

    def batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x0 = to_model_range(images)
        if self.config.data.flip:
            flipped = torch.rand(len(x0), device=x0.device, generator=generator) < 0.5
            x0 = flip_images(x0, flipped)
        return x0

    def draws(self, x0: Tensor, classes, generator: torch.Generator, now: Moment) -> AutoencoderDraws:
        noise = torch.randn((len(x0), *self.latent_shape), device=x0.device, generator=generator)
        a = self.config.autoencoder  # the adversarial term's weight is 0 until disc_start
        weight = a.disc_weight if now.step >= a.disc_start else 0.0
        return AutoencoderDraws(noise, torch.full((len(x0),), weight, device=x0.device))

    def loss(self, model: nn.Module, x0: Tensor, draws: AutoencoderDraws) -> Tensor:
        a = self.config.autoencoder
        return autoencoder_loss(model, x0, draws.noise, a.kl_weight, a.reconstruction, float(draws.disc_weight[0]))

    @torch.no_grad()
    def picture(self, run: RunDir, ema_model: nn.Module, step: int) -> Tensor:
        """The first grid_size images of the data set (one row) above their reconstructions (the row below)."""
        n = min(self.config.train.grid_size, len(self.data))
        device = next(ema_model.parameters()).device
        originals = self.data.images[:n].to(device)
        reconstructed, _ = ema_model(to_model_range(originals))
        images = torch.cat([originals.cpu(), to_uint8(reconstructed.cpu())])
        save_grid(images, run.sample_grid_path(step), nrow=n)
        return images

    def meta(self, ema_model: nn.Module, now: Moment) -> dict:
        """Every checkpoint carries its latent scale: 1 / std of the posterior means over the data."""
        device = next(ema_model.parameters()).device
        return {"latent_scale": 1.0 / latent_std(lambda x: ema_model.encode(x).mean, self.data, device)}


def _check_labels(data, num_classes: int) -> None:
    if data.labels is None:
        raise InputError(f"data set {data.name!r} has no class labels; train it without --classes")
    top = int(data.labels.max())
    if num_classes <= top or int(data.labels.min()) < 0:
        raise InputError(f"data set {data.name!r} has labels 0..{top}; use --classes {top + 1}")

