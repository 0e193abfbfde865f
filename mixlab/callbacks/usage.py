"""ExpertUsage: per-expert win rates for any mixture model, reduced over DDP ranks.

Generic over "who won": a system returns `{"loss": ..., "usage": w}` from `training_step`
with w [B, K] non-negative assignment weights per sample (one-hot WTA winners for MCL, the
gate's softmax for the MoE classifier). Each epoch the callback sums them over all ranks,
logs `usage/expert_k` (share of the epoch's total weight), `usage/dead` (experts below
`dead_threshold`) and `usage/k_eff` (exp of the usage entropy), keeps the history in the
checkpoint and (rank 0) redraws `<run dir>/figures/expert_usage_training.png`, logged as the image
`figures/expert_usage` (wandb, TensorBoard).
"""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from mixlab.core.validate import NonNegativeInt, UnitFloat, checked
from mixlab.metrics.expert_stats import dead_experts, effective_experts, usage_shares


class ExpertUsage(L.Callback):
    @checked
    def __init__(self, dead_threshold: UnitFloat = 0.01, plot_every_n_epochs: NonNegativeInt = 1, key: str = "usage"):
        self.dead_threshold, self.plot_every_n_epochs, self.key = float(dead_threshold), plot_every_n_epochs, key
        self.history: list[list[float]] = []
        self._sums: torch.Tensor | None = None
        self.last_plot: Path | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or outputs.get(self.key) is None:
            return
        weights = outputs[self.key].detach().to(torch.float64).sum(dim=0)
        self._sums = weights if self._sums is None else self._sums + weights

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sums is None:
            return
        sums = trainer.strategy.reduce(self._sums.to(pl_module.device), reduce_op="sum")
        shares = usage_shares(sums.cpu())
        self.history.append([float(s) for s in shares])
        for k, share in enumerate(shares):
            pl_module.log(f"usage/expert_{k}", float(share), on_epoch=True, rank_zero_only=True)
        pl_module.log("usage/dead", float(dead_experts(shares, self.dead_threshold)), on_epoch=True, rank_zero_only=True)
        pl_module.log("usage/k_eff", effective_experts(shares), on_epoch=True, rank_zero_only=True)
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if self.plot_every_n_epochs > 0 and ((trainer.current_epoch + 1) % self.plot_every_n_epochs == 0 or last):
            self._plot(trainer)

    @rank_zero_only
    def _plot(self, trainer: L.Trainer) -> None:
        from mixlab.callbacks.plots import log_figure, plot_usage_history

        self.last_plot = plot_usage_history(
            self.history,
            Path(trainer.default_root_dir) / "figures" / "expert_usage_training.png",
            dead_threshold=self.dead_threshold,
        )
        log_figure(trainer, "figures/expert_usage", self.last_plot)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [list(row) for row in state_dict.get("history", [])]
