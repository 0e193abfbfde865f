"""Multi-task MoE classifier: CE + diversity_weight * diversity + balance_weight * balance
(seed README formulas, mixlab.moe.losses). The gate temperature is the net's buffer
(checkpointed; TemperatureAnnealing writes it through `self.temperature`). Every
`analysis_every_n_epochs` (and at the last epoch / test) rank 0 draws the expert analysis
(mean gate per expert per class and accuracy with only expert k, one-hot gate) and the
confusion matrix, writes them under `<run dir>/figures/` and logs them as the images
`figures/<split>/expert_analysis` and `figures/<split>/confusion_matrix` (wandb, TensorBoard).
A class with no sample in the split has no gate statistics: its keys are not logged and its
cells are blank in the figure."""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only

from mixlab.core.checkpoint import read_checkpoint, resolve_checkpoint
from mixlab.core.distributed import global_mean
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.validate import NonNegativeFloat, NonNegativeInt, PositiveInt, checked
from mixlab.moe.classifier import ImageClassifier
from mixlab.moe.init import init_moe_from_submodels
from mixlab.moe.losses import balance_loss, diversity_loss, gate_entropy
from mixlab.moe.net import MoEClassifier


class MoEClassifierSystem(ImageClassifier):
    @checked
    def __init__(
        self,
        net: MoEClassifier,
        optimizer: Callable,
        num_classes: PositiveInt,
        diversity_weight: NonNegativeFloat = 0.1,
        balance_weight: NonNegativeFloat = 0.5,
        init_from: list[str] | None = None,
        analysis_every_n_epochs: NonNegativeInt = 10,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__(net, optimizer, num_classes, seed=seed, compile=compile)
        self.diversity_weight, self.balance_weight = float(diversity_weight), float(balance_weight)
        self.init_from = None
        if init_from:  # a run dir stands for its validation-selected checkpoint (summary.json)
            if len(init_from) != net.num_experts:
                raise ArgumentError("init_from", f"got {len(init_from)} checkpoints for {net.num_experts} experts")
            self.init_from = [str(resolve_checkpoint(p, "init_from", prefer="best", error=ArgumentError)) for p in init_from]
            for path in self.init_from:  # readable now; the weights load in setup("fit")
                read_checkpoint(path, "init_from", mmap=True, error=ArgumentError)
        self.analysis_every_n_epochs = int(analysis_every_n_epochs)
        self._stats: dict[str, torch.Tensor] = {}
        self.last_analysis: Path | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # setup runs before Lightning restores a resumed checkpoint, which then overwrites these
        if stage == "fit" and self.init_from:
            try:
                init_moe_from_submodels(self.net, self.init_from)
            except ArgumentError as err:  # after construction: name the argument's key in the run config
                raise ConfigError(self.config_key(err.arg), err.problem) from None

    @property
    def temperature(self) -> torch.Tensor:
        return self.net.gate.temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        experts = self.net.num_experts
        (noise,) = self.step_draw(
            batch_idx, x.shape[0], lambda n: (torch.randn(n, experts, generator=self.noise_generator(), device=self.device),)
        )
        logits, gates = self.net(x, gate_noise=noise)  # gate noise drawn for the global batch, sliced by rank
        world, _ = self.world()
        ce = F.cross_entropy(logits, y)
        # the seed's diversity is a sum over the batch: scale the local sum so that DDP's
        # gradient averaging gives the global batch's sum (N devices x B/N == 1 device x B)
        div = diversity_loss(gates) * world
        bal = balance_loss(gates, usage=global_mean(gates))  # the global batch's usage under DDP
        loss = ce + self.diversity_weight * div + self.balance_weight * bal
        self.check_finite(loss)
        log = dict(on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log_dict(
            {"train/ce": ce, "train/diversity": div, "train/balance": bal, "train/gate_entropy": gate_entropy(gates)}, **log
        )
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, sync_dist=True)
        return {"loss": loss, "usage": gates.detach()}

    # ----- expert analysis ----------------------------------------------------------------
    def _accumulate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        experts, gates, gate_feats = self.net.expert_features(x)
        E, C = self.net.num_experts, self.num_classes
        onehot_y = F.one_hot(y, C).to(gates.dtype)  # [B,C]
        correct = torch.stack(
            [
                (self.net.classify(experts, F.one_hot(torch.full_like(y, k), E).to(gates.dtype), gate_feats).argmax(1) == y).to(
                    gates.dtype
                )
                for k in range(E)
            ]
        )  # [E,B]
        add = {"gate_sum": gates.T @ onehot_y, "count": onehot_y.sum(0), "expert_correct": correct @ onehot_y}
        for key, value in add.items():
            self._stats[key] = self._stats.get(key, 0) + value.detach().double()

    def _eval_step(self, batch, split: str):
        logits, y = super()._eval_step(batch, split)
        self._accumulate(batch[0], y)
        return logits, y

    def expert_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(contribution [E,C] = mean gate per class, expert-only accuracy [E,C] in %), reduced over
        ranks; NaN in the columns of classes with no sample."""
        stats = {
            k: self.trainer.strategy.reduce(v, reduce_op="sum") if self._trainer is not None else v
            for k, v in self._stats.items()
        }
        count = torch.where(stats["count"] > 0, stats["count"], torch.nan)
        return (stats["gate_sum"] / count).float().cpu(), (100 * stats["expert_correct"] / count).float().cpu()

    def _analyse(self, split: str, tag: str) -> None:
        if not self._stats:
            return
        contribution, expert_acc = self.expert_statistics()
        self._stats = {}
        present = ~contribution[0].isnan()  # classes with at least one sample in the split
        for k in range(contribution.shape[0]):
            for c, name in enumerate(self.class_names):
                if present[c]:
                    self.log(f"{split}/gate/expert_{k}/{name}", contribution[k, c], rank_zero_only=True)
        if present.any():
            self.log(f"{split}/gate_max_mean", contribution[:, present].max(0).values.mean(), rank_zero_only=True)
        self._plot(contribution, expert_acc, self.confusion.get(split), split, tag)

    @rank_zero_only
    def _plot(
        self, contribution: torch.Tensor, expert_acc: torch.Tensor, confusion: torch.Tensor | None, split: str, tag: str
    ) -> None:
        from mixlab.callbacks.plots import log_figure
        from mixlab.moe.figures import plot_confusion, plot_expert_analysis

        figures = Path(self.trainer.default_root_dir) / "figures"
        self.last_analysis = plot_expert_analysis(
            contribution.numpy(),
            expert_acc.numpy(),
            self.class_names,
            figures / f"expert_analysis_{tag}.png",
            title=f"{tag}, T = {float(self.temperature):.2f}",
        )
        log_figure(self.trainer, f"figures/{split}/expert_analysis", self.last_analysis)
        if confusion is not None:
            path = plot_confusion(confusion.numpy(), self.class_names, figures / f"confusion_matrix_{tag}.png")
            log_figure(self.trainer, f"figures/{split}/confusion_matrix", path)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("temperature_eval", float(self.temperature))
        epoch = self.current_epoch + 1
        last = self.trainer.max_epochs is not None and epoch >= self.trainer.max_epochs
        every = self.analysis_every_n_epochs
        if not self.trainer.sanity_checking and every > 0 and (epoch % every == 0 or last):
            self._analyse("val", f"epoch{epoch:03d}")
        self._stats = {}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._analyse("test", "test")
