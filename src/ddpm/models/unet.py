"""The UNet that predicts eps (or x0, or v) from a noisy image x_t and its timestep t.

    x ─ conv3x3 ─ Down_0 ─ Down_1 ─ … ─ Down_{L-1} ─ neck ─ Up_{L-1} ─ … ─ Up_0 ─ norm/act/conv3x3 ─ out
                    │skip    │skip          │skip            ↑            ↑
                    └────────┴──────────────┴────────────────┘ concatenated at the same level

Each Down level runs `num_res` residual blocks, each followed by self-attention where asked, then
halves the resolution with a strided 3x3 convolution, except at the lowest level. The timestep
enters every residual block through a sinusoidal embedding (Vaswani et al. 2017, as in Ho et al.
2020 §4) and an MLP. Skips come in two layouts:

- `skips="level"` (the default, small and fast): one skip per level, the output of its blocks.
  Each Up level upsamples, concatenates that skip and runs `num_res` blocks.
- `skips="block"` (Ho et al.'s CIFAR-10 model): a skip after the stem, after every residual block
  and after every downsampling. Each Up level runs `num_res + 1` blocks, each concatenating one
  skip, then upsamples.

With `patch_size` p > 1 the UNet works on p x p patches (Peebles & Xie 2023, DiT): each p x p
block of pixels is folded into p^2 channels (pixel unshuffle) before the stem, and the head's
p^2 channels per position are unfolded back into pixels (pixel shuffle). Every level then runs
at 1/p of the resolution, for about 1/p^2 of the convolution cost at the same widths.

The seeds' variants choose GroupNorm or BatchNorm, SiLU or ReLU, and nearest or bilinear
upsampling followed by a 3x3 convolution, or a transposed convolution. Ho et al.'s converted
models (diffusers' UNet2DModel, storage/diffusers.py) also need: the time embedding's frequency
shift and order, the downsampling convolution's padding, one GroupNorm size and epsilon for every
norm, and one attention head dimension.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check_unet_size
from ..errors import InputError
from ..config.names import ACTIVATIONS as ACTIVATION_NAMES
from ..config.names import DOWNSAMPLE_PADDINGS, NORMS, SKIPS, UPSAMPLES, check_registry

ACTIVATIONS = {"silu": F.silu, "relu": F.relu}
check_registry("activations", ACTIVATIONS, ACTIVATION_NAMES)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, shift: int = 0,
                         cos_first: bool = False) -> Tensor:
    """Transformer position encoding of the timesteps (or noise labels) t: [B] -> [B, dim], sines then
    cosines (or cosines first) of t at the frequencies max_period^(-k / (dim/2 - shift)), k < dim/2.
    Ho et al.'s code divides by dim/2 - 1 (shift 1), Vaswani et al. by dim/2 (shift 0)."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * k / (half - shift))[None, :]
    waves = [angles.cos(), angles.sin()] if cos_first else [angles.sin(), angles.cos()]
    return torch.cat(waves, dim=1)


def group_norm(channels: int, groups: Optional[int] = None, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018): `groups` groups, or by default up to 32 groups of at least 4 channels each.

    At least 4, because the time embedding is added as a per-channel shift just before a norm:
    a group of one channel would subtract that shift right away and leave the block blind to t.
    """
    if groups is not None and channels % groups:
        raise InputError(f"GroupNorm of {groups} groups needs channels divisible by it (got {channels})")
    return nn.GroupNorm(groups or math.gcd(32, max(channels // 4, 1)), channels, eps=eps)


def make_norm(kind: str, channels: int, groups: Optional[int] = None, eps: float = 1e-5) -> nn.Module:
    """GroupNorm, or BatchNorm (the fourth seed's choice; its statistics are shared across the batch)."""
    return group_norm(channels, groups, eps) if kind == "group" else nn.BatchNorm2d(channels, eps=eps)


class Downsample(nn.Conv2d):
    """Halve the resolution with a strided 3x3 convolution, zero-padded by one on every side ("both"),
    or by one row and column after the image only ("after": TensorFlow's SAME padding at stride 2,
    which Ho et al.'s models were trained with)."""

    def __init__(self, channels: int, padding: str = "both"):
        super().__init__(channels, channels, 3, stride=2, padding=1 if padding == "both" else 0)
        self.pad_after = padding == "after"

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)) if self.pad_after else x)


def make_upsample(kind: str, channels: int) -> nn.Module:
    """Double the resolution: nearest or bilinear interpolation then a 3x3 conv, or a transposed conv."""
    if kind == "transposed":
        return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=kind), nn.Conv2d(channels, channels, 3, padding=1))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a norm and an activation; the time embedding is added between them
    (time_channels 0: none, the autoencoder's block)."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, dropout: float = 0.0,
                 norm: str = "group", activation: str = "silu", groups: Optional[int] = None, eps: float = 1e-5):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.norm1 = make_norm(norm, in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_channels, out_channels) if time_channels else None
        self.norm2 = make_norm(norm, out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: a stable deep net at step 0
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, time: Optional[Tensor] = None) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.time is not None:
            h = h + self.time(time)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection:
    channels // head_dim heads (at least one), or one head for head_dim None."""

    def __init__(self, channels: int, head_dim: Optional[int] = 64, norm: str = "group", groups: Optional[int] = None,
                 eps: float = 1e-5):
        super().__init__()
        self.heads = max(1, channels // head_dim) if head_dim else 1
        if channels % self.heads:
            raise InputError(f"attention needs channels divisible by its {self.heads} heads (got {channels})")
        self.norm = make_norm(norm, channels, groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, head_dim]
        attended = F.scaled_dot_product_attention(q, k, v)  # flash / memory-efficient kernels where available
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class _Options:
    """What every block of one UNet shares: time width, dropout, norm (kind, groups, epsilon), activation,
    upsampling and downsampling, attention's head size."""

    def __init__(self, time_channels: int, dropout: float, norm: str, activation: str, upsample: str,
                 norm_groups: Optional[int] = None, norm_eps: float = 1e-5, attention_head_dim: Optional[int] = 64,
                 downsample_padding: str = "both"):
        self.time_channels, self.dropout = time_channels, dropout
        self.norm, self.activation, self.upsample = norm, activation, upsample
        self.groups, self.eps, self.head_dim, self.downsample_padding = norm_groups, norm_eps, attention_head_dim, \
            downsample_padding

    def res(self, in_channels: int, out_channels: int) -> ResidualBlock:
        return ResidualBlock(in_channels, out_channels, self.time_channels, self.dropout, self.norm, self.activation,
                             self.groups, self.eps)

    def attention(self, channels: int, wanted: bool) -> nn.Module:
        return SelfAttention(channels, self.head_dim, self.norm, self.groups, self.eps) if wanted else nn.Identity()

    def norm_layer(self, channels: int) -> nn.Module:
        return make_norm(self.norm, channels, self.groups, self.eps)


class DownBlock(nn.Module):
    """One resolution level on the way down: residual blocks (each with optional attention), then
    downsampling. Returns the downsampled map and the skips it leaves for the way up."""

    def __init__(self, in_channels: int, out_channels: int, num_res: int, attention: bool, downsample: bool,
                 per_block: bool, o: _Options):
        super().__init__()
        self.per_block = per_block
        self.res = nn.ModuleList(o.res(in_channels if i == 0 else out_channels, out_channels) for i in range(num_res))
        self.attention = nn.ModuleList(o.attention(out_channels, attention) for _ in range(num_res))
        self.downsample = Downsample(out_channels, o.downsample_padding) if downsample else None

    def skip_count(self) -> int:
        return len(self.res) + (self.downsample is not None) if self.per_block else 1

    def forward(self, x: Tensor, time: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for block, attention in zip(self.res, self.attention):
            x = attention(block(x, time))
            skips.append(x)
        if not self.per_block:
            skips = skips[-1:]
        if self.downsample is not None:
            x = self.downsample(x)
            if self.per_block:
                skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """One resolution level on the way up. Level skips: upsample, concatenate the level's skip, run
    the blocks. Block skips: each block concatenates one skip, then upsample."""

    def __init__(self, in_channels: int, skip_channels: list[int], out_channels: int, num_res: int, attention: bool,
                 upsample: bool, per_block: bool, o: _Options):
        super().__init__()
        self.per_block = per_block
        count = num_res + 1 if per_block else num_res
        widths = [in_channels] + [out_channels] * (count - 1)
        if per_block:
            ins = [w + s for w, s in zip(widths, skip_channels)]
        else:
            ins = [in_channels + skip_channels[0]] + widths[1:]
        self.upsample = make_upsample(o.upsample, out_channels if per_block else in_channels) if upsample else None
        self.res = nn.ModuleList(o.res(c, out_channels) for c in ins)
        self.attention = nn.ModuleList(o.attention(out_channels, attention) for _ in ins)

    def forward(self, x: Tensor, skips: list[Tensor], time: Tensor) -> Tensor:
        if not self.per_block:
            if self.upsample is not None:
                x = self.upsample(x)
            x = torch.cat([x, skips.pop()], dim=1)
        for block, attention in zip(self.res, self.attention):
            if self.per_block:
                x = torch.cat([x, skips.pop()], dim=1)
            x = attention(block(x, time))
        if self.per_block and self.upsample is not None:
            x = self.upsample(x)
        return x


class UNet(nn.Module):
    """UNet(in_channels, channels=[...], attention=[...], num_res, neck_length, time_emb_dim, dropout).

    `channels[i]` is the width of level i (full resolution first) and `attention[i]` whether level
    i uses self-attention. An image side must be divisible by patch_size * 2^(levels - 1). The neck runs
    `neck_length` residual blocks at the lowest resolution, with attention after the first if
    `neck_attention` (Ho et al.'s middle: block, attention, block).

    With `num_classes` K > 0 the network is class-conditional: a learned embedding of the label
    y in {0, ..., K-1} is added to the time embedding. Label K is the null class, the
    unconditional model of classifier-free guidance (see guidance.py); y=None means null.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        attention: Sequence[bool] = (False, False, True),
        num_res: int = 1,
        neck_length: int = 1,
        time_emb_dim: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        norm: str = "group",
        activation: str = "silu",
        upsample: str = "nearest",
        skips: str = "level",
        neck_attention: bool = False,
        patch_size: int = 1,
        time_freq_shift: int = 0,
        time_cos_first: bool = False,
        downsample_padding: str = "both",
        norm_groups: Optional[int] = None,
        norm_eps: float = 1e-5,
        attention_head_dim: Optional[int] = 64,
        augment_dim: int = 0,
    ):
        super().__init__()
        if patch_size < 1:
            raise InputError(f"patch_size must be >= 1 (got {patch_size})")
        if len(attention) != len(channels):
            raise InputError(f"attention has {len(attention)} entries but channels has {len(channels)}; give one per level")
        for name, value, choices in [("norm", norm, NORMS), ("activation", activation, tuple(ACTIVATIONS)),
                                     ("upsample", upsample, UPSAMPLES), ("skips", skips, SKIPS),
                                     ("downsample_padding", downsample_padding, DOWNSAMPLE_PADDINGS)]:
            if value not in choices:
                raise InputError(f"unknown UNet {name} {value!r}; choose one of {', '.join(choices)}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.levels = len(channels)
        self.time_emb_dim, self.time_freq_shift, self.time_cos_first = time_emb_dim, time_freq_shift, time_cos_first
        self.act = ACTIVATIONS[activation]
        time_channels = 4 * time_emb_dim  # Ho et al. widen the embedding 4x in its MLP
        self.time_mlp = nn.Sequential(
            nn.Linear(time_emb_dim, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels), nn.SiLU()
        )
        self.num_classes = num_classes
        self.class_embedding = nn.Embedding(num_classes + 1, time_channels) if num_classes else None
        # non-leaking augmentation's label (data/augment.py), added to the embedding: zero adds nothing
        self.augment_embedding = nn.Linear(augment_dim, time_channels, bias=False) if augment_dim else None
        o = _Options(time_channels, dropout, norm, activation, upsample, norm_groups, norm_eps, attention_head_dim,
                     downsample_padding)
        per_block = skips == "block"
        self.stem = nn.Conv2d(in_channels * patch_size**2, channels[0], 3, padding=1)

        last = len(channels) - 1
        skip_widths = [channels[0]] if per_block else []  # block skips start with the stem's output
        self.down = nn.ModuleList()
        width = channels[0]
        for i, out in enumerate(channels):
            block = DownBlock(width, out, num_res, attention[i], i < last, per_block, o)
            self.down.append(block)
            skip_widths += [out] * block.skip_count()
            width = out
        self.neck = nn.ModuleList(o.res(width, width) for _ in range(neck_length))
        self.neck_attention = o.attention(width, neck_attention and neck_length > 0)
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            count = num_res + 1 if per_block else 1
            taken, skip_widths = skip_widths[-count:][::-1], skip_widths[:-count]
            self.up.append(UpBlock(width, taken, channels[i], num_res, attention[i], i > 0 if per_block else i < last,
                                   per_block, o))
            width = channels[i]
        self.head_norm = o.norm_layer(width)
        self.head = nn.Conv2d(width, in_channels * patch_size**2, 3, padding=1)

    def check_size(self, height: int, width: int) -> None:
        for side in (height, width):
            check_unet_size(side, self.levels, self.patch_size)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, augment: Optional[Tensor] = None) -> Tensor:
        h, skips, time, _ = self._encode(x, t, y, augment)
        for block in self.up:
            h = block(h, skips, time)
        out = self.head(self.act(self.head_norm(h)))
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out

    def encoder_features(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> list[Tensor]:
        """The down path's output at each level, then the neck's: what an adversarial student's
        discriminator reads of a frozen teacher (training/adversarial.py). The up path is not run."""
        return self._encode(x, t, y, None)[3]

    def _encode(self, x: Tensor, t: Tensor, y: Optional[Tensor], augment: Optional[Tensor]):
        """The time (and class, augmentation) embedding, then the down path and the neck: the neck's
        output, the skips, the embedding and each level's output."""
        self.check_size(x.shape[-2], x.shape[-1])
        waves = sinusoidal_embedding(t, self.time_emb_dim, shift=self.time_freq_shift, cos_first=self.time_cos_first)
        time = self.time_mlp(waves.to(self.time_mlp[0].weight.dtype))  # a float64 network (the tests) too
        if self.class_embedding is not None:
            null = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)  # t may be a float label
            time = time + self.class_embedding(null if y is None else y)
        elif y is not None:
            raise InputError("this UNet was built without classes (num_classes=0); it takes no labels")
        if self.augment_embedding is not None and augment is not None:
            time = time + self.augment_embedding(augment.to(time.dtype))
        h = self.stem(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        skips = [h] if self.down[0].per_block else []
        levels = []
        for block in self.down:
            h, level_skips = block(h, time)
            skips += level_skips
            levels.append(h)
        for i, block in enumerate(self.neck):
            h = block(h, time)
            if i == 0:
                h = self.neck_attention(h)
        return h, skips, time, [*levels, h]


def unet_from_config(config) -> UNet:
    """The UNet a run's config describes (its model section's keys are UNet's arguments), for the
    channels it denoises: its images', or a latent run's latents' (config.model_input)."""
    kwargs = dataclasses.asdict(config.model)
    kwargs.pop("network")
    return UNet(config.model_input()[0], **kwargs, augment_dim=config.data.augment_dim)
