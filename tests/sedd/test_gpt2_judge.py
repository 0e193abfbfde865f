"""The GPT-2 judge (mixlab.sedd.gpt2) on tiny random weights in the Hugging Face layout: its logits
against a naive forward over the HF tensors (loops over heads, an explicit causal mask, Conv1D as
x @ W + b), causality, nll against a hand cross-entropy, the loader's key handling and errors, and
`make sample-text judge_gpt2=...` on the character-level smoke run."""

import json
import math
from pathlib import Path

import pytest
import torch
from support import compose_eval

from mixlab.core.errors import ConfigError
from mixlab.data.text_tokenizers import GPT2Tokenizer
from mixlab.sedd.generate import gpt2_ids
from mixlab.sedd.generate import run as sample_text
from mixlab.sedd.gpt2 import GPT2, judge_folder, load_gpt2

EPS = 1e-5


def hf_checkpoint(vocab_size=11, n_embd=8, n_layer=2, n_head=2, n_positions=16, prefix="transformer.", seed=0):
    """(config.json dict, state dict) of a random GPT-2 as Hugging Face saves it, mask buffers and the tied head included."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)

    config = {
        "vocab_size": vocab_size,
        "n_positions": n_positions,
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "layer_norm_epsilon": EPS,
        "activation_function": "gelu_new",
        "n_inner": None,
    }
    d, p = n_embd, prefix
    state = {f"{p}wte.weight": rand(vocab_size, d), f"{p}wpe.weight": rand(n_positions, d)}
    for i in range(n_layer):
        h = f"{p}h.{i}."
        for ln in ("ln_1", "ln_2"):
            state[h + ln + ".weight"], state[h + ln + ".bias"] = rand(d, scale=0.2, mean=1.0), rand(d, scale=0.1)
        for name, (n_in, n_out) in {
            "attn.c_attn": (d, 3 * d),
            "attn.c_proj": (d, d),
            "mlp.c_fc": (d, 4 * d),
            "mlp.c_proj": (4 * d, d),
        }.items():
            state[h + name + ".weight"], state[h + name + ".bias"] = (
                rand(n_in, n_out),
                rand(n_out, scale=0.1),
            )  # Conv1D: [in, out]
        state[h + "attn.bias"] = torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions)
        state[h + "attn.masked_bias"] = torch.tensor(-1e4)
    state[f"{p}ln_f.weight"], state[f"{p}ln_f.bias"] = rand(d, scale=0.2, mean=1.0), rand(d, scale=0.1)
    state["lm_head.weight"] = state[f"{p}wte.weight"]
    return config, state


def write_folder(folder, config, state):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def naive_logits(config, state, tokens: list[int]) -> torch.Tensor:
    """GPT-2's logits [L, vocab] in float64, position by position and head by head over the HF tensors."""
    s = {k.removeprefix("transformer."): v.double() for k, v in state.items()}
    H, D, L = config["n_head"], config["n_embd"], len(tokens)
    dh = D // H

    def layer_norm(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + EPS) * s[name + ".weight"] + s[name + ".bias"]

    def conv1d(x, name):
        return x @ s[name + ".weight"] + s[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = s["wte.weight"][tokens] + s["wpe.weight"][:L]
    for i in range(config["n_layer"]):
        qkv = conv1d(layer_norm(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn")
        q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
        heads = []
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
            mask = torch.tensor([[j > t for j in range(L)] for t in range(L)])
            weights = torch.softmax(scores.masked_fill(mask, -math.inf), dim=-1)
            heads.append(weights @ v[:, cols])
        x = x + conv1d(torch.cat(heads, dim=1), f"h.{i}.attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(layer_norm(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    return layer_norm(x, "ln_f") @ s["wte.weight"].T


@pytest.fixture
def tiny(tmp_path):
    config, state = hf_checkpoint()
    return config, state, write_folder(tmp_path / "gpt2-tiny", config, state)


def test_logits_equal_the_naive_forward(tiny):
    config, state, folder = tiny
    model = load_gpt2(folder).double()
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [10, 0, 7, 7, 7, 2, 8, 1, 8, 2]])
    logits = model(tokens)
    for b in range(len(tokens)):
        torch.testing.assert_close(logits[b], naive_logits(config, state, tokens[b].tolist()), atol=1e-10, rtol=0)
    assert isinstance(model, GPT2) and not model.training and model.device == torch.device("cpu")
    assert load_gpt2(folder).wte.weight.dtype == torch.float32


def test_changing_a_token_leaves_earlier_logits_unchanged(tiny):
    model = load_gpt2(tiny[2]).double()
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    for j in range(1, 8):
        changed = tokens.clone()
        changed[0, j] = (changed[0, j] + 1) % 11
        a, b = model(tokens), model(changed)
        torch.testing.assert_close(a[:, :j], b[:, :j], atol=1e-12, rtol=0)
        assert not torch.allclose(a[:, j:], b[:, j:])


def test_nll_is_the_mean_cross_entropy_of_tokens_2_to_L(tiny):
    model = load_gpt2(tiny[2])
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    logits = model(tokens).detach().double()
    expected = torch.tensor(
        [sum(torch.logsumexp(logits[b, i - 1], 0) - logits[b, i - 1, tokens[b, i]] for i in range(1, 6)) / 5 for b in range(2)],
        dtype=torch.float64,
    )
    nll = model.nll(tokens)
    assert nll.dtype == torch.float32 and nll.shape == (2,)
    torch.testing.assert_close(nll.double(), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="^judge_gpt2: .*context of 16"):
        model.nll(torch.zeros(1, 17, dtype=torch.long))


def test_keys_with_or_without_the_transformer_prefix_load_the_same(tmp_path):
    config, with_prefix = hf_checkpoint(prefix="transformer.")
    _, without = hf_checkpoint(prefix="")
    a = load_gpt2(write_folder(tmp_path / "a", config, with_prefix))
    b = load_gpt2(write_folder(tmp_path / "b", config, without))
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(a(tokens), b(tokens), atol=0, rtol=0)
    assert torch.equal(a.h[0].attn.c_attn.weight, with_prefix["transformer.h.0.attn.c_attn.weight"].T)  # Conv1D transposed


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), "missing ['h.1.mlp.c_fc.bias']"),
        (lambda s: s.update({"transformer.h.0.attn.extra.weight": torch.zeros(1)}), "unexpected ['h.0.attn.extra.weight']"),
        (lambda s: s.update({"transformer.wpe.weight": torch.zeros(8, 8)}), "shapes differ"),
    ],
)
def test_a_state_dict_that_does_not_match_names_judge_gpt2(tmp_path, change, words):
    config, state = hf_checkpoint()
    change(state)
    with pytest.raises(ConfigError) as err:
        load_gpt2(write_folder(tmp_path / "bad", config, state))
    assert err.value.key == "judge_gpt2" and words in str(err.value)


def test_missing_weights_name_judge_gpt2(tmp_path):
    with pytest.raises(ConfigError, match="^judge_gpt2: .* is not a folder"):
        load_gpt2(tmp_path / "absent")
    folder = tmp_path / "safetensors-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_checkpoint()[0]))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="^judge_gpt2: .*needs pytorch_model.bin.*safetensors is not installed"):
        load_gpt2(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="^judge_gpt2: .*no config.json"):
        load_gpt2(folder)


def test_auto_finds_gpt2_large_in_the_weights_dir(tmp_path):
    assert judge_folder("auto", tmp_path) is None and judge_folder(None, tmp_path) is None
    (tmp_path / "gpt2-large").mkdir()
    assert judge_folder("auto", tmp_path) == tmp_path / "gpt2-large"
    assert judge_folder("/some/gpt2", tmp_path) == Path("/some/gpt2") and judge_folder("null", tmp_path) is None


def test_char_samples_are_retokenised_and_judged_by_gpt2(smoke_runs, data_dir, tmp_path):
    config, state = hf_checkpoint(vocab_size=50257, n_embd=16, n_layer=2, n_head=2, n_positions=1024)
    folder = write_folder(tmp_path / "gpt2-tiny", config, state)
    ckpt = smoke_runs.run("sedd_absorb_char")["last_ckpt"]
    common = [f"ckpt={ckpt}", "evaluator=sedd_sample", "n=2", "steps=4"]
    result = sample_text(compose_eval(*common, f"judge_gpt2={folder}", data_dir=data_dir, out_dir=tmp_path / "a"))
    assert (
        math.isfinite(result["gen_ppl_gpt2"])
        and result["gen_ppl_gpt2"] > 1
        and result["gen_ppl_gpt2"] >= result["gen_ppl_of_mean_nll_gpt2"]
    )
    assert result["gen_nll_gpt2"] == pytest.approx(math.log(result["gen_ppl_of_mean_nll_gpt2"]))
    written = json.loads(next((tmp_path / "a").glob("samples_*.json")).read_text())
    assert written["judge_gpt2"] == str(folder.resolve()) and written["gen_ppl_gpt2"] == result["gen_ppl_gpt2"]
    assert "gen_ppl" not in result  # no judge_ckpt
    plain = sample_text(compose_eval(*common, "judge_gpt2=auto", data_dir=data_dir, out_dir=tmp_path / "b"))
    assert not any(key.endswith("gpt2") for key in plain)
    bpe = GPT2Tokenizer.load(data_dir)
    assert gpt2_ids(bpe, "the end<|endoftext|>A new") == bpe.encode("the end") + [50256] + bpe.encode("A new")
