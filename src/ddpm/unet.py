"""The UNet that predicts eps (or x0, or v) from a noisy image x_t and its timestep t.

    x ─ conv3x3 ─ Down_0 ─ Down_1 ─ … ─ Down_{L-1} ─ neck ─ Up_{L-1} ─ … ─ Up_0 ─ norm/SiLU/conv3x3 ─ out
                    │skip    │skip          │skip            ↑            ↑
                    └────────┴──────────────┴────────────────┘ concatenated at the same level

Each Down level runs `num_res` residual blocks (and self-attention where asked), then halves the
resolution with a strided 3x3 convolution, except at the lowest level. Each Up level doubles the
resolution (except at the lowest level), concatenates the skip of its level and runs `num_res`
residual blocks (and attention). The timestep enters every residual block through a sinusoidal
embedding (Vaswani et al. 2017, as in Ho et al. 2020 §4) and an MLP.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer position encoding of the (integer) timesteps t: [B] -> [B, dim]."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with up to 32 groups of at least 4 channels each.

    At least 4, because the time embedding is added as a per-channel shift just before a norm:
    a group of one channel would subtract that shift right away and leave the block blind to t.
    """
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU; the time embedding is added between them."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: a stable deep net at step 0
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(time)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise InputError(f"attention needs channels divisible by its {self.heads} heads (got {channels})")
        self.norm = group_norm(channels)
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


class DownBlock(nn.Module):
    """One resolution level on the way down: residual blocks, optional attention, then downsampling."""

    def __init__(self, in_channels, out_channels, time_channels, num_res, attention, downsample, dropout):
        super().__init__()
        self.res = nn.ModuleList(
            ResidualBlock(in_channels if i == 0 else out_channels, out_channels, time_channels, dropout)
            for i in range(num_res)
        )
        self.attention = SelfAttention(out_channels) if attention else nn.Identity()
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else nn.Identity()

    def forward(self, x: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.res:
            x = block(x, time)
        skip = self.attention(x)
        return self.downsample(skip), skip


class UpBlock(nn.Module):
    """One resolution level on the way up: upsampling, the skip concatenated, residual blocks, attention."""

    def __init__(self, in_channels, skip_channels, out_channels, time_channels, num_res, attention, upsample, dropout):
        super().__init__()
        self.upsample = (
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, in_channels, 3, padding=1))
            if upsample
            else nn.Identity()
        )
        self.res = nn.ModuleList(
            ResidualBlock(in_channels + skip_channels if i == 0 else out_channels, out_channels, time_channels, dropout)
            for i in range(num_res)
        )
        self.attention = SelfAttention(out_channels) if attention else nn.Identity()

    def forward(self, x: Tensor, skip: Tensor, time: Tensor) -> Tensor:
        x = torch.cat([self.upsample(x), skip], dim=1)
        for block in self.res:
            x = block(x, time)
        return self.attention(x)


class UNet(nn.Module):
    """UNet(in_channels, channels=[...], attention=[...], num_res, neck_length, time_emb_dim, dropout).

    `channels[i]` is the width of level i (full resolution first) and `attention[i]` whether level
    i uses self-attention. An image side must be divisible by 2^(levels - 1).

    With `num_classes` K > 0 the network is class-conditional: a learned embedding of the label
    y in {0, ..., K-1} is added to the time embedding. Label K is the null class, the
    unconditional model of classifier-free guidance (see guidance.py); y=None means null.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        attention: Sequence[bool] = (False, False, True),
        num_res: int = 1,
        neck_length: int = 1,
        time_emb_dim: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        if len(attention) != len(channels):
            raise InputError(f"attention has {len(attention)} entries but channels has {len(channels)}; give one per level")
        self.in_channels = in_channels
        self.levels = len(channels)
        self.time_emb_dim = time_emb_dim
        time_channels = 4 * time_emb_dim  # Ho et al. widen the embedding 4x in its MLP
        self.time_mlp = nn.Sequential(
            nn.Linear(time_emb_dim, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels), nn.SiLU()
        )
        self.num_classes = num_classes
        self.class_embedding = nn.Embedding(num_classes + 1, time_channels) if num_classes else None
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        last = len(channels) - 1
        self.down = nn.ModuleList()
        width = channels[0]
        for i, out in enumerate(channels):
            self.down.append(DownBlock(width, out, time_channels, num_res, attention[i], i < last, dropout))
            width = out
        self.neck = nn.ModuleList(ResidualBlock(width, width, time_channels, dropout) for _ in range(neck_length))
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            self.up.append(UpBlock(width, channels[i], channels[i], time_channels, num_res, attention[i], i < last, dropout))
            width = channels[i]
        self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, in_channels, 3, padding=1))

    def check_size(self, height: int, width: int) -> None:
        factor = 2 ** (self.levels - 1)
        if height % factor or width % factor:
            raise InputError(
                f"image size {height}x{width} is not divisible by {factor}, which a UNet with "
                f"{self.levels} levels needs; resize the images or use fewer levels"
            )

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        self.check_size(x.shape[-2], x.shape[-1])
        time = self.time_mlp(sinusoidal_embedding(t, self.time_emb_dim))
        if self.class_embedding is not None:
            time = time + self.class_embedding(torch.full_like(t, self.num_classes) if y is None else y)
        elif y is not None:
            raise InputError("this UNet was built without classes (num_classes=0); it takes no labels")
        h = self.stem(x)
        skips = []
        for block in self.down:
            h, skip = block(h, time)
            skips.append(skip)
        for block in self.neck:
            h = block(h, time)
        for block in self.up:
            h = block(h, skips.pop(), time)
        return self.head(h)
