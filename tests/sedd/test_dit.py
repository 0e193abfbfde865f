"""DDiT (SEDD's score network): attention against a naive softmax, causality, adaLN-zero init,
sigma conditioning, bf16 autocast dtypes, sizes of the configs, and the reference-weights key map
checked against a forward pass written from the reference code."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from support import ROOT

from mixlab.nets.dit import DDiT, apply_rotary, attention, rotary_cos_sin
from mixlab.nets.dit_weights import load_reference_state_dict

V, H, N_BLOCKS, N_HEADS, COND = 37, 32, 2, 4, 16


def tiny(**kw) -> DDiT:
    torch.manual_seed(0)
    return DDiT(V, hidden=H, n_blocks=N_BLOCKS, n_heads=N_HEADS, cond_dim=COND, dropout=0.0, **kw)


def perturb_zero_init(model: DDiT, std: float = 0.3) -> DDiT:
    """Random adaLN modulations and head (zero at init), so every path reaches the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("final.linear"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def naive_attention(q, k, v, causal):
    """q, k, v [B, L, nh, d]: softmax(q k^T / sqrt d) v, written out."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, nh, L, d]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        L = q.shape[-2]
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_naive_softmax(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 11, 4, 8).unbind(0)
    out = attention(q, k, v, causal=causal)
    assert out.shape == (2, 11, 4, 8)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal), atol=1e-5, rtol=0)
    assert not torch.allclose(out, naive_attention(q, k, v, not causal), atol=1e-3)


def test_rotary_is_relative_and_fp32():
    """<rot(q, i), rot(k, j)> depends on i - j only; bf16 inputs are rotated in fp32 then rounded."""
    torch.manual_seed(0)
    d, L = 16, 12
    q, k = torch.randn(d), torch.randn(d)
    cos, sin = rotary_cos_sin(L, d)
    rq = apply_rotary(q.expand(1, L, 1, d), cos, sin)[0, :, 0]  # [L, d]: q at every position
    rk = apply_rotary(k.expand(1, L, 1, d), cos, sin)[0, :, 0]
    dots = rq @ rk.T  # [L, L]
    for offset in (0, 3, -5):
        diag = torch.diagonal(dots, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-4, rtol=0)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(L))
    xb = torch.randn(2, L, 3, d).bfloat16()
    out = apply_rotary(xb, cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, apply_rotary(xb.float(), cos, sin).bfloat16())


def test_causal_output_ignores_later_tokens():
    model = perturb_zero_init(tiny(causal=True)).eval()
    bidir = perturb_zero_init(tiny(causal=False)).eval()
    x = torch.randint(0, V, (2, 10))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % V  # change tokens 6..9
    s = torch.full((2,), 0.7)
    a, b = model(x, s), model(x2, s)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().amax() > 1e-3
    assert (bidir(x, s)[:, :6] - bidir(x2, s)[:, :6]).abs().amax() > 1e-3  # bidirectional sees them


@pytest.mark.parametrize("time_conditioned", [True, False])
def test_zero_init_logits_are_exactly_zero(time_conditioned):
    model = tiny(time_conditioned=time_conditioned, causal=not time_conditioned)
    model.train()
    x = torch.randint(0, V, (3, 9))
    out = model(x, torch.tensor([1e-4, 1.0, 20.0]))
    assert out.shape == (3, 9, V) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()  # zero init does not block learning: the head gets a gradient
    assert model.final.linear.bias.grad.abs().sum() > 0 and model.final.linear.weight.grad.abs().sum() > 0


def test_output_depends_on_sigma_bar_only_when_time_conditioned():
    x = torch.randint(0, V, (2, 8))
    cond = perturb_zero_init(tiny()).eval()
    assert (cond(x, torch.tensor([0.1, 0.1])) - cond(x, torch.tensor([3.0, 3.0]))).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="sigma_bar"):
        cond(x, None)
    free = perturb_zero_init(tiny(time_conditioned=False)).eval()
    out = free(x, None)
    assert out.abs().amax() > 1e-3
    assert torch.equal(out, free(x, torch.tensor([0.1, 5.0])))
    # its condition is learned: sigma_map is trained, through c = SiLU(sigma_map(0))
    free(x, None).sum().backward()
    assert free.sigma_map[2].bias.grad.abs().sum() > 0


def test_dropout_only_in_training():
    model = perturb_zero_init(DDiT(V, hidden=H, n_blocks=N_BLOCKS, n_heads=N_HEADS, cond_dim=COND, dropout=0.5))
    x, s = torch.randint(0, V, (2, 8)), torch.rand(2)
    model.train()
    assert not torch.equal(model(x, s), model(x, s))
    model.eval()
    assert torch.equal(model(x, s), model(x, s))
    model.train()
    for block in model.blocks:  # p = 1 drops both residual branches: the blocks become the identity
        block.dropout.p = 1.0
    torch.testing.assert_close(model(x, s), model.final(model.tok_embed[x], model.condition(s, 2, x.device)))


def test_bf16_autocast_dtypes():
    model = perturb_zero_init(tiny()).eval()
    seen = {}
    for name in ("blocks.0.norm1", "blocks.0.attn.qkv", "blocks.1.mlp.0", "final.norm", "final.linear"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    x, s = torch.randint(0, V, (2, 8)), torch.rand(2)
    ref = model(x, s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, s)
    assert out.shape == (2, 8, V) and out.dtype == torch.float32
    assert seen == {
        "blocks.0.norm1": torch.float32,
        "final.norm": torch.float32,
        "blocks.0.attn.qkv": torch.bfloat16,
        "blocks.1.mlp.0": torch.bfloat16,
        "final.linear": torch.bfloat16,
    }
    assert (out - ref).abs().amax() < 0.05 * ref.abs().amax()
    assert not torch.equal(out, ref)


def test_too_long_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="max_length"):
        DDiT(V, hidden=H, n_blocks=1, n_heads=N_HEADS, cond_dim=COND, max_length=8)(
            torch.zeros(1, 9, dtype=torch.long), torch.ones(1)
        )
    with pytest.raises(ValueError, match="n_heads"):
        DDiT(V, hidden=30, n_heads=4)


def non_embedding_formula(hidden, n_blocks, cond, mlp_ratio=4):
    block = 4 * hidden**2 + 2 * mlp_ratio * hidden**2 + (mlp_ratio + 1) * hidden + 2 * hidden + (cond + 1) * 6 * hidden
    return n_blocks * block + (256 + 1) * cond + (cond + 1) * cond + hidden + (cond + 1) * 2 * hidden


@pytest.mark.parametrize(
    "name, hidden, n_blocks, expected_millions",
    [("dit_tiny", 128, 4, 1.0), ("dit_small", 768, 12, 90.0), ("dit_medium", 1024, 24, 320.0)],
)
def test_config_sizes(name, hidden, n_blocks, expected_millions):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "net" / f"{name}.yaml")
    assert cfg._target_ == "mixlab.nets.dit.DDiT" and OmegaConf.is_missing(cfg, "vocab_size")
    cfg.vocab_size = 50258
    with torch.device("meta"):
        net = instantiate(cfg)
    assert (net.hidden, len(net.blocks)) == (hidden, n_blocks)
    n = net.num_params()
    assert n == non_embedding_formula(hidden, n_blocks, cfg.cond_dim)
    assert abs(n / 1e6 - expected_millions) < 0.05 * expected_millions, n
    assert net.num_params(non_embedding=False) == n + 2 * 50258 * hidden + 50258


# ---------------------------------------------------------------- reference weights


def reference_state_dict(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors under the reference SEDD's key names, for the tiny sizes above."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "vocab_embed.embedding": (V, H),
        "sigma_map.mlp.0.weight": (COND, 256),
        "sigma_map.mlp.0.bias": (COND,),
        "sigma_map.mlp.2.weight": (COND, COND),
        "sigma_map.mlp.2.bias": (COND,),
    }
    for i in range(N_BLOCKS):
        shapes |= {
            f"blocks.{i}.norm1.weight": (H,),
            f"blocks.{i}.attn_qkv.weight": (3 * H, H),
            f"blocks.{i}.attn_out.weight": (H, H),
            f"blocks.{i}.norm2.weight": (H,),
            f"blocks.{i}.mlp.0.weight": (4 * H, H),
            f"blocks.{i}.mlp.0.bias": (4 * H,),
            f"blocks.{i}.mlp.2.weight": (H, 4 * H),
            f"blocks.{i}.mlp.2.bias": (H,),
            f"blocks.{i}.adaLN_modulation.weight": (6 * H, COND),
            f"blocks.{i}.adaLN_modulation.bias": (6 * H,),
        }
    shapes |= {
        "output_layer.norm_final.weight": (H,),
        "output_layer.adaLN_modulation.weight": (2 * H, COND),
        "output_layer.adaLN_modulation.bias": (2 * H,),
        "output_layer.linear.weight": (V, H),
        "output_layer.linear.bias": (V,),
    }
    sd = {k: (1.0 if "norm" in k else 0.0) + 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}
    d = H // N_HEADS
    sd["rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    return sd


def reference_forward(sd, x, sigma):
    """The reference SEDD.forward (model/transformer.py) before its scale_by_sigma / scatter step, fp32."""

    def lin(h, p):
        return F.linear(h, sd[p + ".weight"], sd.get(p + ".bias"))

    def ln(h, w):
        return F.layer_norm(h, (H,)) * w

    freqs = torch.exp(-math.log(10000) * torch.arange(128).float() / 128)
    t = torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], dim=-1)
    c = F.silu(lin(F.silu(lin(t, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    h = sd["vocab_embed.embedding"][x]
    B, L, d = x.shape[0], x.shape[1], H // N_HEADS
    f = torch.arange(L).float()[:, None] * sd["rotary_emb.inv_freq"]
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()  # [L, d]
    for i in range(N_BLOCKS):
        p = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = lin(c, p + "adaLN_modulation")[:, None].chunk(6, dim=2)
        qkv = F.linear(ln(h, sd[p + "norm1.weight"]) * (1 + sc1) + sh1, sd[p + "attn_qkv.weight"])
        qkv = qkv.view(B, L, 3, N_HEADS, d)  # 'b s (three h d) -> b s three h d'
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = ((u * cos[:, None] + torch.cat([-u[..., d // 2 :], u[..., : d // 2]], -1) * sin[:, None]) for u in (q, k))
        a = naive_attention(q, k, v, causal=False).reshape(B, L, H)
        h = h + g1 * F.linear(a, sd[p + "attn_out.weight"])
        m = lin(F.gelu(lin(ln(h, sd[p + "norm2.weight"]) * (1 + sc2) + sh2, p + "mlp.0"), approximate="tanh"), p + "mlp.2")
        h = h + g2 * m
    shift, scale = lin(c, "output_layer.adaLN_modulation")[:, None].chunk(2, dim=2)
    return lin(ln(h, sd["output_layer.norm_final.weight"]) * (1 + scale) + shift, "output_layer.linear")


def test_reference_weights_land_where_the_reference_uses_them():
    sd = reference_state_dict()
    model = tiny().eval()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_reference_state_dict(model, sd)
    assert all(not torch.equal(v, fresh[k]) for k, v in model.state_dict().items())  # every parameter overwritten
    x, sigma = torch.randint(0, V, (2, 12)), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        ours, ref = model(x, sigma), reference_forward(sd, x, sigma)
    assert ref.abs().amax() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("blocks.1.attn_out.weight"), "missing (DDiT keys) blocks.1.attn.proj.weight"),
        (lambda sd: sd.__setitem__("blocks.0.mlp.0.bias", torch.zeros(3)), "shape mismatch blocks.0.mlp.0.bias (3,) vs (128,)"),
        (lambda sd: sd.__setitem__("blocks.2.norm1.weight", torch.ones(H)), "unexpected blocks.2.norm1.weight"),
        (lambda sd: sd.__setitem__("label_embed.weight", torch.ones(H)), "unexpected label_embed.weight"),
        (lambda sd: sd.__setitem__("rotary_emb.inv_freq", torch.ones(4)), "rotary_emb.inv_freq is not the base-1e4 rotary"),
    ],
)
def test_reference_weights_errors_are_one_line(edit, message):
    sd = reference_state_dict()
    edit(sd)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_reference_state_dict(model, sd)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing copied
