"""SEDD (Lou, Meng, Ermon 2024): a DiT trained with diffusion-weighted denoising score entropy.

Per optimizer step one t per sequence is drawn for the whole global batch (t ~ U[eps, 1], or
antithetic: evenly spaced with one random offset) together with the uniforms of the forward
transition, from the run's generator (`step_draw`), so N devices x A accumulation steps see the
noise one device sees. The loss of a sequence is sigma(t) * sum over positions of the score
entropy (nats): a one-sample Monte Carlo estimate of the diffusion term of the likelihood bound;
`train/loss` is that per token. Validation (EMA weights) gives `val/nats_per_token` and
`val/ppl_bound` from one low-discrepancy t per sequence plus the prior term, on a fixed subset.
"""

import math
from collections.abc import Callable
from typing import Annotated

import torch
from omegaconf import DictConfig
from pydantic import ConfigDict, Field
from torch import nn
from torchmetrics import CatMetric, SumMetric
from typing_extensions import TypedDict

from mixlab.core.config import require
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.system import MixlabSystem
from mixlab.core.validate import PositiveInt, checked
from mixlab.sedd.graphs import Graph
from mixlab.sedd.noise import Noise
from mixlab.sedd.param import Parameterisation, ScoreFn
from mixlab.sedd.sampling import EulerPredictor, Predictor, fixed_tokens, named_predictor, sample
from mixlab.sedd.score_entropy import weighted_score_entropy

GOLDEN = (math.sqrt(5) - 1) / 2  # low-discrepancy sequence frac(0.5 + p * GOLDEN): stratified t per position p


class SamplerOptions(TypedDict, total=False):
    """The defaults of `SEDD.sample()`: a predictor (a `_target_` node of conf/sampler/, or its file name
    there: `euler`), steps, a final denoising step."""

    __pydantic_config__ = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)  # type: ignore[misc]
    predictor: Predictor | str
    steps: PositiveInt
    denoise: bool


class SEDD(MixlabSystem):
    """Args:
        net: partial building the network from vocab_size (= graph.dim) and time_conditioned
            (mixlab.nets.dit.DDiT): (x [B, L], sigma_bar [B] | None) -> logits [B, L, dim].
        graph / noise / param: mixlab.sedd.graphs, .noise, .param (SEDDScore, RADDScore).
        vocab_size: the real tokens of the data (ids incl. EOS, no MASK).
        length: the longest sequence the model takes (the data's block length by default).
        sampling_eps: t ~ U[sampling_eps, 1] in training (1e-3, the reference).
        antithetic: spread a global batch's t evenly over [eps, 1] with one random offset.
        sampler: defaults of `sample()` (predictor, steps, denoise) for the training-time samples.
    Rules between arguments (param vs graph, vocab_size vs graph) raise ArgumentError naming the argument.
    """

    evaluator = "sedd"

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        graph: Graph,
        noise: Noise,
        param: Parameterisation,
        optimizer: Callable,
        vocab_size: PositiveInt,
        length: PositiveInt = 1024,
        scheduler: Callable | None = None,
        sampling_eps: Annotated[float, Field(gt=0, lt=1)] = 1e-3,
        antithetic: bool = False,
        sampler: SamplerOptions | None = None,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__(seed=seed, compile=compile)
        param.check(graph)
        if graph.num_tokens != vocab_size:
            raise ArgumentError("vocab_size", f"the graph has {graph.num_tokens} tokens, the data {vocab_size}")
        self.graph, self.noise, self.param = graph, noise, param
        self.net = net(vocab_size=graph.dim, time_conditioned=param.time_conditioned)
        self.score = ScoreFn(self.net, param, graph)
        self.vocab_size, self.length = int(vocab_size), int(length)
        self.sampling_eps, self.antithetic = float(sampling_eps), bool(antithetic)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sampler_defaults = {"predictor": EulerPredictor(), "steps": 128, "denoise": True, **(sampler or {})}
        if isinstance(self.sampler_defaults["predictor"], str):
            try:
                self.sampler_defaults["predictor"] = named_predictor(self.sampler_defaults["predictor"])
            except ArgumentError as err:
                raise ArgumentError("sampler.predictor", err.problem) from None
        self.tokenizer = None  # set from the datamodule (training) or by the evaluator: decodes samples
        self.val_nats, self.val_tokens = SumMetric(), SumMetric()
        self.test_terms = nn.ModuleDict({k: CatMetric() for k in ("diffusion", "truncation", "prior", "total", "tokens")})
        self.eval_options: dict | None = None  # the ELBO evaluator's (timesteps, t_batch, ...)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """The model against the data (the constructor checks its own arguments)."""
        model, data = cfg.model, cfg.get("data")
        if model.get("vocab_size") is None:  # the data set's meta.json is missing: name the command that builds it
            from mixlab.core.config import build

            require(data is not None, cls.config_key("vocab_size"), "give it, or a text data set (data=text_...)")
            build(data).prepare_data()  # raises DataNotFoundError naming `make data-text`
        if data is not None and "length" in data:
            require(
                data.length <= model.length,
                "data.length",
                f"{data.length} tokens per sequence exceed model.length = {model.length}",
            )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and self.tokenizer is None:
            self.tokenizer = datamodule.tokenizer

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net]

    # ----- training ---------------------------------------------------------------------
    def _draw(self, length: int, device) -> Callable[[int], tuple[torch.Tensor, ...]]:
        """draw(n) -> (t [n], uniforms [n, L], uniforms [n, L]) for n sequences of the global batch."""
        generator = self.noise_generator()

        def draw(n: int):
            if self.antithetic:
                u = (torch.rand(1, generator=generator, device=device) + torch.arange(n, device=device) / n) % 1
            else:
                u = torch.rand(n, generator=generator, device=device)
            t = self.sampling_eps + (1 - self.sampling_eps) * u
            return (
                t,
                torch.rand((n, length), generator=generator, device=device),
                torch.rand((n, length), generator=generator, device=device),
            )

        return draw

    def sequence_loss(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        draws: tuple[torch.Tensor, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """sigma(t) * sum over positions of the denoising score entropy, [B] nats (fp32)."""
        sigma_bar, sigma = self.noise(t)
        x_t = self.graph.sample_transition(x0, sigma_bar, generator=generator, draws=draws)
        log_score = self.score(x_t, sigma_bar)
        return weighted_score_entropy(self.graph, log_score.float(), sigma_bar.float(), sigma.float(), x_t, x0)

    def training_step(self, batch: torch.Tensor, batch_idx: int):
        x0 = batch
        t, u, v = self.step_draw(batch_idx, x0.shape[0], self._draw(x0.shape[1], x0.device))
        loss = self.sequence_loss(x0, t, (u, v)).mean()
        self.check_finite(loss)
        self.log("train/loss", loss / x0.shape[1], prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_gen = torch.Generator(device=self.device).manual_seed(12345)
        self._val_seen = 0  # sequences this rank has scored this epoch

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """One stratified t per sequence (by its position in the split, so any world size sees the
        same t for the same sequence) + the prior term: an unbiased estimate of the bound."""
        x0 = batch
        b, length = x0.shape
        world_size, rank = self.world()  # the split is sharded in file order: rank r holds r, r + W, ...
        position = rank + world_size * (self._val_seen + torch.arange(b, device=x0.device))
        self._val_seen += b
        t = self.sampling_eps + (1 - self.sampling_eps) * torch.frac(0.5 + position * GOLDEN)
        nats = (1 - self.sampling_eps) * self.sequence_loss(x0, t, generator=self._val_gen)
        nats = nats + self.graph.prior_kl(x0, self.noise.total(torch.ones(b, device=x0.device)))
        self.val_nats.update(nats.sum())
        self.val_tokens.update(torch.tensor(float(b * length), device=x0.device))

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute()
        if tokens > 0:
            per_token = self.val_nats.compute() / tokens
            self.log("val/nats_per_token", per_token, prog_bar=True)
            self.log("val/ppl_bound", torch.exp(per_token), prog_bar=True)
        self.val_nats.reset()
        self.val_tokens.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ----- the likelihood bound (the sedd evaluator runs trainer.test) ---------------------
    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        from mixlab.sedd.elbo import elbo

        opts = self.eval_options or {"timesteps": 1000, "t_batch": 16, "seed": 0}
        generator = torch.Generator(device=self.device).manual_seed(int(opts["seed"]) + 7919 * batch_idx + self.world()[1])
        terms = elbo(
            self.score,
            self.graph,
            self.noise,
            batch,
            timesteps=int(opts["timesteps"]),
            generator=generator,
            eps=self.sampling_eps,
            t_batch=int(opts["t_batch"]),
        )
        for key, value in terms.items():
            self.test_terms[key].update(value)
        self.test_terms["tokens"].update(
            torch.full((batch.shape[0],), float(batch.shape[1]), dtype=torch.float64, device=batch.device)
        )

    def elbo_terms(self) -> dict[str, torch.Tensor]:
        """Per-sequence ELBO terms gathered over all ranks (after trainer.test)."""
        terms = {key: metric.compute().double().cpu() for key, metric in self.test_terms.items()}
        for metric in self.test_terms.values():
            metric.reset()
        return terms

    # ----- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample_tokens(
        self,
        n: int,
        steps: int | None = None,
        predictor: Predictor | None = None,
        denoise: bool | None = None,
        cache: bool = False,
        prefix=None,
        suffix=None,
        infill=None,
        length: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
    ) -> tuple[torch.Tensor, dict]:
        """[n, length] token ids and {"nfe": network evaluations per sequence}; `prefix` / `suffix`
        (token lists) and `infill` ((position, token) pairs) are held fixed."""
        opts = {
            **self.sampler_defaults,
            **{k: v for k, v in dict(steps=steps, predictor=predictor, denoise=denoise).items() if v is not None},
        }
        length = length or self.length
        if length > self.length:
            raise ArgumentError("length", f"{length} tokens exceed the model's length = {self.length}")
        if cache and self.param.time_conditioned:
            raise ArgumentError("cache", "the cache reuses outputs of a time-free network: it needs model/param=radd")
        fixed = fixed_tokens(length, self.graph.num_tokens, prefix, suffix, infill)
        was_training = self.net.training
        self.net.eval()
        chunks, nfe = [], 0.0
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            x, stats = sample(
                self.score,
                self.graph,
                self.noise,
                m,
                length,
                opts["steps"],
                opts["predictor"],
                denoise=bool(opts["denoise"]),
                generator=generator,
                device=self.device,
                fixed=fixed,
                cache=cache,
            )
            chunks.append(x.cpu())
            nfe += stats["nfe"] * m
        self.net.train(was_training)
        return torch.cat(chunks), {"nfe": nfe / n}

    def decode(self, tokens: torch.Tensor) -> list[str]:
        if self.tokenizer is None:
            raise ConfigError(
                "tokenizer", "no tokenizer attached: sample through the sedd evaluators, or train with a text data set"
            )
        return [self.tokenizer.decode(row.tolist()) for row in tokens]

    def sample(self, n: int, generator: torch.Generator | None = None, **options) -> list[str]:
        """Text samples (the SampleGrid callback writes them to samples/step_<7-digit step>.txt)."""
        tokens, _ = self.sample_tokens(n, generator=generator, **options)
        return self.decode(tokens)
