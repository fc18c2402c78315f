"""What the training loop trains: the diffusion model, or the autoencoder of latent diffusion.

The loop (loop.py) owns everything a long run needs: budgets, checkpoints, exact resume, signals,
the NaN guard, logging. A task supplies the rest:

    config              the run's config resolved against its data (sizes, channels, the autoencoder's hash)
    network             the module to optimise (its EMA is what pictures and checkpoints use)
    data                what batches are drawn from: images, or an autoencoder's cached latents
    batch(images, g)    the model-space batch of one step (with its random flips)
    draws(x0, y, g, step)   the step's random numbers, drawn from the shared generator (every
                        rank draws the same), as a list of tensors cut into micro-batches with x0
    loss(model, x0, *d) the mean loss of a micro-batch
    picture(run, ema, step)   the grid written every `sample_every` steps
    meta(ema)           what each checkpoint records beside the weights

and, for a task that changes as it trains (distillation's phases, training/distill.py), the hooks
of `Task`, which do nothing by default: phase_done / next_phase, lr_factor, tensors, restore.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import AutoencoderRun, Config
from ..data.imagedata import to_model_range, to_uint8
from ..data.latents import LatentData, encode_data, latent_std
from ..diffusion.guidance import drop_labels
from ..errors import InputError
from ..factory import autoencoder_from_run, build_diffusion, build_network, load_codec
from ..models.autoencoder import autoencoder_loss
from ..pipeline import Pipeline
from ..storage.checkpoint import RunDir
from ..storage.files import save_class_grid, save_grid


class Task:
    """What a task may add to the loop, beyond the interface above; by default nothing."""

    lr_factor = None  # step -> the learning rate's factor, instead of train.lr_schedule's

    def attach(self, trainer) -> None:
        """Called once the trainable state exists (distillation's phases read its step and clock)."""

    def phase_done(self, trainer) -> bool:
        """Whether the loop should checkpoint now and move to the next phase (`next_phase`)."""
        return False

    def next_phase(self, trainer) -> None:
        pass

    def tensors(self) -> dict:
        """Tensors a checkpoint keeps beside the model and its EMA: {name: state_dict}."""
        return {}

    def restore(self, folder, meta: dict) -> None:
        """Take back from a checkpoint what `tensors` and `meta` saved."""


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

    def draws(self, x0: Tensor, classes, generator: torch.Generator, step: int) -> list:
        labels = None
        if self.config.model.num_classes:  # a random 10% become the null class: the unconditional model (guidance.py)
            labels = drop_labels(classes, self.config.train.label_dropout, self.config.model.num_classes, generator)
        t = self.diffusion.noise_levels(len(x0), generator, x0.device)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return [labels, t, noise]

    def loss(self, model: nn.Module, x0: Tensor, labels, t: Tensor, noise: Tensor) -> Tensor:
        return self.diffusion.loss(model, x0, labels, t=t, noise=noise)

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

    def meta(self, ema_model: nn.Module) -> dict:
        return {}


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

    def draws(self, x0: Tensor, classes, generator: torch.Generator, step: int) -> list:
        noise = torch.randn((len(x0), *self.latent_shape), device=x0.device, generator=generator)
        # Each item's weight of the adversarial term in this step (the same for all): 0 until disc_start.
        a = self.config.autoencoder
        weight = a.disc_weight if step >= a.disc_start else 0.0
        return [noise, torch.full((len(x0),), weight, device=x0.device)]

    def loss(self, model: nn.Module, x0: Tensor, noise: Tensor, disc_weight: Tensor) -> Tensor:
        a = self.config.autoencoder
        return autoencoder_loss(model, x0, noise, a.kl_weight, a.reconstruction, float(disc_weight[0]))

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

    def meta(self, ema_model: nn.Module) -> dict:
        """Every checkpoint carries its latent scale: 1 / std of the posterior means over the data."""
        device = next(ema_model.parameters()).device
        return {"latent_scale": 1.0 / latent_std(lambda x: ema_model.encode(x).mean, self.data, device)}


def _check_labels(data, num_classes: int) -> None:
    if data.labels is None:
        raise InputError(f"data set {data.name!r} has no class labels; train it without --classes")
    top = int(data.labels.max())
    if num_classes <= top or int(data.labels.min()) < 0:
        raise InputError(f"data set {data.name!r} has labels 0..{top}; use --classes {top + 1}")

