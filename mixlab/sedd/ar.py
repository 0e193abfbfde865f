"""The project's autoregressive baseline: the SEDD DiT made causal (no time input), trained with
next-token cross-entropy on the same blocks. Every token of a block is scored: the input is the
block shifted right behind EOS, so its test perplexity compares with SEDD's per-token bound.
It is also the judge of generative perplexity (`nll` of text sampled by SEDD)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric

from mixlab.core.errors import ArgumentError
from mixlab.core.system import MixlabSystem
from mixlab.core.validate import NonNegativeInt, PositiveInt, checked


class AutoRegressive(MixlabSystem):
    """Args:
    net: partial building the causal network from vocab_size (mixlab.nets.dit.DDiT, causal, time-free).
    vocab_size: token ids of the data (incl. EOS); bos_id: the id fed before the first token (EOS).
    """

    evaluator = "ar"

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable,
        vocab_size: PositiveInt,
        length: PositiveInt = 1024,
        bos_id: NonNegativeInt | None = None,
        scheduler: Callable | None = None,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__(seed=seed, compile=compile)
        if bos_id is not None and bos_id >= vocab_size:
            raise ArgumentError("bos_id", f"must be a token id < vocab_size = {vocab_size}, got {bos_id}")
        self.vocab_size, self.length = int(vocab_size), int(length)
        self.bos_id = self.vocab_size - 1 if bos_id is None else int(bos_id)  # EOS is the last id of both tokenizers
        self.net = net(vocab_size=self.vocab_size, time_conditioned=False, causal=True)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tokenizer = None
        self.nats, self.tokens = SumMetric(), SumMetric()

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and self.tokenizer is None:
            self.tokenizer = datamodule.tokenizer

    def token_nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x_i | x_<i) for every position, [B, L] (fp32)."""
        inputs = torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], dim=1)
        logits = self.net(inputs, None).float()
        return F.cross_entropy(logits.transpose(1, 2), x, reduction="none")

    @torch.no_grad()
    def nll(self, x: torch.Tensor, skip_first: bool = True) -> torch.Tensor:
        """Mean nats per token of each sequence, [B]; `skip_first` scores tokens 2..L as the
        reference's generative perplexity does."""
        nll = self.token_nll(x)
        return (nll[:, 1:] if skip_first else nll).mean(1)

    def training_step(self, batch: torch.Tensor, batch_idx: int):
        loss = self.token_nll(batch).mean()
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _score(self, batch: torch.Tensor) -> None:
        self.nats.update(self.token_nll(batch).double().sum())
        self.tokens.update(torch.tensor(float(batch.numel()), dtype=torch.float64, device=batch.device))

    def _log_split(self, split: str) -> None:
        tokens = self.tokens.compute()
        if tokens > 0:
            per_token = self.nats.compute() / tokens
            self.log(f"{split}/nats_per_token", per_token.float(), prog_bar=split == "val")
            self.log(f"{split}/ppl", torch.exp(per_token).float(), prog_bar=split == "val")
        self.nats.reset()
        self.tokens.reset()

    def validation_step(self, batch, batch_idx):
        self._score(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def test_step(self, batch, batch_idx):
        self._score(batch)

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    @torch.no_grad()
    def sample_tokens(
        self, n: int, length: int | None = None, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Ancestral sampling (no annealing), [n, length]."""
        length = length or self.length
        was_training = self.net.training
        self.net.eval()
        x = torch.full((n, 1), self.bos_id, dtype=torch.long, device=self.device)
        for _ in range(length):
            logits = self.net(x, None)[:, -1].double() / temperature
            probs = torch.softmax(logits, -1)
            x = torch.cat([x, torch.multinomial(probs, 1, generator=generator)], dim=1)
        self.net.train(was_training)
        return x[:, 1:].cpu()

    def sample(self, n: int, generator: torch.Generator | None = None, length: int | None = None, **_) -> list[str]:
        tokens = self.sample_tokens(n, length=length, generator=generator)
        return (
            [self.tokenizer.decode(row.tolist()) for row in tokens] if self.tokenizer else [str(row.tolist()) for row in tokens]
        )
