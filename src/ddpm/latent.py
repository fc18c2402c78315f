"""The latent space of latent diffusion (Rombach et al. 2022): an autoencoder with its scale.

A `Codec` turns images in [-1, 1] into latents of unit standard deviation and back:

    encode(x) = scale * mean of q(z | x)          decode(z) = decoder(z / scale)

with scale = 1 / std of the posterior means over the data set (Rombach et al.'s `scale_by_std`),
so the diffusion process, which assumes data of about unit variance, sees that. (A run with
`latent.posterior: sample` trains instead on draws scale * (mean + std * noise) of q(z | x), a new
one at every step.) Two kinds load:

- an autoencoder run of `ddpm train-autoencoder`: its EMA weights; each checkpoint carries its
  scale (meta.json), computed when it was written;
- `diffusers:PATH`, a local diffusers `AutoencoderKL` folder (Stable Diffusion's VAE, TAESD's
  AutoencoderTiny), with the scaling factor of its own config. diffusers is optional.

A latent run records the sha256 of the weights it trained on and refuses to decode with others.
Its training set is encoded once (both flips when the run flips) and cached by that hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import AutoencoderRun, cache_dir
from .data.imagedata import ImageData, to_model_range
from .errors import InputError
from .models.autoencoder import Autoencoder
from .storage.checkpoint import RunDir, load_into, load_meta, load_weights

DIFFUSERS = "diffusers:"
SCALE_IMAGES = 5000  # the scale is measured on at most this many images (a fixed random subset)


@dataclass
class Codec:
    """Images in [-1, 1] <-> scaled latents. `posterior(x)` gives the mean and standard deviation of
    q(z | x), unscaled; `decode_raw(z)` decodes an unscaled latent."""

    posterior: Callable[[Tensor], tuple[Tensor, Tensor]]
    decode_raw: Callable[[Tensor], Tensor]
    module: nn.Module
    scale: float
    sha256: str
    channels: int  # of the latents
    factor: int  # how many times smaller than the image each side is
    reference: str  # as the user named it: a run directory or diffusers:PATH

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The scaled posterior mean."""
        return self.posterior(x)[0] * self.scale

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> Tensor:
        """The scaled posterior mean and standard deviation, stacked: [B, 2, C, h, w]."""
        return torch.stack(self.posterior(x), 1) * self.scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.decode_raw(z / self.scale)

    def to(self, device) -> "Codec":
        self.module.to(device)
        return self

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.channels, image_size // self.factor, image_size // self.factor)


def file_sha256(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_codec(reference: str, sha256: Optional[str] = None, device: torch.device = torch.device("cpu")) -> Codec:
    """The autoencoder `reference` names; with `sha256`, exactly those weights (an autoencoder run
    may hold several checkpoints: the one with that hash), else its newest. Refuses other weights."""
    if reference.startswith(DIFFUSERS):
        codec = _diffusers_codec(Path(reference[len(DIFFUSERS):]).expanduser(), reference)
        if sha256 is not None and codec.sha256 != sha256:
            raise InputError(f"the autoencoder at {reference} is not the one this run was trained with (its weights "
                             f"changed: sha256 {codec.sha256[:12]} instead of {sha256[:12]}); restore those weights")
    else:
        codec = _run_codec(reference, sha256)
    codec.module.eval().requires_grad_(False)
    return codec.to(device)


def autoencoder_from_run(config: AutoencoderRun) -> Autoencoder:
    """The network an autoencoder run's config describes."""
    fields = dataclasses.asdict(config.autoencoder)
    kwargs = {key: fields[key] for key in ("channels", "z_channels", "num_res", "norm", "activation", "upsample")}
    a = config.autoencoder
    return Autoencoder(config.data.channels or 3, **kwargs, discriminator_layers=a.disc_layers if a.disc_weight else 0,
                       discriminator_channels=a.disc_channels)


def _run_codec(reference: str, sha256: Optional[str]) -> Codec:
    run = RunDir(Path(reference))
    if not run.path.is_dir():
        raise InputError(f"autoencoder {reference} does not exist; train one with 'ddpm train-autoencoder --out {reference}'"
                         f" or name a diffusers folder as diffusers:PATH")
    config = run.load_config()
    if not isinstance(config, AutoencoderRun):
        raise InputError(f"{reference} is a diffusion run, not an autoencoder run; train one with 'ddpm train-autoencoder'")
    checkpoints = run.all_checkpoints()[::-1]  # newest first
    if not checkpoints:
        raise InputError(f"autoencoder run {reference} has no checkpoint yet; train it first")
    if sha256 is None:
        folder = checkpoints[0]
        sha256 = file_sha256(folder / "ema.safetensors")
    else:
        matching = [folder for folder in checkpoints if file_sha256(folder / "ema.safetensors") == sha256]
        if not matching:
            raise InputError(f"autoencoder run {reference} no longer holds the weights this run was trained with "
                             f"(sha256 {sha256[:12]}); it was retrained or replaced. Sample with the original "
                             f"autoencoder, or train a new latent run on this one")
        folder = matching[0]
    meta = load_meta(folder)
    if "latent_scale" not in meta:
        raise InputError(f"checkpoint {folder} of autoencoder {reference} has no latent scale; resume the run for a few "
                         f"steps to write one")
    autoencoder = autoencoder_from_run(config)
    load_into(autoencoder, load_weights(folder, "ema"), folder, run.config_path)

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = autoencoder.encode(x)
        return q.mean, q.std

    return Codec(posterior, autoencoder.decode, autoencoder, meta["latent_scale"],
                 sha256, config.autoencoder.z_channels, autoencoder.factor, reference)


def _diffusers_codec(path: Path, reference: str) -> Codec:
    """A diffusers AutoencoderKL saved with save_pretrained: config.json and its weights."""
    # The folder is checked before diffusers is imported: a wrong path is named as such either way.
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a diffusers AutoencoderKL folder (no config.json); save one with "
                         f"AutoencoderKL.save_pretrained(PATH)")
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise InputError(f"{path} holds no weights (.safetensors or .bin)")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise InputError(f"{reference} needs the diffusers package: pip install 'ddpm-textbook[diffusers]'") from None
    vae = AutoencoderKL.from_pretrained(str(path))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = vae.encode(x).latent_dist
        return q.mean, q.std

    return Codec(posterior, lambda z: vae.decode(z).sample, vae,
                 float(vae.config.scaling_factor), file_sha256(*weights), vae.config.latent_channels, factor, reference)


# ---- the latent scale and the encoded training set ---------------------------------------------------


@torch.no_grad()
def latent_std(encode_mean: Callable[[Tensor], Tensor], data: ImageData, device: torch.device,
               batch_size: int = 128) -> float:
    """The standard deviation of the posterior means over (a fixed subset of at most SCALE_IMAGES
    images of) the data set: its reciprocal is the latent scale."""
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:SCALE_IMAGES]
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(indices), batch_size):
        x = to_model_range(data.images[indices[start:start + batch_size]].to(device))
        z = encode_mean(x).double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.square().sum().item(), count + z.numel()
    mean = total / count
    return max(total_sq / count - mean * mean, 1e-24) ** 0.5


@dataclass
class LatentData:
    """A training set encoded once: latents [N, V, C, h, w] (V = 2 when the run flips: the latents of
    each image and of its mirror image), or with `moments` [N, V, 2, C, h, w] (the posterior's mean
    and standard deviation, to draw a latent from), and the data set's labels."""

    name: str
    images: Tensor
    labels: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.images)


@torch.no_grad()
def encode_data(codec: Codec, data: ImageData, flip: bool, device: torch.device, progress: bool = True,
                batch_size: int = 128, moments: bool = False) -> LatentData:
    """The scaled latents of every image (and of its mirror image with `flip`), or with `moments` the
    mean and standard deviation of their posteriors, from the cache when this autoencoder has
    encoded these exact images before."""
    from safetensors.torch import load_file, save_file

    if not isinstance(data, ImageData):
        raise InputError(f"latent diffusion encodes the training set once and needs it in memory; {data.name} has "
                         f"{len(data)} images, more than fit; use a subset folder")
    key = hashlib.sha256(data.images.numpy().tobytes()).hexdigest()[:16]
    kind = ("flip" if flip else "plain") + ("-moments" if moments else "")
    cached = cache_dir() / "latents" / f"{codec.sha256[:16]}-{key}-{kind}.safetensors"
    if cached.is_file():
        return LatentData(data.name, load_file(cached)["latents"], data.labels)
    views = [False, True] if flip else [False]
    encode = codec.encode_moments if moments else codec.encode
    latents = []
    for start in tqdm(range(0, len(data), batch_size), desc="encoding the training set", unit="batch",
                      disable=not progress):
        x = to_model_range(data.images[start:start + batch_size].to(device))
        latents.append(torch.stack([encode(x.flip(-1) if mirrored else x).float().cpu() for mirrored in views], 1))
    latents = torch.cat(latents).contiguous()
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Each process writes its own file (under torchrun every rank encodes); the last rename wins, whole.
    tmp = cached.with_name(f".tmp-{os.getpid()}-{cached.name}")
    save_file({"latents": latents}, str(tmp))
    tmp.replace(cached)
    return LatentData(data.name, latents, data.labels)
