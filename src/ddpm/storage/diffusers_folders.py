"""diffusers' pipeline folders, both ways: `ddpm export` writes a run as one, `ddpm import` reads
one as a run (storage/diffusers.py maps the configs and the weights).

    ddpm export --run RUN --out DIR                       # DDPMPipeline / DDIMPipeline.from_pretrained(DIR)
    ddpm import --from DIR --out RUN --data cifar10       # google/ddpm-cifar10-32 as a ddpm run

The folder is diffusers' own: model_index.json, unet/config.json with a UNet2DModel's config (or
ddpm's own DdpmUNet's) and unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json
with a DDPMScheduler's, and a latent run's vqvae/. Neither direction needs diffusers installed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..config import Config, read_config
from ..errors import InputError
from ..models.codec import DIFFUSERS, Codec
from .atomic import TMP_PREFIX, atomic_write
from .diffusers import (DIFFUSERS_VERSION, SCHEDULER, UNET, VQVAE, WEIGHTS, diffusion_options, from_diffusers,
                        model_options, pipeline_refusals, scheduler_config, to_diffusers, unet2d_config)



def read_folder(folder: Path) -> tuple[dict, dict, dict[str, Tensor]]:
    """A diffusers pipeline folder (model_index.json, unet/, scheduler/), or a UNet2DModel folder with
    a scheduler folder beside it: (UNet2DModel config, scheduler config, weights)."""
    folder = Path(folder)
    unet = folder / UNET if (folder / UNET).is_dir() else folder
    scheduler = folder / SCHEDULER / "scheduler_config.json"
    for path, what in ((unet / "config.json", "a UNet2DModel's config.json"), (scheduler, "a scheduler_config.json")):
        if not path.is_file():
            raise InputError(f"{folder} is not a diffusers DDPM folder: it has no {path.relative_to(folder)} "
                             f"({what}); save one with DDPMPipeline.save_pretrained(DIR)")
    configs = [_json(unet / "config.json"), _json(scheduler)]
    if configs[0].get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"{unet / 'config.json'} is a {configs[0].get('_class_name')}, not a UNet2DModel")
    weights = sorted(unet.glob("diffusion_pytorch_model*.safetensors")) or sorted(unet.glob("diffusion_pytorch_model*.bin"))
    if not weights:
        raise InputError(f"{unet} holds no diffusion_pytorch_model.safetensors (or .bin)")
    return configs[0], configs[1], _load_weights(weights)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} holds no JSON object")
    return value


def _load_weights(files: list[Path]) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    weights = {}
    for file in files:
        try:
            part = load_file(file) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu",
                                                                                   weights_only=True)
        except Exception as error:
            raise InputError(f"cannot read the weights {file} ({type(error).__name__}: {error})") from None
        weights.update(part)
    return weights


def import_config(folder: Path, data: str, base: Optional[Config] = None) -> tuple[Config, dict[str, Tensor]]:
    """The ddpm config of a diffusers DDPM folder (its network, schedule, objective, variance, clipping and
    spacing; `data` names the data set it models) and its weights, converted to ddpm's UNet's keys."""
    from ..models.unet import unet_from_config

    unet, scheduler, theirs = read_folder(folder)
    config = (base or Config()).override({**model_options(unet), **diffusion_options(scheduler), "data.name": data,
                                          "sample.sampler": "ddpm", "sample.steps": scheduler.get("num_train_timesteps", 1000)})
    config.validate()
    return config, from_diffusers(theirs, unet_from_config(config).state_dict())


# The module diffusers finds ddpm's own model classes in (models/__init__.py says why this one):
# `import ddpm` imports it. Folders written before 2026-12-06 name ddpm.storage.diffusers_models,
# which stays importable.
MODELS = "ddpm.models"


@dataclass
class Exported:
    """What `export_run` wrote: the folder, its pipeline, its UNet's class and a latent run's
    autoencoder's, and for ddpm's own network (DdpmUNet) what a UNet2DModel could not express."""

    path: Path
    pipeline: str
    unet: str
    vqvae: str = ""
    why: str = ""


def diffusers_unet(config: Config, weights: dict[str, Tensor]) -> tuple[list, dict, dict[str, Tensor], str]:
    """The run's network as a UNet2DModel where the layouts agree key for key, else as ddpm's own
    network (models/for_diffusers.DdpmUNet), exactly: (model_index entry, config.json, weights, why)."""
    try:
        return ["diffusers", "UNet2DModel"], unet2d_config(config), to_diffusers(weights), ""
    except InputError as layout:
        channels, size = config.model_input()
        unet = {"_class_name": "DdpmUNet", "_diffusers_version": DIFFUSERS_VERSION, "ddpm": config.to_dict(),
                "sample_size": size, "in_channels": channels, "out_channels": channels}
        return [MODELS, "DdpmUNet"], unet, _under_network(weights), str(layout)


def diffusers_vqvae(codec: Codec) -> tuple[list, Optional[dict], dict[str, Tensor]]:
    """A latent run's autoencoder as LDMPipeline's `vqvae`: ddpm's own (DdpmAutoencoder, with the
    codec's scale as its scaling_factor) or the diffusers AutoencoderKL it was (config None: it saves itself)."""
    if codec.reference.startswith(DIFFUSERS):
        return ["diffusers", "AutoencoderKL"], None, {}
    run = read_config(Path(codec.reference) / "config.yaml")
    config = {"_class_name": "DdpmAutoencoder", "_diffusers_version": DIFFUSERS_VERSION, "ddpm": run.to_dict(),
              "scaling_factor": codec.scale, "latent_channels": codec.channels}
    weights = {k: v for k, v in codec.module.state_dict().items() if not k.startswith("discriminator.")}
    return [MODELS, "DdpmAutoencoder"], config, _under_network(weights)


def _under_network(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"network.{key}": value.contiguous() for key, value in weights.items()}


def export_run(config: Config, weights: dict[str, Tensor], out: Path, spacing: Optional[str] = None,
               codec: Optional[Codec] = None) -> Exported:
    """Write a DDPMPipeline folder for a run (an LDMPipeline folder for a latent run, whose `codec` it
    takes): checked whole before anything is written, then written into a temporary folder renamed
    into place, so a refusal or a crash leaves nothing behind."""
    if spacing is not None:
        config = config.override({"sample.spacing": spacing})
    pipeline_refusals(config)
    scheduler = scheduler_config(config)
    unet_class, unet, converted, why = diffusers_unet(config, weights)
    index = {"_class_name": "LDMPipeline" if codec else "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": unet_class}
    parts, vqvae_class = {UNET: (unet, converted), SCHEDULER: (scheduler, None)}, ["", ""]
    if codec is not None:
        vqvae_class, vqvae, vqvae_weights = diffusers_vqvae(codec)
        index["vqvae"], parts[VQVAE] = vqvae_class, (vqvae, vqvae_weights)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists; export into a new folder")
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_json(tmp / "model_index.json", index)
        for name, (part, part_weights) in parts.items():
            if part is None:  # a diffusers model that writes itself
                codec.module.save_pretrained(str(tmp / name))
                continue
            (tmp / name).mkdir()
            _write_json(tmp / name / ("scheduler_config.json" if name == SCHEDULER else "config.json"), part)
            if part_weights is not None:
                save_file(part_weights, str(tmp / name / WEIGHTS), metadata={"format": "pt"})
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, index["_class_name"], unet_class[1], vqvae_class[1], why)


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda file: file.write_text(json.dumps(value, indent=2) + "\n"))


def write_imported_run(config: Config, weights: dict[str, Tensor], out: Path, source: Path) -> Path:
    """A run directory of an imported model: its config and one checkpoint (step 0) whose model and EMA
    weights are the model's. It samples, evaluates, edits and distils like any run; resumed, it
    fine-tunes from a fresh optimiser (the folder carries none)."""
    from .checkpoint import RunDir, save_checkpoint

    run = RunDir(Path(out))
    if run.path.exists() and any(run.path.iterdir()):
        raise InputError(f"{run.path} exists; import into a new folder")
    run.path.mkdir(parents=True, exist_ok=True)
    config.to_yaml(run.config_path)
    save_checkpoint(run, 0, {"model": weights, "ema": weights}, {},
                    {"ema_updates": 0, "train_seconds": 0.0, "imported_from": str(source)})
    return run.path
