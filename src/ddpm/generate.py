"""From a config or a run directory to images: build the network, load weights, run a sampler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import RunDir, load_into, load_meta, load_weights
from .config import Config
from .data import to_uint8
from .diffusion import Denoiser
from .distributed import Distributed
from .errors import InputError
from .samplers import get_sampler, network_evaluations
from .schedules import NoiseSchedule, make_schedule, spaced_timesteps
from .unet import UNet


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} was asked for but CUDA is not available; use --device cpu")
    return device


def build_network(config: Config) -> UNet:
    """The UNet that `config` describes, for images of config.data.channels channels."""
    return UNet(config.data.channels or 1, **dataclasses.asdict(config.model))  # the fields are UNet's arguments


def build_schedule(config: Config) -> NoiseSchedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end, d.log_snr_shift)


@dataclass
class TrainedModel:
    """A run's network (EMA weights by default) with its schedule and config, ready to sample."""

    config: Config
    network: torch.nn.Module
    schedule: NoiseSchedule
    step: int

    def denoiser(self, clip_denoised: bool = True) -> Denoiser:
        return Denoiser(self.network, self.schedule, self.config.diffusion.objective, clip_denoised)


def load_run(run_dir: Path, checkpoint: Optional[Path] = None, use_ema: bool = True, device: str = "auto") -> TrainedModel:
    """Load a run directory's newest checkpoint (or `checkpoint`) for sampling."""
    run = RunDir(run_dir)
    config = run.load_config()
    folder = Path(checkpoint) if checkpoint is not None else run.latest()
    if folder is None:
        raise InputError(f"run {run.path} has no checkpoint yet; train it first with 'ddpm train --out {run.path}'")
    network = build_network(config)
    load_into(network, load_weights(folder, "ema" if use_ema else "model"), folder, run.config_path)
    network.to(resolve_device(device)).eval()
    return TrainedModel(config, network, build_schedule(config), load_meta(folder)["step"])


def class_labels(n: int, classes: Sequence[int]) -> Tensor:
    """Labels for n samples that cycle through `classes` (0, 1, 2, 0, 1, 2, ...): balanced."""
    return torch.tensor(list(classes), dtype=torch.long)[torch.arange(n) % len(classes)]


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch number `batch` of a sampling job seeded with `seed`."""
    return seed * 1_000_003 + batch


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    n: int,
    shape: tuple[int, int, int],
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    labels: Optional[Tensor] = None,
    guidance: float = 1.0,
    ranks: Optional[Distributed] = None,
    variance: str = "small",
) -> Tensor:
    """Draw `n` images of `shape` (C, H, W) as uint8 [n, C, H, W] with the named sampler, visiting
    `steps` timesteps chosen by `spacing`; `eta` is DDIM's and `variance` DDPM's.

    For a class-conditional model, `labels` [n] names each image's class and `guidance` is the
    classifier-free guidance weight. Each batch's starting and fresh noise come from a generator
    seeded with (`seed`, batch number). Under torchrun, pass `ranks` to share the batches out;
    every rank gets all n images back.
    """
    if n < 1:
        raise InputError(f"the number of samples must be >= 1 (got {n})")
    if labels is not None and len(labels) != n:
        raise InputError(f"give one label per sample ({len(labels)} labels for {n} samples)")
    sample_fn = get_sampler(sampler, eta, variance)
    schedule = denoiser.schedule
    timesteps = spaced_timesteps(schedule.timesteps, steps, spacing, schedule)
    device = next(denoiser.parameters()).device
    ranks = ranks or Distributed()
    starts = range(0, n, batch_size)
    mine = starts[ranks.rank :: ranks.world_size]  # under torchrun each rank draws every world_size-th batch
    batches = []
    with tqdm(total=n, desc=f"sampling ({sampler}, {network_evaluations(sampler, steps)} NFE)", unit="img",
              disable=not (progress and ranks.is_main)) as bar:
        for start in mine:
            count = min(batch_size, n - start)
            # Each batch has its own seed, so the images do not depend on how many ranks share the work.
            generator = torch.Generator(device=device).manual_seed(batch_seed(seed, start // batch_size))
            x = torch.randn((count, *shape), generator=generator, device=device)
            batch_denoiser = denoiser
            if labels is not None:
                batch_denoiser = denoiser.conditioned(labels[start : start + count].to(device), guidance)
            x = sample_fn(batch_denoiser, x, schedule, timesteps, generator=generator)
            batches.append((start, to_uint8(x).cpu()))
            bar.update(count * ranks.world_size)
    if ranks.enabled:
        gathered = [None] * ranks.world_size
        torch.distributed.all_gather_object(gathered, batches)
        batches = sorted(batch for part in gathered for batch in part)
    return torch.cat([images for _, images in batches])
