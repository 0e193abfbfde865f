"""The `sedd_sample` evaluator, `make sample-text ckpt=PATH [sampler=analytic steps=1024 cache=true
prefix="..." suffix="..." infill=[[pos,"text"],...]]`: text from a SEDD checkpoint (EMA weights).

Writes <run>/eval/samples_<sampler>_T<steps>_n<n>_seed<seed>.txt and .json with the counted network
evaluations, wall time, tokens/s, the mean unigram entropy of the samples and, with
`judge_ckpt=` (the project's AR baseline, `experiment=ar_char|ar_bpe`), their generative perplexity:
the mean over samples of exp(mean NLL of tokens 2..L), the reference's aggregation (exp of the
mean NLL is reported too). `judge_gpt2=auto|null|PATH` adds GPT-2's (`gen_ppl_gpt2`, ...; a Hugging
Face GPT-2 folder, auto: <paths.weights_dir>/gpt2-large when present, mixlab.sedd.gpt2): GPT-2 BPE
samples are scored as sampled, character-level ones decoded and re-tokenised with GPT-2 BPE."""

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from mixlab.core.checkpoint import load_system
from mixlab.core.config import build, require
from mixlab.core.evaluate import out_dir_of
from mixlab.sedd.evaluate import load_sedd


def unigram_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each sequence's token frequencies, [B]: low for degenerate, repetitive text."""
    out = []
    for row in tokens:
        counts = torch.bincount(row).double()
        p = counts[counts > 0] / row.numel()
        out.append(-(p * p.log()).sum())
    return torch.stack(out)


def encode_fixed(tokenizer, cfg: DictConfig) -> dict:
    """prefix / suffix text and infill [[position, text], ...] as token ids (infill: the text's tokens
    from that position on)."""
    fixed = {}
    for key in ("prefix", "suffix"):
        if cfg.get(key):
            unknown = getattr(tokenizer, "unknown_characters", lambda text: [])(str(cfg[key]))
            require(
                not unknown,
                key,
                f"characters outside the checkpoint's {tokenizer.vocab_size - 1}-character vocabulary: "
                f"{' '.join(map(repr, unknown))}; leave them out or replace them",
            )
            fixed[key] = tokenizer.encode(str(cfg[key]))
    if cfg.get("infill"):
        pairs = []
        for item in cfg.infill:
            require(len(item) == 2, "infill", f"give [position, text] pairs, got {list(item)}")
            pos, text = int(item[0]), str(item[1])
            unknown = getattr(tokenizer, "unknown_characters", lambda text: [])(text)
            require(not unknown, "infill", f"characters outside the checkpoint's vocabulary: {' '.join(map(repr, unknown))}")
            pairs += [(pos + i, tok) for i, tok in enumerate(tokenizer.encode(text))]
        fixed["infill"] = pairs
    return fixed


def perplexity_report(nll: torch.Tensor, suffix: str = "") -> dict:
    """gen_ppl (mean of exp), gen_ppl_of_mean_nll, gen_nll and the standard errors over samples of
    gen_ppl and gen_nll, from per-sample mean NLLs [B]."""
    n = len(nll)
    se = (lambda v: float(v.std() / n**0.5)) if n > 1 else (lambda v: float("nan"))
    return {
        f"gen_ppl{suffix}": float(torch.exp(nll).mean()),
        f"gen_ppl_se{suffix}": se(torch.exp(nll)),
        f"gen_ppl_of_mean_nll{suffix}": float(torch.exp(nll.mean())),
        f"gen_nll{suffix}": float(nll.mean()),
        f"gen_nll_se{suffix}": se(nll),
    }


def batched_nll(judge, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [judge.nll(tokens[i : i + batch_size].to(judge.device)).double().cpu() for i in range(0, len(tokens), batch_size)]
    )


def generative_perplexity(judge, tokens: torch.Tensor, batch_size: int) -> dict:
    return perplexity_report(batched_nll(judge, tokens, batch_size))


def gpt2_ids(tokenizer, text: str) -> list[int]:
    """GPT-2 BPE ids of a decoded sample; the EOS text a character-level EOS decodes to becomes GPT-2's EOS id."""
    from mixlab.data.text_tokenizers import EOS_TEXT

    ids = []
    for i, part in enumerate(text.split(EOS_TEXT)):
        ids += ([tokenizer.eos_id] if i else []) + tokenizer.encode(part)
    return ids


def gpt2_perplexity(cfg: DictConfig, run_cfg: DictConfig, system, tokens: torch.Tensor, device: torch.device) -> dict:
    """GPT-2's generative perplexity (`_gpt2` keys) when `judge_gpt2` names or finds its weights, else {}."""
    from mixlab.data.text_tokenizers import GPT2Tokenizer
    from mixlab.sedd.gpt2 import judge_folder, load_gpt2

    folder = judge_folder(cfg.get("judge_gpt2"), cfg.paths.weights_dir)
    if folder is None:
        return {}
    judge = load_gpt2(folder, device)
    if run_cfg.data.get("tokenizer") == "gpt2":
        require(
            judge.vocab_size == system.vocab_size,
            "judge_gpt2",
            f"GPT-2 has {judge.vocab_size} tokens, the model {system.vocab_size}",
        )
        nll = batched_nll(judge, tokens, cfg.batch_size)
    else:
        tokenizer = GPT2Tokenizer.load(cfg.paths.data_dir)
        ids = [torch.tensor([gpt2_ids(tokenizer, text)]) for text in system.decode(tokens)]
        nll = torch.cat([judge.nll(row.to(judge.device)).double().cpu() for row in ids])
    return {"judge_gpt2": str(folder.resolve()), **perplexity_report(nll, "_gpt2")}


def run(cfg: DictConfig) -> dict:
    from mixlab.sedd.ar import AutoRegressive

    system, run_cfg, ckpt, device = load_sedd(cfg, ("n", "steps", "batch_size"))
    system.tokenizer = build(run_cfg.data, root=cfg.paths.data_dir).tokenizer
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    predictor = build(cfg.sampler)  # conf/sampler/<name>.yaml
    start = time.perf_counter()
    tokens, stats = system.sample_tokens(
        cfg.n,
        steps=cfg.steps,
        predictor=predictor,
        denoise=cfg.denoise,
        cache=cfg.cache,
        length=cfg.get("length"),
        generator=generator,
        batch_size=cfg.batch_size,
        **encode_fixed(system.tokenizer, cfg),
    )
    seconds = time.perf_counter() - start
    texts = system.decode(tokens)
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "global_step": ckpt.get("global_step"),
        "sampler": predictor.name,
        "steps": cfg.steps,
        "cache": cfg.cache,
        "n": cfg.n,
        "length": tokens.shape[1],
        "nfe": stats["nfe"],
        "seconds": round(seconds, 2),
        "tokens_per_second": tokens.numel() / seconds,
        "unigram_entropy": float(unigram_entropy(tokens).mean()),
        "device": str(device),
        "seed": cfg.seed,
    }
    if cfg.get("judge_ckpt"):
        judge, _, _ = load_system(cfg.judge_ckpt, device, key="judge_ckpt")
        require(
            isinstance(judge, AutoRegressive),
            "judge_ckpt",
            f"{cfg.judge_ckpt} is not an AR baseline checkpoint (experiment=ar_char|ar_bpe)",
        )
        require(
            judge.vocab_size == system.vocab_size,
            "judge_ckpt",
            f"the judge has {judge.vocab_size} tokens, the model {system.vocab_size}",
        )
        result.update(generative_perplexity(judge, tokens, cfg.batch_size))
    result.update(gpt2_perplexity(cfg, run_cfg, system, tokens, device))
    out = out_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"samples_{predictor.name}_T{cfg.steps}{'_cache' if cfg.cache else ''}_n{cfg.n}_seed{cfg.seed}"
    from mixlab.callbacks.sampling import save_texts

    result["samples"] = str(save_texts(texts, out / f"{tag}.txt"))
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(out / f"{tag}.json", result)
    print(texts[0][:600] + ("..." if len(texts[0]) > 600 else ""))
    gen = f", gen-PPL {result['gen_ppl']:.2f} +- {result['gen_ppl_se']:.2f}" if "gen_ppl" in result else ""
    gen += f", GPT-2 gen-PPL {result['gen_ppl_gpt2']:.2f} (NLL {result['gen_nll_gpt2']:.3f})" if "gen_ppl_gpt2" in result else ""
    print(
        f"[mixlab] {cfg.n} samples of {result['length']} tokens, {predictor.name} {cfg.steps} steps{' cached' if cfg.cache else ''}: "
        f"{result['nfe']:.1f} NFE, {seconds:.1f} s ({result['tokens_per_second']:.0f} tokens/s), unigram entropy "
        f"{result['unigram_entropy']:.3f}{gen}"
    )
    print(f"[mixlab] samples: {result['samples']}")
    return result
