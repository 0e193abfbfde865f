"""The seed's ScoreNet: a small U-Net predicting the noise eps from (x_sigma, sigma).

Plain nn.Module, no config objects. With the seed's settings (base_ch=32, ch_mult=(1, 2),
num_res_blocks=2, time_dim=128) it has 901,121 parameters, as in the original code.
"""

import math
from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import NonNegativeInt, PositiveInt, UnitFloat, checked


def sinusoidal_embedding(c: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim]: [sin, cos] of c times dim/2 frequencies exp(-ln(1e4) i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=c.device) / max(half - 1, 1))
    angles = c.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + per-channel bias from the sigma embedding, GN-SiLU-dropout-conv, residual."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # [B, out, H, W]
        h = h + self.emb(self.act(emb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + self.skip(x)


class ScoreNet(nn.Module):
    """eps_hat = ScoreNet(x [B,C,H,W], c_noise [B]) where c_noise = ln(sigma)/4 by default.

    Down path pushes a skip after conv_in, every ResBlock and every downsample; the up path
    has num_res_blocks + 1 ResBlocks per level, each eating one skip (DDPM layout).
    """

    @checked
    def __init__(
        self,
        in_channels: PositiveInt = 1,
        base_ch: PositiveInt = 32,
        ch_mult: Annotated[Sequence[PositiveInt], Field(min_length=1)] = (1, 2),
        num_res_blocks: NonNegativeInt = 2,
        time_dim: PositiveInt = 128,
        dropout: UnitFloat = 0.05,
    ):
        super().__init__()
        if base_ch % 2 or any((base_ch * m) % min(8, base_ch * m) for m in ch_mult):
            raise ArgumentError(
                "base_ch", f"must be even and split into GroupNorm groups of 8 at every level (x {list(ch_mult)}), got {base_ch}"
            )
        self.base_ch = base_ch
        self.time_mlp = nn.Sequential(nn.Linear(base_ch, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(in_channels, base_ch, 3, padding=1)

        chans = [base_ch * m for m in ch_mult]
        skip_chans, cur = [base_ch], base_ch
        self.down = nn.ModuleList()
        for level, ch in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(cur, ch, time_dim, dropout))
                cur = ch
                skip_chans.append(cur)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_chans.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, time_dim, dropout) for _ in range(2)])
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(chans))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(cur + skip_chans.pop(), ch, time_dim, dropout))
                cur = ch
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)))
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), nn.Conv2d(cur, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(c_noise, self.base_ch).to(x.dtype))  # [B, time_dim]
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)  # [B, C, H, W]
