"""DDiT: the SEDD score network (Lou et al. 2024, reference `model/transformer.py`), a DiT over tokens.

logits [B, L, V] = DDiT(x [B, L] token ids, sigma_bar [B] total noise). Pre-norm transformer blocks
with adaLN-zero conditioning on sigma_bar, rotary positions, bidirectional (or causal) attention,
and an untied, zero-initialised output head (so the logits are exactly 0 at initialisation).

Precision: the model holds fp32 weights and never enters autocast itself. Under an outer
`torch.autocast(dtype=torch.bfloat16)` the linear layers and attention run in bf16 while the
conditioning MLP, the LayerNorms and the rotary rotation run in fp32, the residual stream stays fp32
(as in the reference), and the returned logits are fp32.

Attention goes through `flash_attn_func` when flash-attn is installed and q/k/v are CUDA bf16/fp16,
otherwise through `F.scaled_dot_product_attention`; both compute softmax(q k^T / sqrt(d)) v with no
attention dropout.

With `time_conditioned=False` (RADD, the autoregressive baseline) the sigma_bar input is ignored
and the condition is the learned constant c = SiLU(sigma_map(0)) (MDLM's choice: the same modules
and state-dict keys as the time-conditioned net, every weight trained).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import PositiveInt, UnitFloat, checked

try:  # optional extra: pip install -e .[flash]
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None
HAS_FLASH_ATTN = flash_attn_func is not None


def timestep_embedding(sigma_bar: torch.Tensor, dim: int = 256, max_period: float = 1e4) -> torch.Tensor:
    """[B] -> [B, dim] fp32: [cos, sin] of sigma_bar times frequencies max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma_bar.device) / half)
    args = sigma_bar.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def rotary_inv_freq(head_dim: int, device=None, base: float = 1e4) -> torch.Tensor:
    """[head_dim / 2] fp32 rotation frequencies base^(-2i / head_dim)."""
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rotary_cos_sin(seq_len: int, head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim] fp32 for positions 0..L-1; each frequency appears twice (rotate-half layout)."""
    inv_freq = rotary_inv_freq(head_dim, device)
    angles = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]  # [L, d/2]
    angles = torch.cat([angles, angles], dim=-1)  # [L, d]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, n_heads, d] rotated by position (rotate-half convention), computed in fp32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """q, k, v [B, L, n_heads, d] -> [B, L, n_heads, d] = softmax(q k^T / sqrt(d)) v (no dropout)."""
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return flash_attn_func(q, k, v, dropout_p=0.0, causal=causal)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return out.transpose(1, 2)  # [B, L, n_heads, d]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, H], shift/scale [B, 1, H]."""
    return x * (1 + scale) + shift


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in fp32 even under autocast; returned in x's dtype
    (fp32 for the fp32 residual stream of autocast training)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return (F.layer_norm(x.float(), self.weight.shape) * self.weight.float()).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, H // self.n_heads).unbind(dim=2)  # [B, L, nh, d] each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.proj(attention(q, k, v, self.causal).reshape(B, L, H))


class DDiTBlock(nn.Module):
    """x + gate * dropout(attn(modulate(LN(x)))), then the same with the MLP; adaLN-zero: gates start at 0."""

    def __init__(self, hidden: int, n_heads: int, cond_dim: int, mlp_ratio: int, dropout: float, causal: bool):
        super().__init__()
        self.norm1 = LayerNorm(hidden)
        self.attn = SelfAttention(hidden, n_heads, causal)
        self.norm2 = LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B, L, H] (fp32 residual stream), c [B, cond_dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)  # [B, 1, H] each
        x = x + gate1 * self.dropout(self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin))
        x = x + gate2 * self.dropout(self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x


class FinalLayer(nn.Module):
    """LN + adaLN (shift, scale) + untied Linear(H, V); the modulation and the head start at zero."""

    def __init__(self, hidden: int, vocab_size: int, cond_dim: int):
        super().__init__()
        self.norm = LayerNorm(hidden)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        self.linear = nn.Linear(hidden, vocab_size)
        for p in (*self.adaLN_modulation.parameters(), *self.linear.parameters()):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # [B, 1, H] each
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, L, V]


class DDiT(nn.Module):
    """logits [B, L, vocab_size] fp32 = DDiT(x [B, L] long, sigma_bar [B] or None).

    `sigma_bar` is the total noise (not t); it is required when `time_conditioned`, ignored otherwise.
    `causal=True` makes position i attend to positions <= i only (the autoregressive baseline).
    Sequences longer than `max_length` are refused (rotary itself has no limit).
    """

    @checked
    def __init__(
        self,
        vocab_size: PositiveInt,
        hidden: PositiveInt = 768,
        n_blocks: PositiveInt = 12,
        n_heads: PositiveInt = 12,
        cond_dim: PositiveInt = 128,
        mlp_ratio: PositiveInt = 4,
        dropout: UnitFloat = 0.1,
        max_length: PositiveInt = 1024,
        time_conditioned: bool = True,
        causal: bool = False,
    ):
        super().__init__()
        if hidden % n_heads or (hidden // n_heads) % 2:
            raise ArgumentError("n_heads", f"hidden = {hidden} must split into n_heads = {n_heads} heads of even size (rotary)")
        self.vocab_size, self.hidden, self.n_heads, self.max_length = vocab_size, hidden, n_heads, max_length
        self.time_conditioned, self.causal = bool(time_conditioned), bool(causal)
        self.freq_dim = 256

        self.tok_embed = nn.Parameter(torch.empty(vocab_size, hidden))
        nn.init.kaiming_uniform_(self.tok_embed, a=math.sqrt(5))
        self.sigma_map = nn.Sequential(nn.Linear(self.freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.blocks = nn.ModuleList(DDiTBlock(hidden, n_heads, cond_dim, mlp_ratio, dropout, causal) for _ in range(n_blocks))
        self.final = FinalLayer(hidden, vocab_size, cond_dim)

    def condition(self, sigma_bar: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """c [B, cond_dim] fp32 = SiLU(sigma_map(embedding(sigma_bar))); sigma_bar := 0 when not time-conditioned."""
        if not self.time_conditioned:
            sigma_bar = torch.zeros(batch, device=device)
        elif sigma_bar is None:
            raise ValueError("DDiT(time_conditioned=True) needs sigma_bar [B]")
        with torch.autocast(device_type=device.type, enabled=False):
            emb = timestep_embedding(sigma_bar.reshape(-1), self.freq_dim).to(self.sigma_map[0].weight.dtype)  # [B, 256]
            return F.silu(self.sigma_map(emb))

    def forward(self, x: torch.Tensor, sigma_bar: torch.Tensor | None = None) -> torch.Tensor:
        B, L = x.shape
        if L > self.max_length:
            raise ValueError(f"sequence length {L} > max_length {self.max_length}")
        c = self.condition(sigma_bar, B, x.device)  # [B, cond_dim]
        cos, sin = rotary_cos_sin(L, self.hidden // self.n_heads, x.device)  # [L, d] each
        h = self.tok_embed[x]  # [B, L, H]
        for block in self.blocks:
            h = block(h, c, cos, sin)
        return self.final(h, c).float()  # [B, L, V]

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; `non_embedding` leaves out the vocabulary-sized token embedding and output head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embed.numel() + sum(p.numel() for p in self.final.linear.parameters())
        return n
