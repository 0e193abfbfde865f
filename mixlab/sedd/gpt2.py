"""GPT-2 in plain PyTorch, the judge of generative perplexity when its weights are present
(`make sample-text judge_gpt2=auto|PATH`, e.g. gpt2-large as the reference SEDD code uses).

The architecture of Radford et al. (2019): token + learned position embeddings, pre-LN blocks
(causal self-attention with a fused qkv projection, a GELU (tanh) MLP), a final LayerNorm and
an LM head tied to the token embedding. `load_gpt2` reads a Hugging Face GPT-2 folder
(config.json + pytorch_model.bin) without the transformers package; its Conv1D weights are stored
[in, out] and are transposed into nn.Linear's [out, in]. Sequences longer than the model's
context (n_positions, 1024) are refused, not scored in windows: a window would condition on less
than the sample's full prefix."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixlab.core.config import require
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.validate import PositiveFloat, PositiveInt, checked

KEY = "judge_gpt2"
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers (lm_head.weight is the tied wte)


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(D, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_inner: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, n_inner)
        self.c_proj = nn.Linear(n_inner, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_inner: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = Attention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd, n_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """Args: the config.json fields; n_inner None is 4 * n_embd. Parameter names are the Hugging
    Face ones without the `transformer.` prefix."""

    @checked
    def __init__(
        self,
        vocab_size: PositiveInt = 50257,
        n_positions: PositiveInt = 1024,
        n_embd: PositiveInt = 768,
        n_layer: PositiveInt = 12,
        n_head: PositiveInt = 12,
        n_inner: PositiveInt | None = None,
        layer_norm_epsilon: PositiveFloat = 1e-5,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ArgumentError("n_head", f"n_embd = {n_embd} is not a multiple of n_head = {n_head}")
        self.vocab_size, self.n_positions = int(vocab_size), int(n_positions)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, n_inner or 4 * n_embd, layer_norm_epsilon) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits, [B, L, vocab]."""
        L = tokens.shape[1]
        require(
            L <= self.n_positions,
            KEY,
            f"{L} tokens exceed GPT-2's context of {self.n_positions}: sample with length<={self.n_positions}",
        )
        x = self.wte(tokens) + self.wpe(torch.arange(L, device=tokens.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)

    @torch.no_grad()
    def nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean nats per token of tokens 2..L of each sequence, [B] (fp32), as AutoRegressive.nll."""
        require(tokens.shape[1] >= 2, KEY, f"a sequence of {tokens.shape[1]} token(s) has no token 2..L to score")
        logits = self(tokens).float()
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


def hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face GPT-2 state dict in GPT2's names and layouts: `transformer.` stripped, the
    mask buffers and the tied head dropped, Conv1D weights transposed."""
    out = {}
    for name, tensor in state.items():
        name = name.removeprefix("transformer.")
        if name.endswith(IGNORED) or name == "lm_head.weight":
            continue
        out[name] = tensor.t() if name.endswith(CONV1D) else tensor
    return out


def load_gpt2(folder: str | Path, device: torch.device | str = "cpu") -> GPT2:
    """GPT2 from a Hugging Face folder (config.json + pytorch_model.bin), in eval mode, fp32."""
    folder = Path(folder)
    require(folder.is_dir(), KEY, f"{folder} is not a folder (give a Hugging Face GPT-2 folder, e.g. data/weights/gpt2-large)")
    require((folder / "config.json").is_file(), KEY, f"{folder} has no config.json")
    weights = folder / "pytorch_model.bin"
    if not weights.is_file():
        hint = (
            " (safetensors is not installed: download pytorch_model.bin too)" if (folder / "model.safetensors").is_file() else ""
        )
        raise ConfigError(KEY, f"{folder} has no pytorch_model.bin; the judge needs pytorch_model.bin{hint}")
    config = json.loads((folder / "config.json").read_text())
    activation = config.get("activation_function", "gelu_new")
    require(activation == "gelu_new", KEY, f"activation_function '{activation}' is not GPT-2's gelu_new")
    fields = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon")
    try:
        model = GPT2(**{k: config[k] for k in fields if config.get(k) is not None})
    except ArgumentError as err:
        raise ConfigError(KEY, f"{folder}/config.json: {err}") from None
    state = hf_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    require(
        not missing and not unexpected,
        KEY,
        f"{weights} does not match config.json: missing {missing[:4]}"
        f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}",
    )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    require(not wrong, KEY, f"{weights}: shapes differ from config.json for {wrong[:4]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def judge_folder(option, weights_dir: str | Path) -> Path | None:
    """`judge_gpt2`: auto = <weights_dir>/gpt2-large when it exists (else no GPT-2 judge), null = none,
    a path = that folder."""
    if option is None or str(option).lower() in ("null", "none", "false", ""):
        return None
    if str(option) == "auto":
        folder = Path(weights_dir) / "gpt2-large"
        return folder if folder.is_dir() else None
    return Path(option)
