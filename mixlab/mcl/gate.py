"""Post-hoc gating network for a trained MCL model (the reference's `gating.py`).

The experts are loaded from their checkpoint (EMA weights) and frozen in eval mode. Each step
draws fresh (x0, sigma log-uniform over the sampling range, noise); the target is the expert
with the lowest DSM loss at (x_sigma, sigma) and the gate learns it with cross-entropy.
Unlike the reference (25,600 triples drawn once, no held-out set) every step sees new noise,
and val/acc is measured on the test split with fixed noise.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mixlab.core.checkpoint import load_system, resolve_checkpoint
from mixlab.core.config import require
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.system import MixlabSystem
from mixlab.core.tensors import per_sample
from mixlab.core.validate import checked
from mixlab.score.schedule import LogUniformSigma


class MCLGate(MixlabSystem):
    """Args:
    gate: partial taking num_experts -> nn.Module (x_scaled, c_noise) -> logits [B, K].
    experts_ckpt: checkpoint of a trained MCLDiffusion run: a file, its run dir or its task dir
        (the validation-selected checkpoint); the gate's checkpoints record the file it resolved to.
    optimizer: partial taking params.
    """

    evaluator = "mcl"  # a gate checkpoint is evaluated as its experts with the gate attached

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        given = (
            "experts_ckpt" in cfg.model.keys() and not OmegaConf.is_missing(cfg.model, "experts_ckpt") and cfg.model.experts_ckpt
        )
        require(
            bool(given), "model.experts_ckpt", "give the trained MCL checkpoint the gate routes between: model.experts_ckpt=PATH"
        )

    @checked
    def __init__(self, gate: Callable[..., nn.Module], experts_ckpt: str, optimizer: Callable, seed: int = 0):
        super().__init__(seed=seed)
        from mixlab.mcl.system import MCLDiffusion

        try:
            self.experts_ckpt = str(resolve_checkpoint(experts_ckpt, "experts_ckpt"))
            experts, _, _ = load_system(self.experts_ckpt, "cpu", key="experts_ckpt")
        except ConfigError as err:  # named relative to this constructor: the config adds its path
            raise ArgumentError("experts_ckpt", str(err).removeprefix(f"{err.key}: ")) from None
        if not isinstance(experts, MCLDiffusion):
            raise ArgumentError("experts_ckpt", f"{experts_ckpt} is a {type(experts).__name__} checkpoint, not an MCL one")
        self.experts = experts.requires_grad_(False)
        self.gate = gate(num_experts=experts.num_experts)
        self.sigma_sampler = LogUniformSigma(experts.sigma_min, experts.sigma_max)
        self.optimizer_factory = optimizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        config = checkpoint.get("mixlab_config")
        if isinstance(config, dict) and isinstance(config.get("model"), dict):  # a run or task dir: the file it stood for
            checkpoint["mixlab_config"] = {**config, "model": {**config["model"], "experts_ckpt": self.experts_ckpt}}

    def train(self, mode: bool = True):
        super().train(mode)
        self.experts.eval()  # frozen: dropout off, as the reference labels with eval-mode EMA experts
        return self

    def _step(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        world_size, _ = self.world()
        n = x0.shape[0] * world_size
        sigma = self.rank_slice(self.sigma_sampler(n, generator=generator, device=x0.device))
        noise = self.rank_slice(torch.randn((n, *x0.shape[1:]), generator=generator, device=x0.device))
        with torch.no_grad():
            target = self.experts.loss_matrix(x0, sigma, noise).argmin(dim=1)  # [B]
        x = x0 + per_sample(sigma, x0) * noise
        logits = self.gate(self.experts.scaled_input(x, sigma), sigma.log() / 4)
        return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch[0], self.noise_generator())
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_gen = torch.Generator(device=self.device).manual_seed(12345)

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch[0], self._val_gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=batch[0].shape[0])
        self.log("val/acc", acc, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=batch[0].shape[0])

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.gate.parameters())

    def attach(self):
        """The MCL system with this gate attached (for `gated` / `committed_gate` routing)."""
        self.experts.gate = self.gate.eval()
        return self.experts
