"""Load the reference SEDD weights (HF `louaaron/sedd-small`, `louaaron/sedd-medium`: state dicts of
the reference `SEDD` module) into a `DDiT` built with the same sizes.

    sd = safetensors.torch.load_file(".../model.safetensors")   # or torch.load(".../pytorch_model.bin")
    net = DDiT(vocab_size=50258, hidden=768, n_blocks=12, n_heads=12, cond_dim=128)   # sedd-small
    load_reference_state_dict(net, sd)

The released checkpoints are absorbing-graph models: the `scale_by_sigma` offset and the zeroed
current-token entry of the reference forward are applied by the score parameterisation
(`mixlab.sedd.param.SEDDScore(scale_by_sigma=True)`), not by the net.
"""

import re

import torch

from mixlab.nets.dit import DDiT, rotary_inv_freq

# (reference key pattern, DDiT key template), in the reference module's order.
KEY_MAP = [
    (r"vocab_embed\.embedding", r"tok_embed"),
    (r"sigma_map\.mlp\.(0|2)\.(weight|bias)", r"sigma_map.\1.\2"),
    (r"blocks\.(\d+)\.norm1\.weight", r"blocks.\1.norm1.weight"),
    (r"blocks\.(\d+)\.attn_qkv\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn_out\.weight", r"blocks.\1.attn.proj.weight"),
    (r"blocks\.(\d+)\.norm2\.weight", r"blocks.\1.norm2.weight"),
    (r"blocks\.(\d+)\.mlp\.(0|2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"blocks\.(\d+)\.adaLN_modulation\.(weight|bias)", r"blocks.\1.adaLN_modulation.\2"),
    (r"output_layer\.norm_final\.weight", r"final.norm.weight"),
    (r"output_layer\.adaLN_modulation\.(weight|bias)", r"final.adaLN_modulation.\1"),
    (r"output_layer\.linear\.(weight|bias)", r"final.linear.\1"),
]
# The reference's rotary frequency buffer: DDiT recomputes it, so it is only checked, not loaded.
ROTARY_KEY = "rotary_emb.inv_freq"


def ddit_key(reference_key: str) -> str | None:
    """The DDiT key of a reference key, or None if no DDiT parameter corresponds to it."""
    for pattern, template in KEY_MAP:
        if re.fullmatch(pattern, reference_key):
            return re.sub(pattern, template, reference_key)
    return None


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_reference_state_dict(model: DDiT, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a reference `SEDD` state dict into `model` (a DDiT of the same sizes), in place.

    Raises one ValueError listing the unexpected reference keys, the DDiT parameters nothing maps to
    and the shape mismatches (reference key, its shape, the DDiT shape); nothing is copied unless
    everything fits.
    """
    own = model.state_dict()
    head_dim = model.hidden // model.n_heads
    converted, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        if key == ROTARY_KEY:
            expected = rotary_inv_freq(head_dim)
            if value.shape != expected.shape or not torch.allclose(value.float().cpu(), expected, rtol=1e-5):
                mismatched.append(f"{key} is not the base-1e4 rotary of head dim {head_dim}")
            continue
        new = ddit_key(key)
        if new is None or new not in own:
            unexpected.append(key)
        elif value.shape != own[new].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[new].shape)}")
        else:
            converted[new] = value
    mapped = {ddit_key(k) for k in state_dict}
    missing = [k for k in own if k not in mapped]
    problems = [
        f"{label} {_few(keys)}"
        for label, keys in (("unexpected", unexpected), ("missing (DDiT keys)", missing), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise ValueError("reference state dict does not fit this DDiT: " + "; ".join(problems))
    model.load_state_dict(converted, strict=True)
