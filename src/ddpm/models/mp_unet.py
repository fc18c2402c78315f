"""The magnitude-preserving UNet of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", config G), registered as the network `mp-unet`.

EDM2 found that a diffusion UNet's activations and weights drift in magnitude as it trains, and that
removing the drift is worth more than any other change at equal compute (their Table 1: FID 7.24 ->
2.56 on ImageNet-512, 8.00 -> 3.75 for the learned layers alone). Every layer here keeps the expected
magnitude of what passes through it:

- learned layers (`MPConv`): each output channel's weight has unit norm in the forward pass
  (eq. 47's normalize, then 1 / sqrt(fan_in)), and is forced back to it after every optimiser step
  (`normalize_weights`, Sec. 2.6), so the weights' norm, hence the effective learning rate, cannot grow;
- fixed functions: SiLU divided by its output's RMS on N(0, 1) inputs (`mp_silu`, 0.596), sums and
  concatenations weighted so that unit inputs give a unit output (`mp_sum`, `mp_cat`, eqs. 88, 103);
- no GroupNorm: the encoder's residual path is pixel-normalised (each pixel's features to unit RMS);
  attention is cosine attention (queries, keys and values pixel-normalised per head), through SDPA;
- the noise level enters as Fourier features of unit RMS and a magnitude-preserving linear layer,
  the class label as a one-hot vector of unit RMS, their blend by `mp_sum`; each block takes the
  embedding through a gain learned from zero (EDM2's `emb_gain`), as is the network's output
  (`out_gain`), so the untrained network outputs zero and every block starts as the identity.

EDM2 embeds c_noise = ln(sigma) / 4 with random Fourier features; here the network also takes the
VP objectives' timesteps (0 to T), so its features are the geometric spectrum of the sinusoidal
embedding (Vaswani et al.), scaled by sqrt(2) to unit RMS, which covers both ranges. The levels,
skips and blocks follow EDM2's: a down-sampling block opens each level after the first, `num_res`
blocks per level, two blocks with attention at the bottom, an up-sampling block and `num_res + 1`
blocks per level on the way up, each concatenating one skip.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

SILU_RMS = 0.596  # sqrt(E[silu(x)^2]) for x ~ N(0, 1): mp_silu's divisor (EDM2 eq. 81)


def normalize(x: Tensor, dim: Optional[Sequence[int]] = None, eps: float = 1e-4) -> Tensor:
    """x scaled to unit RMS over `dim` (default: all but the first; EDM2's normalize, eq. 47)."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    return F.silu(x) / SILU_RMS


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """(1 - t) a + t b over the norm of the blend weights: two unit, uncorrelated inputs give a unit output."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Channel concatenation weighting a by (1 - t) and b by t, scaled so that unit inputs give a unit
    output whatever their channel counts (EDM2 eq. 103)."""
    na, nb = a.shape[1], b.shape[1]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale / math.sqrt(na) * (1 - t)), b * (scale / math.sqrt(nb) * t)], dim=1)


def fourier_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Cosines and sines of t at dim/2 geometric frequencies, times sqrt(2): unit RMS for any t."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * k / half)[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1) * math.sqrt(2)


class MPConv(nn.Module):
    """A convolution (or, with kernel 0, a linear layer) whose every output channel's weight has unit
    norm: normalised in the forward pass, and forced back after each step by `normalize_weights`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        shape = (out_channels, in_channels, kernel, kernel) if kernel else (out_channels, in_channels)
        self.weight = nn.Parameter(normalize(torch.randn(shape)))

    def forward(self, x: Tensor, gain: "float | Tensor" = 1.0) -> Tensor:
        w = normalize(self.weight.float()) * (gain / math.sqrt(self.weight[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)

    @torch.no_grad()
    def normalize_weights(self) -> None:
        self.weight.copy_(normalize(self.weight.float()).to(self.weight.dtype))


class MPBlock(nn.Module):
    """EDM2's block: an encoder block pixel-normalises its input and keeps the residual path clean; a
    decoder block takes the concatenated skip. Residual and attention branches join by `mp_sum` at
    0.3, as in config G, and activations are clipped to +-256 (EDM2's guard for fp16)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str, resample: str = "keep",
                 attention: bool = False, dropout: float = 0.0, head_dim: Optional[int] = 64):
        super().__init__()
        self.flavor, self.resample, self.dropout = flavor, resample, dropout
        self.heads = max(1, out_channels // head_dim) if attention and head_dim else 1 if attention else 0
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, 3)
        self.emb_linear = MPConv(emb_channels, out_channels, 0)
        self.conv_res1 = MPConv(out_channels, out_channels, 3)
        self.conv_skip = MPConv(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, 1) if attention else None
        self.attn_proj = MPConv(out_channels, out_channels, 1) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=[1])  # pixel norm, where a GroupNorm was
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, 0.3)
        if self.heads:
            b, ch, h, w = x.shape
            qkv = self.attn_qkv(x).reshape(b, self.heads, ch // self.heads, 3, h * w)
            q, k, v = normalize(qkv, dim=[2]).permute(3, 0, 1, 4, 2).unbind(0)  # cosine attention
            y = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c]
            y = self.attn_proj(y.permute(0, 1, 3, 2).reshape(b, ch, h, w))
            x = mp_sum(x, y, 0.3)
        return x.clip(-256, 256)


class MPUNet(nn.Module):
    """EDM2's magnitude-preserving UNet (config G) with this package's UNet arguments: `channels` and
    `attention` per level, `num_res` blocks per level, `dropout`, `num_classes` (label K is the null
    class, as guidance.py takes it). forward(x, noise label, class labels) as every network here."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 64),
                 attention: Sequence[bool] = (False, False, True), num_res: int = 2, dropout: float = 0.0,
                 num_classes: int = 0, emb_dim: Optional[int] = None, head_dim: Optional[int] = 64,
                 augment_dim: int = 0):
        super().__init__()
        channels, levels = list(channels), len(channels)
        emb = emb_dim or max(channels)
        self.num_classes, self.noise_dim, self.levels = num_classes, channels[0], levels
        self.emb_noise = MPConv(self.noise_dim, emb, 0)
        self.emb_label = MPConv(num_classes + 1, emb, 0) if num_classes else None
        self.emb_augment = MPConv(augment_dim, emb, 0) if augment_dim else None  # zero label: nothing added
        self.out_gain = nn.Parameter(torch.zeros([]))
        block = dict(emb_channels=emb, dropout=dropout, head_dim=head_dim)
        self.conv_in = MPConv(in_channels + 1, channels[0], 3)  # and a channel of ones, as EDM2
        self.enc = nn.ModuleList()
        skips = [channels[0]]
        width = channels[0]
        for level, (out, attend) in enumerate(zip(channels, attention)):
            if level:
                self.enc.append(MPBlock(width, width, flavor="enc", resample="down", **block))
                skips.append(width)
            for _ in range(num_res):
                self.enc.append(MPBlock(width, out, flavor="enc", attention=attend, **block))
                width = out
                skips.append(width)
        self.dec = nn.ModuleList()
        self.takes_skip: list[bool] = []
        for level in reversed(range(levels)):
            out, attend = channels[level], attention[level]
            if level == levels - 1:
                self.dec += [MPBlock(width, width, flavor="dec", attention=True, **block),
                             MPBlock(width, width, flavor="dec", **block)]
                self.takes_skip += [False, False]
            else:
                self.dec.append(MPBlock(width, width, flavor="dec", resample="up", **block))
                self.takes_skip.append(False)
            for _ in range(num_res + 1):
                self.dec.append(MPBlock(width + skips.pop(), out, flavor="dec", attention=attend, **block))
                self.takes_skip.append(True)
                width = out
        self.conv_out = MPConv(width, in_channels, 3)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, augment: Optional[Tensor] = None) -> Tensor:
        x, skips, emb = self._encode(x, t, y, augment)
        for block, takes in zip(self.dec, self.takes_skip):
            if takes:
                x = mp_cat(x, skips.pop(), 0.5)
            x = block(x, emb)
        return self.conv_out(x, gain=self.out_gain)

    def encoder_features(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> list[Tensor]:
        """The encoder's last output at each resolution: what an adversarial student's discriminator
        reads of a frozen teacher (training/adversarial.py). The decoder is not run."""
        skips = self._encode(x, t, y, None)[1]
        return [h for h, after in zip(skips, [*skips[1:], None]) if after is None or after.shape[-1] != h.shape[-1]]

    def _encode(self, x: Tensor, t: Tensor, y: Optional[Tensor], augment: Optional[Tensor]):
        """The embedding, then the encoder: its output, every block's output (the skips) and the embedding."""
        emb = self.emb_noise(fourier_features(t, self.noise_dim).to(x.dtype))
        if self.emb_label is not None:
            labels = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device) if y is None else y
            one_hot = F.one_hot(labels, self.num_classes + 1).to(x.dtype) * math.sqrt(self.num_classes + 1)
            emb = mp_sum(emb, self.emb_label(one_hot), 0.5)
        elif y is not None:
            raise InputError("this network was built without classes (num_classes=0); it takes no labels")
        if self.emb_augment is not None and augment is not None:
            emb = emb + self.emb_augment(augment.to(emb.dtype))
        emb = mp_silu(emb)
        x = self.conv_in(torch.cat([x, torch.ones_like(x[:, :1])], dim=1))
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        return x, skips, emb

    def normalize_weights(self) -> None:
        """EDM2's forced weight normalisation: every MPConv's rows back to unit RMS, after each step."""
        for module in self.modules():
            if isinstance(module, MPConv):
                module.normalize_weights()


# The UNet's options that this network has no counterpart for: each must keep its default here.
UNET_ONLY = ("norm", "activation", "upsample", "skips", "neck_attention", "patch_size", "time_freq_shift",
             "time_cos_first", "downsample_padding", "norm_groups", "norm_eps", "neck_length")


def mp_unet_from_config(config) -> MPUNet:
    """The network a run's config describes with model.network mp-unet: the model section's channels,
    attention, num_res, dropout, num_classes, time_emb_dim (the embedding's width; default the widest
    level) and attention_head_dim; the UNet's other options are refused unless at their defaults."""
    m = config.model
    default = type(m)()
    for key in UNET_ONLY:
        if getattr(m, key) != getattr(default, key):
            raise InputError(f"model.{key} is an option of the unet network; the mp-unet has no counterpart (it "
                             f"has no norm layers and EDM2's own layout): leave it at {getattr(default, key)!r}, or "
                             f"--set model.network=unet")
    return MPUNet(config.model_input()[0], m.channels, m.attention, m.num_res, m.dropout, m.num_classes,
                  m.time_emb_dim, m.attention_head_dim, config.data.augment_dim)
