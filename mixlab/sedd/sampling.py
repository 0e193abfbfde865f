"""SEDD samplers (Lou et al. 2024, Sec. 4; louaaron/Score-Entropy-Discrete-Diffusion `sampling.py`).

Grid t_k = linspace(1, eps, steps + 1), dt = (1 - eps) / steps, start from the graph's limit. Each
step: project the fixed tokens, then one predictor update; then (optionally) the Denoiser jumps from
sigma_bar(eps) to 0. `score_fn(x [B, L], sigma_bar [B]) -> log_score [B, L, dim]`.

`Predictor.probs` is each step's transition in float64 (the formulas of the paper). On the
absorbing graph the steps draw from it through `mixlab.sedd.absorbing_step` (masked positions only,
float32 scores with float64 sums and an exact inverse-CDF draw); on other graphs from the float64
probabilities by the Exp race argmax_y p_y / E_y, E ~ Exp(1) (valid for unnormalised p).
"""

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import PositiveInt, checked
from mixlab.sedd.absorbing_step import absorbing_update

ScoreFnT = Callable[[Tensor, Tensor], Tensor]


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """argmax_y p_y / E_y with E ~ Exp(1) in float64: a draw from p / sum(p), [..., V] -> [...]."""
    p = probs.to(torch.float64)
    e = torch.empty_like(p).exponential_(generator=generator).clamp_min_(torch.finfo(torch.float64).tiny)
    return (p / e).argmax(-1)


class Predictor(abc.ABC):
    """One reverse step from t to t - dt: `probs` gives the unnormalised transition probabilities.
    A predictor is chosen by config `_target_` (conf/sampler/<name>.yaml: `sampler=analytic` on
    `make sample-text`); `name` labels its output files."""

    name: str = ""

    stay: str = "one"  # at a masked position of the absorbing graph: "one" (w = 1) or "score" (w = s_MASK)

    @abc.abstractmethod
    def probs(self, score: ScoreFnT, graph, noise, x: Tensor, t: Tensor, dt: float) -> Tensor:
        """[B, L, dim] float64, >= 0, for x [B, L] at times t [B] (float64)."""

    @abc.abstractmethod
    def absorbing_factor(self, noise, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """(sigma_bar [B] the score is evaluated at, c [B]: a masked position moves to real token y
        with probability c s_y on the absorbing graph; see mixlab.sedd.absorbing_step)."""

    def update(
        self, score: ScoreFnT, graph, noise, x: Tensor, t: Tensor, dt: float, generator: torch.Generator | None = None
    ) -> Tensor:
        if graph.absorbing:
            sigma_bar, c = self.absorbing_factor(noise, t, dt)
            return absorbing_update(score(x, sigma_bar.float()), x, graph.mask_id, c, self.stay, generator)
        return sample_categorical(self.probs(score, graph, noise, x, t, dt), generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def named_predictor(name: str) -> Predictor:
    """The predictor of the config group file conf/sampler/<name>.yaml: what a predictor given by name
    means (`model.sampler.predictor=analytic`, checkpoints that store the name)."""
    from omegaconf import OmegaConf

    from mixlab.core.config import build

    folder = Path(__file__).resolve().parents[2] / "conf" / "sampler"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = "|".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ArgumentError("predictor", f"unknown predictor '{name}' (conf/sampler/: {known})")
    return build(OmegaConf.load(path), key="predictor")


def _ratios(score: ScoreFnT, x: Tensor, sigma_bar: Tensor) -> Tensor:
    """s = exp(l) in float64; the network sees sigma_bar in float32."""
    return score(x, sigma_bar.float()).to(torch.float64).exp()


class EulerPredictor(Predictor):
    """tau-leaping: p = onehot(x) + dt sigma(t) R, R the reverse rate s_y Q[x, y]; a negative "stay"
    probability (large dt sigma) is clamped at 0."""

    name = "euler"

    def absorbing_factor(self, noise, t, dt):
        sigma_bar, sigma = noise(t)
        return sigma_bar, dt * sigma

    def probs(self, score, graph, noise, x, t, dt):
        sigma_bar, sigma = noise(t)
        rev = graph.reverse_rate(x, _ratios(score, x, sigma_bar))
        p = F.one_hot(x, graph.dim).to(torch.float64) + (dt * sigma).reshape(-1, 1, 1) * rev
        return p.clamp_min(0)


def _tweedie(graph, s: Tensor, x: Tensor, delta_sigma: Tensor) -> Tensor:
    """[exp(-dsigma Q) s]_y * exp(dsigma Q)[x, y] (Thm 4.2), clamped at 0."""
    return (graph.staggered_score(s, delta_sigma) * graph.transp_transition(x, delta_sigma)).clamp_min(0)


class AnalyticPredictor(Predictor):
    """Tweedie tau-leaping: the exact reverse step from sigma_bar(t) to sigma_bar(t - dt) given the score."""

    name = "analytic"
    stay = "score"

    def absorbing_factor(self, noise, t, dt):
        sigma_bar = noise.total(t)
        return sigma_bar, torch.expm1(sigma_bar - noise.total(t - dt))

    def probs(self, score, graph, noise, x, t, dt):
        sigma_bar = noise.total(t)
        delta = sigma_bar - noise.total(t - dt)
        return _tweedie(graph, _ratios(score, x, sigma_bar), x, delta)


class Denoiser:
    """Final Tweedie step from sigma_bar(t) to 0; on the absorbing graph MASK is excluded so every
    position is filled."""

    def __init__(self, graph, noise):
        self.graph, self.noise = graph, noise

    def update(self, score: ScoreFnT, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sigma_bar = self.noise.total(t)
        if self.graph.absorbing:
            return absorbing_update(score(x, sigma_bar.float()), x, self.graph.mask_id, torch.expm1(sigma_bar), None, generator)
        return sample_categorical(self.probs(score, x, t), generator)

    def probs(self, score: ScoreFnT, x: Tensor, t: Tensor) -> Tensor:
        """[B, L, dim] float64 (absorbing: [B, L, dim - 1], MASK excluded)."""
        sigma_bar = self.noise.total(t)
        p = _tweedie(self.graph, _ratios(score, x, sigma_bar), x, sigma_bar)
        return p[..., : self.graph.mask_id] if self.graph.absorbing else p


class Fixed(NamedTuple):
    """Tokens held fixed while sampling (infill / prompts); `key` names the config entry they came from."""

    positions: Tensor  # [P] long
    tokens: Tensor  # [P] long
    key: str = "infill"


def check_fixed(fixed: Fixed | tuple, length: int, num_tokens: int) -> Fixed:
    """Positions in [0, length) without repeats; tokens real (0 <= id < num_tokens, so never MASK)."""
    fixed = fixed if isinstance(fixed, Fixed) else Fixed(*fixed)
    pos = torch.as_tensor(fixed.positions, dtype=torch.long).flatten()
    tok = torch.as_tensor(fixed.tokens, dtype=torch.long).flatten()
    key = fixed.key
    if pos.numel() != tok.numel():
        raise ArgumentError(key, f"{pos.numel()} positions but {tok.numel()} tokens")
    if pos.numel() and (pos.min() < 0 or pos.max() >= length):
        raise ArgumentError(
            key, f"positions must lie in [0, {length}) (the sequence length); got {pos.min().item()}..{pos.max().item()}"
        )
    if pos.unique().numel() != pos.numel():
        raise ArgumentError(key, "fixed positions overlap (a position is given twice)")
    if tok.numel() and (tok.min() < 0 or tok.max() >= num_tokens):
        got = f"{tok.min().item()}..{tok.max().item()}"
        raise ArgumentError(key, f"token ids must be real tokens in [0, {num_tokens}) (not MASK = {num_tokens}); got {got}")
    return Fixed(pos, tok, key)


def fixed_tokens(
    length: int,
    num_tokens: int,
    prefix: Sequence[int] | None = None,
    suffix: Sequence[int] | None = None,
    infill: dict[int, int] | Sequence[tuple[int, int]] | None = None,
) -> Fixed | None:
    """Combine a prefix (positions 0..), a suffix (the last positions) and (position, token) pairs into
    one Fixed; each part is checked under its own key, overlaps name the later part."""
    parts = []
    if prefix is not None and len(prefix):
        if len(prefix) > length:
            raise ArgumentError("prefix", f"{len(prefix)} tokens do not fit in length {length}")
        parts.append(check_fixed(Fixed(torch.arange(len(prefix)), torch.as_tensor(prefix), "prefix"), length, num_tokens))
    if suffix is not None and len(suffix):
        if len(suffix) > length:
            raise ArgumentError("suffix", f"{len(suffix)} tokens do not fit in length {length}")
        where = torch.arange(length - len(suffix), length)
        parts.append(check_fixed(Fixed(where, torch.as_tensor(suffix), "suffix"), length, num_tokens))
    if infill is not None and len(infill):
        pairs = list(infill.items()) if isinstance(infill, dict) else [tuple(p) for p in infill]
        pos, tok = zip(*pairs)
        parts.append(check_fixed(Fixed(torch.as_tensor(pos), torch.as_tensor(tok), "infill"), length, num_tokens))
    if not parts:
        return None
    for k in range(1, len(parts)):
        earlier = torch.cat([p.positions for p in parts[:k]])
        if torch.isin(parts[k].positions, earlier).any():
            raise ArgumentError(parts[k].key, "overlaps the positions fixed by " + "/".join(p.key for p in parts[:k]))
    key = "infill" if len(parts) > 1 else parts[0].key
    return Fixed(torch.cat([p.positions for p in parts]), torch.cat([p.tokens for p in parts]), key)


class _Scorer:
    """Calls the score and counts network evaluations per sequence. With `cache` the network output of a
    sequence is reused while its tokens are unchanged (needs a time-free score: `score_fn.network(x,
    sigma_bar)` ignoring sigma_bar, `score_fn.log_score(out, x, sigma_bar)`)."""

    def __init__(self, score_fn, cache: bool):
        if cache and (getattr(score_fn, "time_conditioned", True) or not hasattr(score_fn, "network")):
            raise ArgumentError(
                "cache",
                "reusing network outputs needs a time-free score (e.g. the RADD parameterisation); "
                "this score depends on the noise level",
            )
        self.score_fn, self.cache, self.evals = score_fn, cache, 0
        self.x_seen: Tensor | None = None
        self.out: Tensor | None = None

    def __call__(self, x: Tensor, sigma_bar: Tensor) -> Tensor:
        if not self.cache:
            self.evals += x.shape[0]
            return self.score_fn(x, sigma_bar)
        if self.out is None:
            self.out, self.x_seen = self.score_fn.network(x, sigma_bar).clone(), x.clone()
            self.evals += x.shape[0]
        else:
            changed = (x != self.x_seen).any(-1)
            if changed.any():
                self.out[changed] = self.score_fn.network(x[changed], sigma_bar[changed])
                self.x_seen[changed] = x[changed]
                self.evals += int(changed.sum())
        return self.score_fn.log_score(self.out, x, sigma_bar)


@torch.no_grad()
@checked
def sample(
    score_fn: Callable,
    graph: object,
    noise: Callable,
    batch: PositiveInt,
    length: PositiveInt,
    steps: PositiveInt,
    predictor: Predictor | None = None,
    denoise: bool = True,
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-5,
    generator: torch.Generator | None = None,
    device: object = "cpu",
    fixed: object = None,
    cache: bool = False,
) -> tuple[Tensor, dict]:
    """Draw [batch, length] token ids with `predictor` (default AnalyticPredictor()). Returns (tokens
    long, {"nfe": network evaluations per sequence}).

    `fixed` = (positions [P], tokens [P]) is written into x before every predictor step, before the
    denoiser and at the end. `cache=True` reuses the network output of unchanged sequences (time-free
    scores only); "nfe" then counts the evaluations actually made, averaged over the batch."""
    scorer = _Scorer(score_fn, cache)
    step = AnalyticPredictor() if predictor is None else predictor
    if fixed is not None:
        fixed = check_fixed(fixed, length, graph.num_tokens)
        pos, tok = fixed.positions.to(device), fixed.tokens.to(device)

    def project(x: Tensor) -> Tensor:
        if fixed is not None:
            x[:, pos] = tok
        return x

    x = graph.sample_limit((batch, length), generator=generator, device=device)
    times = torch.linspace(1, eps, steps + 1, dtype=torch.float64, device=device)
    dt = (1 - eps) / steps
    for k in range(steps):
        x = step.update(scorer, graph, noise, project(x), times[k].expand(batch), dt, generator)
    if denoise:
        x = Denoiser(graph, noise).update(scorer, project(x), times[-1].expand(batch), generator)
    return project(x), {"nfe": scorer.evals / batch}
