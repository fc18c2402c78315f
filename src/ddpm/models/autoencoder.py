"""The autoencoder of latent diffusion (Rombach et al. 2022, the KL-regularised variant).

    x ─ conv3x3 ─ Down_0 ─ … ─ Down_{L-1} ─ mid ─ norm/act/conv3x3 ─ (mean, log variance) of z
    z ─ conv3x3 ─ mid ─ Up_{L-1} ─ … ─ Up_0 ─ norm/act/conv3x3 ─ x̂

Each Down level runs `num_res` residual blocks (the UNet's, without a timestep) and, except the
last, halves the resolution with a strided 3x3 convolution; the decoder mirrors it with
`num_res + 1` blocks per level and an upsampling after each level but the last. With L levels the
latent is f = 2^(L-1) times smaller on each side than the image, with `z_channels` channels.

The encoder outputs a diagonal Gaussian posterior q(z | x) = N(mean, diag(exp(log_var))); training
decodes a sample of it (the reparameterisation trick) and adds kl_weight * KL(q || N(0, I)) to the
reconstruction loss, which keeps the latent space smooth and near the origin without forcing the
posterior to be the prior (kl_weight ~1e-6: almost a plain autoencoder).

Optionally (disc_weight > 0), a patch discriminator judges the reconstructions (Rombach et al.'s
adversarial term, from Esser et al.'s VQGAN): from step disc_start the discriminator learns to
tell images from reconstructions with a hinge loss, and the decoder is pushed to fool it, with a
weight that balances the two gradients at the decoder's last layer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AutoencoderRun
from ..config.names import element_loss
from .unet import ACTIVATIONS, ResidualBlock, group_norm, make_norm, make_upsample


class DiagonalGaussian:
    """q(z | x): a Gaussian with diagonal covariance, per latent element."""

    def __init__(self, mean: Tensor, log_var: Tensor):
        self.mean = mean
        self.log_var = log_var.clamp(-30.0, 20.0)  # exp() stays finite in fp32

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def sample(self, noise: Tensor) -> Tensor:
        """mean + std * noise: differentiable in mean and std (the reparameterisation trick)."""
        return self.mean + self.std * noise

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) of each item, summed over its latent elements: [B].

        For one element, KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2.
        """
        return 0.5 * (self.mean.square() + self.log_var.exp() - 1.0 - self.log_var).flatten(1).sum(1)


class Encoder(nn.Module):
    def __init__(self, image_channels: int, channels: Sequence[int], z_channels: int, num_res: int,
                 norm: str, activation: str):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.stem = nn.Conv2d(image_channels, channels[0], 3, padding=1)
        levels, width = [], channels[0]
        for i, out in enumerate(channels):
            blocks = []
            for _ in range(num_res):
                blocks.append(ResidualBlock(width, out, 0, norm=norm, activation=activation))
                width = out
            if i < len(channels) - 1:
                blocks.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.mid = ResidualBlock(width, width, 0, norm=norm, activation=activation)
        self.norm = make_norm(norm, width)
        self.head = nn.Conv2d(width, 2 * z_channels, 3, padding=1)  # mean and log variance

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.levels(self.stem(x)))
        return self.head(self.act(self.norm(h)))


class Decoder(nn.Module):
    def __init__(self, image_channels: int, channels: Sequence[int], z_channels: int, num_res: int,
                 norm: str, activation: str, upsample: str):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        width = channels[-1]
        self.stem = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = ResidualBlock(width, width, 0, norm=norm, activation=activation)
        levels = []
        for i in reversed(range(len(channels))):
            blocks = []
            for _ in range(num_res + 1):
                blocks.append(ResidualBlock(width, channels[i], 0, norm=norm, activation=activation))
                width = channels[i]
            if i > 0:
                blocks.append(make_upsample(upsample, width))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm = make_norm(norm, width)
        self.head = nn.Conv2d(width, image_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.levels(self.mid(self.stem(z)))
        return self.head(self.act(self.norm(h)))


class PatchDiscriminator(nn.Module):
    """Isola et al.'s PatchGAN: 4x4 convolutions, `layers` of them strided, then two more; the output
    is a map of logits, one per overlapping patch of the image, > 0 for "a real image"."""

    def __init__(self, image_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(image_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            blocks += [nn.Conv2d(width, out, 4, stride=2 if i < layers else 1, padding=1, bias=False),
                       group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Autoencoder(nn.Module):
    """Images in [-1, 1], `[B, C, H, W]` <-> latents `[B, z_channels, H / f, W / f]`. With
    `discriminator_layers` it carries the patch discriminator that trains beside it (never used to
    encode or decode)."""

    def __init__(self, image_channels: int, channels: Sequence[int] = (64, 128, 128), z_channels: int = 4,
                 num_res: int = 1, norm: str = "group", activation: str = "silu", upsample: str = "nearest",
                 discriminator_layers: int = 0, discriminator_channels: int = 64):
        super().__init__()
        self.image_channels, self.z_channels = image_channels, z_channels
        self.factor = 2 ** (len(channels) - 1)
        self.encoder = Encoder(image_channels, channels, z_channels, num_res, norm, activation)
        self.decoder = Decoder(image_channels, channels, z_channels, num_res, norm, activation, upsample)
        self.discriminator = PatchDiscriminator(image_channels, discriminator_channels, discriminator_layers) \
            if discriminator_layers else None

    def encode(self, x: Tensor) -> DiagonalGaussian:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, log_var)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Optional[Tensor] = None) -> tuple[Tensor, DiagonalGaussian]:
        """The reconstruction of x from a posterior sample (the mean when `noise` is None), and the posterior."""
        posterior = self.encode(x)
        z = posterior.mean if noise is None else posterior.sample(noise)
        return self.decode(z), posterior


def autoencoder_from_run(config: AutoencoderRun, discriminator: bool = True) -> Autoencoder:
    """The network an autoencoder run's config describes (without its discriminator: what decodes)."""
    a = config.autoencoder
    return Autoencoder(config.data.channels or 3, a.channels, a.z_channels, a.num_res, a.norm, a.activation, a.upsample,
                       discriminator_layers=a.disc_layers if a.disc_weight and discriminator else 0,
                       discriminator_channels=a.disc_channels)


def autoencoder_loss(model: nn.Module, x: Tensor, noise: Tensor, kl_weight: float, reconstruction: str,
                     disc_weight: float = 0.0) -> Tensor:
    """Rombach et al.'s objective, per image: sum over pixels of |x - x̂| (or its square) + kl_weight * KL.

    Divided by the number of pixel values, so that the loss reads as a per-pixel error and gradient
    clipping sees the scale the diffusion loss has; the balance of the two terms is the paper's.
    With disc_weight > 0 (from the step the adversarial term starts) the model's discriminator adds
    its two terms: adversarial_terms() below.
    """
    reconstructed, posterior = model(x, noise)
    error = element_loss(reconstruction)(reconstructed, x, reduction="none")
    numel = x[0].numel()
    rec = error.flatten(1).sum(1).mean() / numel
    loss = rec + kl_weight * posterior.kl().mean() / numel
    if not disc_weight:
        return loss
    autoencoder = _unwrapped(model)
    return loss + adversarial_terms(autoencoder.discriminator, x, reconstructed, rec,
                                    autoencoder.decoder.head.weight, disc_weight)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]): zero once every real patch scores ≥ 1 and every
    reconstructed one ≤ −1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: Tensor, generator_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """Esser et al.'s balance: disc_weight * |∇ rec| / |∇ adversarial| at the decoder's last layer, so
    the adversarial gradient is disc_weight times the size of the reconstruction gradient whatever
    the scale of either loss. A constant: no gradient flows through it."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    adv_grad, = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    return disc_weight * (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def adversarial_terms(discriminator: PatchDiscriminator, x: Tensor, reconstructed: Tensor, rec_loss: Tensor,
                      last_layer: Tensor, disc_weight: float) -> Tensor:
    """λ · (−E[D(x̂)]) + hinge loss of D, in one sum that one optimiser can follow.

    The two players must not train each other's weights: the decoder's term sees the discriminator
    through detached copies of its weights (gradients reach x̂ and the autoencoder only), and the
    discriminator's term sees detached reconstructions (gradients reach the discriminator only).
    """
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    generator_loss = -torch.func.functional_call(discriminator, frozen, (reconstructed,)).mean()
    weight = adaptive_weight(rec_loss, generator_loss, last_layer, disc_weight)
    discriminator_loss = hinge_discriminator_loss(discriminator(x), discriminator(reconstructed.detach()))
    return weight * generator_loss + discriminator_loss


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module itself, under torch.compile's or DDP's wrapper."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
