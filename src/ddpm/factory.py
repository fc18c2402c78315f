"""From a config to the objects it describes: the network, the diffusion process, the optimiser,
and from a run directory to its trained network or autoencoder.

Training and the pipeline both build through here, so a run is rebuilt for sampling exactly as it
was built for training (improved-diffusion's `create_model_and_diffusion`, in small pieces). The
network comes from its spec in ddpm.registry.NETWORKS, the objective from OBJECTIVES.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .config import OWN, AutoencoderRun, Config, TrainConfig
from .diffusion.objectives import make_objective
from .diffusion.process import Diffusion
from .diffusion.schedules import NoiseSchedule, make_schedule
from .errors import CheckpointDamaged, InputError
from .models.autoencoder import autoencoder_from_run
from .storage.atomic import file_sha256
from .models.codec import DIFFUSERS, Codec, autoencoder_codec, diffusers_codec
from .registry import NETWORKS
from .storage.checkpoint import RunDir, load_into, load_meta, load_weights, verify

FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim.AdamW(fused=True) has a kernel


def build_network(config: Config) -> nn.Module:
    """The network `config.model` describes (its spec in NETWORKS), for its images' channels or its
    latents' (config.model_input)."""
    return NETWORKS.get(config.model.network, "model.network").make(config)


def build_schedule(config: Config) -> NoiseSchedule:
    """The noise schedule a config's `diffusion` section names: its betas, T and log-SNR shift."""
    d = config.diffusion
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end, d.log_snr_shift)


def build_diffusion(config: Config) -> Diffusion:
    """The forward process, objective and loss of `config.diffusion`; an objective's sigma_data left
    unset is the data's (`Config.sigma_data`)."""
    d = config.diffusion
    options = d.options_for(d.objective, "diffusion")
    if "sigma_data" in options.fields():
        options = dataclasses.replace(options, sigma_data=config.sigma_data(options.sigma_data))
    return Diffusion(build_schedule(config), make_objective(d.objective, options), d.loss, d.timestep_sampling,
                     d.min_snr_gamma)


def build_optimizer(model: nn.Module, config: TrainConfig, *others: nn.Module) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) or Lion (Chen et al. 2023, from lion-pytorch), over the
    trainable weights of `model` and of any `others` trained with it (a learned loss weighting)."""
    params = [p for module in (model, *others) for p in module.parameters() if p.requires_grad]
    betas = tuple(config.betas)
    if config.optimizer == "adamw":
        # One fused kernel for all the weights instead of a loop of small ops: the same update,
        # 6x faster on 2 CPU cores (12 ms -> 2 ms a step for the default UNet). Elsewhere (mps),
        # None keeps torch's own choice; False would also turn off its foreach default.
        fused = all(p.device.type in FUSED_DEVICES for p in params)
        return torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                                 fused=fused or None)
    if config.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


# ---- trained runs -----------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run's config, the checkpoint folder chosen, its meta.json, and the network with its weights."""

    run: RunDir
    config: "Config | AutoencoderRun"
    folder: Path
    meta: dict
    network: nn.Module


def load_run(path: "str | Path", checkpoint: Optional["str | Path"] = None, weights: str = "ema",
             kind: type = Config) -> LoadedRun:
    """The network of a run directory (`kind`: a diffusion run or an autoencoder run) with the weights of
    its newest checkpoint, or of `checkpoint`: "ema" (the default) or "model". Pipeline.from_run and
    the latent runs' autoencoders both load through here."""
    run = RunDir(Path(path))
    config = run.load_config()
    if not isinstance(config, kind):
        if kind is Config:
            raise InputError(f"{run.path} is an autoencoder run: it encodes and decodes but does not sample; train "
                             f"latent diffusion on it with 'ddpm train --autoencoder {run.path}'")
        raise InputError(f"{run.path} is a diffusion run, not an autoencoder run; train one with "
                         f"'ddpm train-autoencoder'")
    if checkpoint is not None:  # asked for by name: it loads intact, or not at all
        folder = Path(checkpoint)
        if not (folder / "meta.json").is_file():
            raise InputError(f"{folder} is not a checkpoint folder of {run.path} (it has no meta.json)")
        verify(folder)
    else:
        folder = newest_intact(run)
    network = build_network(config) if kind is Config else autoencoder_from_run(config)
    load_into(network, load_weights(folder, weights), folder, run.config_path)
    return LoadedRun(run, config, folder, load_meta(folder), network)


def newest_intact(run: RunDir) -> Path:
    """The run's newest checkpoint that passes its checksums, saying on stderr which ones it passed over."""
    folder, damaged = run.newest_intact()
    for bad, reason in damaged:
        print(f"ddpm: warning: {reason}; passing over {bad.name}", file=sys.stderr)
    if folder is None:
        if damaged:
            raise CheckpointDamaged(f"run {run.path} has no intact checkpoint: {damaged[0][1]}")
        command = "train" if isinstance(run.load_config(), Config) else "train-autoencoder"
        raise InputError(f"run {run.path} has no checkpoint yet; train it first with 'ddpm {command} --out {run.path}'")
    return folder


def load_codec(reference: str, sha256: Optional[str] = None, device: torch.device = torch.device("cpu"),
               run: Optional[Path] = None) -> Codec:
    """The autoencoder `reference` names (an autoencoder run, diffusers:PATH, or "own": the one in the
    diffusion `run`'s own directory); with `sha256`, exactly those weights (an autoencoder run may hold
    several checkpoints: the one with that hash), else its newest. Refuses other weights."""
    if reference == OWN:
        reference = str(own_autoencoder_dir(run))
    if reference.startswith(DIFFUSERS):
        codec = diffusers_codec(Path(reference[len(DIFFUSERS):]).expanduser(), reference)
        if sha256 is not None and codec.sha256 != sha256:
            raise InputError(f"the autoencoder at {reference} is not the one this run was trained with (its weights "
                             f"changed: sha256 {codec.sha256[:12]} instead of {sha256[:12]}); restore those weights")
    else:
        codec = _run_codec(reference, sha256)
    codec.module.eval().requires_grad_(False)
    return codec.to(device)


def run_codec(config: Config, run: "str | Path", device: torch.device = torch.device("cpu")) -> Optional[Codec]:
    """A latent run's autoencoder, exactly the one it was trained with; None for a pixel run."""
    latent = config.latent
    return load_codec(latent.autoencoder, latent.sha256, device, run=Path(run)) if latent.autoencoder else None


def own_autoencoder_dir(run: Path) -> Path:
    """Where a run with latent.autoencoder: own keeps the autoencoder it trained."""
    return Path(run) / "autoencoder"


def _run_codec(reference: str, sha256: Optional[str]) -> Codec:
    run = RunDir(Path(reference))
    if not run.path.is_dir():
        raise InputError(f"autoencoder {reference} does not exist; train one with 'ddpm train-autoencoder --out {reference}'"
                         f" or name a diffusers folder as diffusers:PATH")
    checkpoints = run.all_checkpoints()[::-1]  # newest first
    folder = None
    if sha256 is not None:
        matching = [folder for folder in checkpoints if file_sha256(folder / "ema.safetensors") == sha256]
        if not matching:
            raise InputError(f"autoencoder run {reference} no longer holds the weights this run was trained with "
                             f"(sha256 {sha256[:12]}); it was retrained or replaced. Sample with the original "
                             f"autoencoder, or train a new latent run on this one")
        folder = matching[0]
    loaded = load_run(reference, folder, kind=AutoencoderRun)
    if "latent_scale" not in loaded.meta:
        raise InputError(f"checkpoint {loaded.folder} of autoencoder {reference} has no latent scale; resume the run "
                         f"for a few steps to write one")
    return autoencoder_codec(loaded.network, loaded.meta["latent_scale"], sha256 or file_sha256(
        loaded.folder / "ema.safetensors"), loaded.config.autoencoder.z_channels, reference)
